"""On-disk compile cache: object code keyed by everything that affects it.

Key = sha256 of the model's kernel-IR fingerprint (every kernel's loops and expressions,
shapes, arena offsets, threading: the code, not the weights), a digest of the LLVM backend's
own sources (so an edited renderer never loads stale objects), the CPU name and features, the
optimisation level, and the cnncompiler, llvmlite and LLVM versions. Keying by the kernel IR
rather than by the rendered LLVM text lets a hit skip rendering, the slow part of a compile.
An entry stores a magic line, the sha256 of its payload and the payload; a short,
corrupted or foreign entry is deleted and rebuilt, never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

MAGIC = b"cnncompiler-object-v1\n"


def default_dir() -> Path:
    env = os.environ.get("CNNC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnncompiler"


@functools.cache
def sources_digest(directory: Path) -> str:
    """sha256 of the Python sources in ``directory``: a backend's code, so an edited
    renderer never loads stale cached code."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of this package's sources: what turns kernel IR into object code."""
    return sources_digest(Path(__file__).parent)


def cache_key(module_text: str, *parts: str) -> str:
    h = hashlib.sha256()
    for part in (module_text, *parts):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class CompileCache:
    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()
        self.hits = self.misses = self.rejected = 0

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.obj"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        head = len(MAGIC) + 64
        digest, payload = data[len(MAGIC):head], data[head:]
        if not data.startswith(MAGIC) or hashlib.sha256(payload).hexdigest().encode() != digest:
            self.rejected += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return payload

    def put(self, key: str, payload: bytes) -> None:
        """Write atomically (temp file + rename), so a crash never leaves half an entry."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload)
            os.replace(tmp, self._path(key))
        except OSError:
            pass  # an unwritable cache only costs the next compile
