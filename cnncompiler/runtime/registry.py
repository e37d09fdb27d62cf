"""Backend registry: built-in backends by import path, plus the ``cnncompiler.backends``
entry-point group for third-party ones. The core never imports a backend module directly."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from cnncompiler.errors import BackendUnavailableError, UnsupportedError
from cnncompiler.runtime.backend import Backend

# name -> "module:attribute"; later backends (llvm, opencl) add their line here.
BUILTIN_BACKENDS: dict[str, str] = {
    "reference": "cnncompiler.backends.reference:ReferenceBackend",
    "llvm": "cnncompiler.backends.llvm:LLVMBackend",
    "opencl": "cnncompiler.backends.opencl:OpenCLBackend",
}
ENTRY_POINT_GROUP = "cnncompiler.backends"


@dataclass(frozen=True)
class BackendStatus:
    name: str
    ok: bool
    reason: str  # what it runs on when ok, why not otherwise

    def __str__(self) -> str:
        return f"{self.name:<12} {'yes' if self.ok else 'no ':<4} {self.reason}"


def _locations() -> dict[str, str]:
    found = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _load(name: str, location: str) -> type[Backend]:
    module, _, attr = location.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise BackendUnavailableError(f"backend {name!r} cannot be imported: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendUnavailableError(f"backend {name!r} at {location} is not a Backend class")
    return cls


def get_backend(name: str) -> Backend:
    """An instance of backend ``name``; raises if unknown or unavailable here (saying why)."""
    locations = _locations()
    if name not in locations:
        raise UnsupportedError(f"unknown backend {name!r}; known: {', '.join(sorted(locations))}")
    backend = _load(name, locations[name])()
    problem = backend.unavailable_reason()
    if problem:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {problem}")
    return backend


def available() -> dict[str, BackendStatus]:
    """Every known backend with whether it works on this machine, and why not."""
    out = {}
    for name, location in sorted(_locations().items()):
        try:
            backend = _load(name, location)()
            problem = backend.unavailable_reason()
            out[name] = BackendStatus(name, problem is None, problem or backend.describe())
        except BackendUnavailableError as e:
            out[name] = BackendStatus(name, False, str(e))
    return out
