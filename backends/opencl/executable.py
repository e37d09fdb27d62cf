"""A compiled model on the OpenCL backend: one program holding every kernel of the optimised
graph, an arena buffer laid out by the memory plan (each activation a sub-buffer of it),
weights uploaded once, and an in-order queue. A call copies the inputs in, enqueues every
kernel and copies the outputs out: host<->device traffic only at the model boundary.
Shapes are specialised per batch size (compiled on first use), as on the LLVM backend.
State (``compile(..., state=...)``) stays in the arena on the device between calls, updated
there by the kernels (no host round trip); only ``get_state``/``set_state`` transfer it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cnncompiler.backends.llvm.cache import sources_digest
from cnncompiler.backends.opencl import prebuild
from cnncompiler.backends.opencl.platform import DeviceInfo, open_device
from cnncompiler.backends.opencl.render import (
    MAX_DIMS,
    RenderedKernel,
    program_source,
    render_kernel,
)
from cnncompiler.errors import CnnCompilerError, UnsupportedError
from cnncompiler.ir.graph import Graph
from cnncompiler.kernel.gpu_tiled import WorkGroupLimits
from cnncompiler.kernel.program import lower_graph
from cnncompiler.runtime.backend import PerShapeExecutable
from cnncompiler.runtime.profile import Profile, kernel_row

#: build options every program gets: OpenCL C 1.2 and warnings as errors, so what PoCL
#: accepts is what a strict GPU compiler accepts too
BUILD_OPTIONS = ("-cl-std=CL1.2", "-Werror")


class DeviceContext:
    """One device's context and profiling-enabled in-order queue, shared by the batch sizes
    of a compiled model."""

    def __init__(self, info: DeviceInfo, schedule: str):
        self.info = info
        self.cl, self.device = open_device(info)
        cl = self.cl
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context,
                                     properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.schedule = schedule
        # sub-buffer origins must be multiples of the device's base address alignment
        self.alignment = max(64, self.device.mem_base_addr_align // 8)
        # what a work-group of the gpu schedule's tiled kernels may use here
        self.limits = WorkGroupLimits(
            max_items=min(256, self.device.max_work_group_size,
                          self.device.max_work_item_sizes[0]),
            local_bytes=min(32768, self.device.local_mem_size))

    @property
    def cpu(self) -> bool:
        return self.schedule == "cpu"


class CompiledProgram:
    """One static-shape graph on one device."""

    def __init__(self, graph: Graph, device: DeviceContext, cache=None,
                 state: Mapping[str, str] | None = None):
        cl = device.cl
        self.graph, self.device = graph, device
        self.state = dict(state or {})
        program = lower_graph(graph, device.alignment, device.schedule, state=self.state,
                              limits=device.limits)
        self.plan = program.plan
        self.state_copies = program.state_copies   # state updated by a copy, not in place
        # a CPU device wants a few heavy work-items per core; a GPU one per row or element
        # (calls of one code share a kernel: see lower_graph)
        by_name = {k.name: render_kernel(k, 1 if device.cpu else MAX_DIMS,
                                         int_indices=not device.cpu)
                   for k in program.kernels}
        rendered = [by_name[c.kernel.name] for c in program.calls]
        if any(k.uses_fp64 for k in rendered) and not device.info.fp64:
            raise UnsupportedError(f"graph {graph.name!r} needs float64 kernels; OpenCL device "
                                   f"{device.info.name!r} has no cl_khr_fp64")
        # one program per model: from PoCL's cache ResNet-50's builds in 0.15 s, against
        # 1.8 s for one program per kernel (built cold, both take about as long)
        self.source = program_source(list(by_name.values()))
        # what each call's first launch builds (a kernel's later calls: nothing)
        first_call: dict[str, int] = {}
        for i, c in enumerate(program.calls):
            first_call.setdefault(c.kernel.name, i)
        self._sizes = [len(k.source) if first_call[k.name] == i else 0
                       for i, k in enumerate(rendered)]
        ctx = device.context
        flags = cl.mem_flags
        self.arena = cl.Buffer(ctx, flags.READ_WRITE,
                               max(self.plan.arena_bytes, 1) + device.alignment)
        self.weights = [cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=w)
                        if w.nbytes else cl.Buffer(ctx, flags.READ_ONLY, 4)
                        for w in program.weights]
        scratch = max([k.scratch_bytes * k.work_items for k in rendered] + [0])
        self.scratch = cl.Buffer(ctx, flags.READ_WRITE, scratch) if scratch else None
        self._views: dict[tuple[int, int], object] = {}
        self.launches = [(None, kernel, call) for call, kernel in zip(program.calls, rendered)]
        updates = set(self.state.values())
        self.inputs = [self._view(self.plan.offsets[v.name], _nbytes(v)) for v in graph.inputs
                       if v.name not in self.state]
        self.outputs = [(self._view(self.plan.offsets[v.name], _nbytes(v)), v)
                        for v in graph.outputs if v.name not in updates]
        self._state = {v.name: (self._view(self.plan.offsets[v.name], _nbytes(v)), v)
                       for v in graph.inputs if v.name in self.state}
        # Build every program and launch each kernel once on a zeroed arena. Drivers finish
        # compiling a kernel at its first launch (PoCL generates its work-group function
        # then: most of a cold compile); doing it here keeps that inside compile(), where it
        # is timed and expected, rather than in the user's first call. Zeros are safe inputs
        # for every kernel (indices read from data are then 0; no kernel divides by an
        # integer it reads). A helper process takes part of a big cold build (prebuild).
        cl.enqueue_fill_buffer(device.queue, self.arena, np.zeros(1, np.uint8), 0,
                               self.arena.size)
        theirs = self._helper_share()
        helper = prebuild.start_helper(device.info.platform_index, device.info.device_index,
                                       BUILD_OPTIONS, [self._job(i) for i in theirs]) \
            if theirs else None
        mine = [i for i in range(len(rendered)) if i not in set(theirs)]
        self.program = _build(device, self.source, cache)
        self._prepare(mine)
        prebuild.wait(helper)
        self._prepare(theirs)
        device.queue.finish()

    def _prepare(self, indices: Sequence[int]) -> None:
        """Bind the buffers of kernels ``indices`` and launch each once."""
        cl = self.device.cl
        for i in indices:
            _, kernel, call = self.launches[i]
            args = [self._view(b.offset, buf.nbytes) if b.in_arena
                    else self.weights[b.slot - 1]
                    for b, buf in zip(call.bindings, call.kernel.buffers)]
            if kernel.scratch_bytes:
                args.append(self.scratch)
            handle = cl.Kernel(self.program, kernel.name)
            handle.set_args(*args)
            if kernel.local_size is not None:
                fits = handle.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE,
                                                  self.device.device)
                if math.prod(kernel.local_size) > fits:
                    raise UnsupportedError(
                        f"kernel {kernel.name!r} of node '{call.node.name}' "
                        f"({call.node.op}) needs work-groups of {kernel.local_size} "
                        f"work-items; device {self.device.info.name!r} runs it in groups of "
                        f"at most {fits}")
            self.launches[i] = (handle, kernel, call)
            self._launch(handle, kernel)

    def _helper_share(self) -> list[int]:
        """Kernels whose first launch a helper process should do (about half the code), or
        none: only for big programs on a platform whose own cache then serves them to us."""
        if (self.device.info.platform not in OWN_CACHE_PLATFORMS
                or sum(self._sizes) < prebuild.PARALLEL_MIN_CHARS):
            return []
        order = sorted(range(len(self._sizes)), key=lambda i: -self._sizes[i])
        share, sizes = [], [0, 0]
        for i in order:   # greedy halves by source size; the helper takes the second
            side = 0 if sizes[0] <= sizes[1] else 1
            sizes[side] += self._sizes[i]
            if side:
                share.append(i)
        return sorted(share)

    def _job(self, i: int) -> prebuild.Job:
        _, kernel, call = self.launches[i]
        sizes = [buf.nbytes for buf in call.kernel.buffers]
        if kernel.scratch_bytes:
            sizes.append(kernel.scratch_bytes * kernel.work_items)
        return prebuild.Job(self.source, kernel.name, tuple(sizes), kernel.global_size,
                            self._local_size(kernel))

    def _view(self, offset: int, nbytes: int):
        """The sub-buffer of ``nbytes`` at ``offset`` in the arena (made once, shared)."""
        key = (offset, max(nbytes, 1))
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self.arena.get_sub_region(*key)
        return view

    def _local_size(self, kernel: RenderedKernel) -> tuple[int, ...] | None:
        """The work-group a tiled kernel was written for; else one work-item per
        work-group on a CPU device (each is a heavy unit of the schedule's parallel loop;
        the driver spreads work-groups over its cores), and the driver's choice on a GPU."""
        if kernel.local_size is not None:
            return kernel.local_size
        return (1,) * len(kernel.global_size) if self.device.cpu else None

    def _launch(self, handle, kernel: RenderedKernel):
        return self.device.cl.enqueue_nd_range_kernel(
            self.device.queue, handle, kernel.global_size, self._local_size(kernel))

    def _feed(self, inputs: Sequence[np.ndarray]) -> None:
        cl, queue = self.device.cl, self.device.queue
        for buffer, x in zip(self.inputs, inputs):
            if x.nbytes:
                cl.enqueue_copy(queue, buffer, np.ascontiguousarray(x), is_blocking=False)

    def read_state(self, name: str) -> np.ndarray:
        buffer, v = self._state[name]
        out = np.empty(v.type.shape, v.type.dtype.numpy)
        if out.nbytes:
            self.device.cl.enqueue_copy(self.device.queue, out, buffer, is_blocking=True)
        return out

    def write_state(self, name: str, value: np.ndarray) -> None:
        buffer, v = self._state[name]
        if value.nbytes:
            self.device.cl.enqueue_copy(self.device.queue, buffer, np.ascontiguousarray(value),
                                        is_blocking=True)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        cl, queue = self.device.cl, self.device.queue
        self._feed(inputs)
        for handle, kernel, _ in self.launches:
            self._launch(handle, kernel)
        results = []
        for buffer, v in self.outputs:
            out = np.empty(v.type.shape, v.type.dtype.numpy)
            if out.nbytes:
                cl.enqueue_copy(queue, out, buffer, is_blocking=False)
            results.append(out)
        queue.finish()
        return results

    def profile(self, inputs: Sequence[np.ndarray], repeats: int = 5) -> Profile:
        """Every kernel's device time from its profiling event (best of ``repeats``)."""
        from cnncompiler.ops.registry import node_cost

        self._feed(inputs)
        best = [math.inf] * len(self.launches)
        for _ in range(repeats):
            events = [self._launch(handle, kernel) for handle, kernel, _ in self.launches]
            self.device.queue.finish()
            for i, event in enumerate(events):
                best[i] = min(best[i], (event.profile.end - event.profile.start) * 1e-9)
        rows = [kernel_row(call.node, call.output, t, node_cost(call.node, batch=1).flops)
                for (_, _, call), t in zip(self.launches, best)]
        return Profile(rows, *_peak(self.device))


def _peak(device: DeviceContext) -> tuple[float | None, str]:
    """A CPU device's FMA peak (its cores x the measured one-thread peak); unknown for
    other devices, whose clock and FMA units OpenCL does not report reliably."""
    if device.info.kind != "cpu":
        return None, "device"
    try:
        from cnncompiler.backends.llvm.peak import peak_gflops
    except ImportError:
        return None, "device"
    units = device.device.max_compute_units
    return peak_gflops(threads=units), f"{units} OpenCL compute units"


def _nbytes(v) -> int:
    return v.type.numel() * v.type.dtype.numpy.itemsize


#: platforms with a persistent kernel cache of their own, keyed by source, options and
#: device: PoCL's (``POCL_CACHE_DIR``) also keeps the code it generates at a kernel's first
#: launch, and asking it for program binaries costs a second full code generation (ResNet-18
#: took 41 s to build with our cache and 7 s without), so ours stays out of its way
OWN_CACHE_PLATFORMS = ("Portable Computing Language",)


def _build(device: DeviceContext, source: str, cache):
    """The program built for the device: from our binary cache when an entry matches the
    source, device, driver and options, else compiled (and stored)."""
    cl = device.cl
    info = device.info
    if info.platform in OWN_CACHE_PLATFORMS:
        cache = None
    options = list(BUILD_OPTIONS)
    key = hashlib.sha256("\0".join([source, info.platform, info.platform_version, info.name,
                                    info.driver, " ".join(options),
                                    sources_digest(Path(__file__).parent),
                                    cl.VERSION_TEXT]).encode()).hexdigest()
    if cache is not None:
        binary = cache.get(key)
        if binary is not None:
            try:
                return cl.Program(device.context, [device.device], [binary]).build(options)
            except cl.Error:
                pass   # a binary the driver no longer accepts: compile from source
    try:
        program = cl.Program(device.context, source).build(options)
    except cl.Error as e:
        raise CnnCompilerError(f"the OpenCL compiler of {info.name!r} rejected the generated "
                               f"program: {e}") from e
    if cache is not None:
        binaries = program.get_info(cl.program_info.BINARIES)
        if binaries and binaries[0]:
            cache.put(key, bytes(binaries[0]))
    return program


class OpenCLExecutable(PerShapeExecutable):
    native_state = True   # in the device arena (see the module docstring)

    def __init__(self, graph: Graph, device: DeviceContext, cache=None):
        self.device, self.cache = device, cache
        super().__init__(graph)

    def build(self, graph: Graph) -> CompiledProgram:
        return CompiledProgram(graph, self.device, self.cache, state=self.state)
