import pathlib
import sys

# tests import their small helpers module by name
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import os  # noqa: E402
import tempfile  # noqa: E402

# compiled objects go to a per-run cache, not the user's ~/.cache
os.environ.setdefault("CNNC_CACHE_DIR", tempfile.mkdtemp(prefix="cnnc-test-cache-"))
