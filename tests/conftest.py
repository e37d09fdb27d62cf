import pathlib
import sys

# tests import their small helpers module by name
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import os  # noqa: E402
import tempfile  # noqa: E402

# compiled objects go to a per-run cache, not the user's ~/.cache
os.environ.setdefault("CNNC_CACHE_DIR", tempfile.mkdtemp(prefix="cnnc-test-cache-"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def threads_even_for_tiny_graphs(monkeypatch):
    """Test graphs are small: let threads=2 really use two threads (the backend otherwise
    runs graphs under 20 MFLOP per thread on one; test_llvm_backend tests that rule)."""
    try:
        from cnncompiler.backends.llvm import executable
    except ImportError:   # no llvmlite: nothing to relax
        return
    monkeypatch.setattr(executable, "MIN_FLOPS_PER_THREAD", 0)
