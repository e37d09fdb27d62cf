"""The OpenCL backend: the kernel IR the LLVM backend compiles, rendered as OpenCL C and
run through pyopencl on any OpenCL device (GPUs, or PoCL on a CPU).

Pieces: ``platform`` (finding and choosing a device, PoCL's cache directory, why none is
available), ``render`` (kernel IR -> OpenCL C 1.2), ``executable`` (program build and
binary cache, arena sub-buffers, weights uploaded once, the launch queue, profiling),
``prebuild`` (a helper process sharing a cold compile's first launches).
Schedules per device type: ``cpu`` (PoCL and other CPU devices: the LLVM backend's NCHW8c
register-blocked convs and Winograd with ``float8`` vectors, one NDRange dimension, a few
heavy work-items per core) and ``gpu`` (NCHW, nested parallel loops as up to three NDRange
dimensions, work-group sizes left to the driver). Options: ``device`` (``"platform:device"``;
default ``PYOPENCL_CTX`` or the best device), ``schedule`` (``"auto"``, ``"cpu"``,
``"gpu"``), ``cache`` (default True), ``cache_dir``.
"""

from __future__ import annotations

from typing import Any

from cnncompiler.errors import BackendUnavailableError, UnsupportedError
from cnncompiler.ir.graph import Graph, Node
from cnncompiler.runtime.backend import Backend

SCHEDULES = ("auto", "cpu", "gpu")


class OpenCLBackend(Backend):
    name = "opencl"
    has_compile_cache = True   # program binaries under $CNNC_CACHE_DIR, plus PoCL's own

    def unavailable_reason(self) -> str | None:
        from cnncompiler.backends.opencl.platform import list_devices

        try:
            list_devices()
        except BackendUnavailableError as e:
            return str(e)
        return None

    def describe(self) -> str:
        from cnncompiler.backends.opencl.platform import choose_device, list_devices

        try:
            best = choose_device()
        except (BackendUnavailableError, UnsupportedError) as e:
            return str(e)
        others = len(list_devices()) - 1
        more = f" (+{others} more; see backends.opencl.platform.list_devices())" if others else ""
        return f"OpenCL on {best}{more}"

    def _resolve(self, options: dict[str, Any]):
        from cnncompiler.backends.opencl.platform import choose_device

        schedule = options.get("schedule", "auto")
        if schedule not in SCHEDULES:
            raise UnsupportedError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        info = choose_device(options.get("device"))
        if schedule == "auto":
            schedule = "cpu" if info.kind == "cpu" else "gpu"
        return info, schedule

    def passes(self, **options: Any) -> list:
        _, schedule = self._resolve(options)
        if schedule != "cpu":
            return []
        from cnncompiler.backends.llvm.schedule import choose_layout
        from cnncompiler.passes.layout import layout_pass

        return [layout_pass(choose_layout)]

    def supports(self, node: Node) -> str | None:
        from cnncompiler.kernel.lower import unsupported_reason

        return unsupported_reason(node)

    def compile(self, graph: Graph, **options: Any):
        from cnncompiler.backends.llvm.cache import CompileCache
        from cnncompiler.backends.opencl.executable import DeviceContext, OpenCLExecutable

        info, schedule = self._resolve(options)
        unknown = set(options) - {"device", "schedule", "cache", "cache_dir"}
        if unknown:
            raise UnsupportedError(f"unknown opencl-backend option(s): {sorted(unknown)}")
        cache = (CompileCache(options.get("cache_dir"))
                 if options.get("cache", True) else None)
        return OpenCLExecutable(graph, DeviceContext(info, schedule), cache)


__all__ = ["OpenCLBackend"]
