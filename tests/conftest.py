import pathlib
import sys

# tests import their small helpers module by name
sys.path.insert(0, str(pathlib.Path(__file__).parent))
