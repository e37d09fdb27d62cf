"""Back ends: turn a Graph into an executable. Found through ``cnncompiler.runtime.registry``."""

from cnncompiler.runtime.registry import available, get_backend

__all__ = ["available", "get_backend"]
