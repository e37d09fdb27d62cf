"""Cold compiles on two cores: a helper process does half of the kernels' first launches.

An OpenCL driver compiles on the calling thread, and PoCL generates a kernel's machine code
only at its first launch, one kernel at a time; a cold ResNet-50 took 46 s that way. Drivers
with a persistent kernel cache (PoCL's ``POCL_CACHE_DIR``) let another process do part of
that work: a fresh interpreter (``python -P -m`` this module, which never re-runs the user's
script) builds the program too and launches its share of the kernels once on zeroed buffers
of the right sizes, the way the model's warm-up will, while this process does the rest. The
model's own warm-up launches of that share then hit the cache. Any failure of the helper (no
process support, a sandbox, a crash) only costs the time it saved.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import astuple, dataclass

#: total OpenCL C (characters) above which a cold build is shared with a helper process:
#: starting one costs about a second
PARALLEL_MIN_CHARS = 600_000


@dataclass(frozen=True)
class Job:
    """One kernel to build and launch once."""

    source: str
    name: str
    buffer_bytes: tuple[int, ...]    # each parameter's size (scratch last, if any)
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None


def start_helper(platform_index: int, device_index: int, options: Sequence[str],
                 jobs: Sequence[Job]) -> subprocess.Popen | None:
    """A helper process working through ``jobs``; None where one cannot be started."""
    try:
        helper = subprocess.Popen([sys.executable, "-P", "-m", __name__],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        # plain tuples: the helper runs this file as __main__ and need not import the package
        helper.stdin.write(pickle.dumps((platform_index, device_index, list(options),
                                         [astuple(job) for job in jobs])))
        helper.stdin.close()
    except (OSError, ValueError):
        return None
    return helper


def wait(helper: subprocess.Popen | None, timeout: float = 600) -> None:
    if helper is None:
        return
    try:
        helper.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        helper.kill()


def run_jobs(platform_index: int, device_index: int, options: list[str],
             jobs: list[tuple]) -> None:
    """Build and launch each job on its own context of the device (the helper's side)."""
    import numpy as np
    import pyopencl as cl

    device = cl.get_platforms()[platform_index].get_devices()[device_index]
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    programs: dict[str, object] = {}
    for job in map(lambda fields: Job(*fields), jobs):
        program = programs.get(job.source)
        if program is None:
            program = programs[job.source] = cl.Program(context, job.source).build(options)
        kernel = cl.Kernel(program, job.name)
        buffers = []
        for nbytes in job.buffer_bytes:
            buf = cl.Buffer(context, cl.mem_flags.READ_WRITE, max(nbytes, 1))
            cl.enqueue_fill_buffer(queue, buf, np.zeros(1, np.uint8), 0, max(nbytes, 1))
            buffers.append(buf)
        kernel.set_args(*buffers)
        cl.enqueue_nd_range_kernel(queue, kernel, job.global_size, job.local_size)
        queue.finish()


if __name__ == "__main__":   # the helper process
    run_jobs(*pickle.loads(sys.stdin.buffer.read()))
