"""Benchmarks against peers: performance is measured, not asserted.

For every model x batch x threads, each backend (cnncompiler backends such as ``llvm`` and
``reference``, and peers such as ``onnxruntime``) runs in its own fresh worker process, so one
backend's memory and thread pools do not pollute another's peak RSS. The workers of one cell
are alive together and the parent interleaves them: every repetition round times each backend
once (alternating the order), so drifts of a noisy machine hit all backends alike.

Interleaving alone is unfair with more than one thread: a thread pool keeps spinning for a
while after its run ends (onnxruntime's intra-op spin, torch's OpenMP workers, our
ThreadTeam's short poll), so a run timed right after another contender's would share the
cores with that contender's idle pool and pay for it (the training bench measured LeNet-5
steps at 10.9 ms that way, 3.2 ms alone). So with threads > 1 every timed run, of every
contender alike, is preceded by a pause (``Config.settle_s``, long past any pool's spin) and,
for runs shorter than ``PRIME_BELOW_S``, by an untimed run of the same contender that wakes
its own threads again; the timed run then meets only its own pool, as in steady use.

Per backend the harness records the cold compile time (a fresh compile in a fresh process; the
peer's session creation for a peer), the cached compile time where the backend has a disk
cache, the median and p90 latency of repeated runs after warm-up (bounded by a time budget),
the peak RSS of the worker, the ratio of its median to onnxruntime's median and GFLOP/s from the
graph's summary FLOPs. Every backend's output is checked against onnxruntime's: a row whose
relative error is not below the tolerance is flagged ``MISMATCH`` rather than reported as a
speed.

Use it through ``cnnc bench`` or :func:`run`; ``python -m cnncompiler.bench --cell SPEC`` is
the worker the parent starts (it talks JSON lines over stdin/stdout).

A backend with a disk cache of compiled artefacts says so with a class attribute
``has_compile_cache = True`` and keeps its cache under ``$CNNC_CACHE_DIR``; the worker points
that at a fresh empty folder, times a cold compile, then a second (cached) compile.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from importlib.util import find_spec
from typing import Any

import numpy as np

from cnncompiler.errors import UnsupportedError

BASELINE = "onnxruntime"
TOLERANCE = 1e-3
PRIME_BELOW_S = 0.05  # see Config.settle_s
NOISY_CORES = 0.25  # other processes using more than this many cores make timings noisy


# ----------------------------------------------------------------------------------- peers
class Peer:
    """Another framework to compare against: runs an ONNX file in a worker process."""

    name = "?"

    def unavailable_reason(self) -> str | None:
        return None

    def load(self, onnx_path: str, threads: int) -> tuple[Callable[[dict], Any], bool]:
        """A function feeds -> outputs (a dict by name or a list), and whether ``threads``
        was applied."""
        raise NotImplementedError


class OnnxRuntimePeer(Peer):
    name = "onnxruntime"

    def unavailable_reason(self) -> str | None:
        if find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def load(self, onnx_path: str, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(onnx_path, sess_options=opts,
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return (lambda feeds: dict(zip(names, sess.run(None, feeds)))), True


class TorchPeer(Peer):
    """PyTorch eager (CPU), with the ONNX file converted by onnx2torch."""

    name = "torch"

    def unavailable_reason(self) -> str | None:
        missing = [m for m in ("torch", "onnx2torch") if find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install torch onnx2torch)"
        return None

    def load(self, onnx_path: str, threads: int):  # pragma: no cover - torch is optional
        import onnx2torch
        import torch

        torch.set_num_threads(threads)
        module = onnx2torch.convert(onnx_path).eval()

        def run(feeds: dict) -> list:
            with torch.inference_mode():
                out = module(*(torch.from_numpy(a) for a in feeds.values()))
            outs = out if isinstance(out, (tuple, list)) else [out]
            return [o.numpy() for o in outs]

        return run, True


PEERS: dict[str, Peer] = {p.name: p for p in (OnnxRuntimePeer(), TorchPeer())}


def known_backends() -> list[str]:
    """Every name ``--backends`` accepts: cnncompiler's backends and the peers."""
    from cnncompiler.runtime.registry import _locations

    return sorted(set(_locations()) | set(PEERS))


def resolve_backends(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The backends that can run here (onnxruntime first, added if missing: it is the
    baseline) and the skipped ones with why. Raises UnsupportedError for an unknown name."""
    from cnncompiler.runtime.registry import available

    status = available()
    unknown = [n for n in names if n not in status and n not in PEERS]
    if unknown:
        raise UnsupportedError(f"unknown backend(s) {unknown}; known: "
                               f"{', '.join(known_backends())}")
    wanted = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    runnable, skipped = [], {}
    for name in wanted:
        why = PEERS[name].unavailable_reason() if name in PEERS else (
            None if status[name].ok else status[name].reason)
        if why:
            skipped[name] = why
        else:
            runnable.append(name)
    return runnable, skipped


def optional_peers() -> dict[str, str]:
    """Peers other than onnxruntime that are not installed here, with why."""
    return {name: why for name, p in PEERS.items()
            if name != BASELINE and (why := p.unavailable_reason())}


# --------------------------------------------------------------------------- configuration
@dataclass
class Config:
    models: list[str]
    backends: list[str] = field(default_factory=lambda: ["llvm", BASELINE])
    batches: list[int] = field(default_factory=lambda: [1])
    threads: list[int] = field(default_factory=lambda: [1])
    repeat: int = 10          # timed runs per backend (fewer if the budget runs out)
    warmup: int = 2           # untimed runs first (at least one)
    budget_s: float = 10.0    # per backend and cell: stop repeating after this many seconds
    min_repeat: int = 3       # ...but only after this many timed runs
    cell_limit_s: float | None = None  # give a backend up once its cell took this long
    settle_s: float = 0.1     # with threads > 1: pause between runs, so spinning idle thread
                              # pools (OpenBLAS, onnxruntime) do not eat the next one's cores;
                              # a run under PRIME_BELOW_S then follows an untimed one, so the
                              # wake-up after the pause is not what gets timed
    seed: int = 0
    tolerance: float = TOLERANCE
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def check_models(models: Sequence[str]) -> None:
    """Raise ModelError for a model that is neither a zoo name nor an existing .onnx file."""
    from cnncompiler import zoo
    from cnncompiler.errors import ModelError

    for m in models:
        if m.endswith(".onnx"):
            if not os.path.isfile(m):
                raise ModelError(f"ONNX file {m!r} does not exist")
        elif m.lower().replace("-", "_") not in zoo.names():
            raise ModelError(f"unknown model {m!r}: give a built-in name "
                             f"({', '.join(zoo.names())}) or an .onnx file")


# ------------------------------------------------------------------------------ machine info
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count()}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import llvmlite.binding as llvm

        info["cpu_name"] = llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - optional
        pass
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    busy = _busy_cores()
    if busy is not None:
        info["busy_cores_before"] = round(busy, 2)  # other work on the machine adds noise
    versions = {}
    for pkg in ("cnncompiler", "onnxruntime", "llvmlite", "numpy", "onnx", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def _busy_ticks() -> int:
    """CPU time (clock ticks) all cores spent busy since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def _ticks_of(pid: int) -> int:
    """CPU time (clock ticks, user + system) of process ``pid`` so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0


class _OtherLoad:
    """How many cores processes other than the harness's kept busy during a cell: all busy CPU
    time on the machine minus the parent's and its workers' (Linux only, else None)."""

    def __init__(self) -> None:
        try:
            self.hz = os.sysconf("SC_CLK_TCK")
            self.start = (time.perf_counter(), _busy_ticks(), _ticks_of(os.getpid()))
        except (OSError, ValueError, IndexError, AttributeError):
            self.start = None

    def stop(self, worker_ticks: int) -> float | None:
        """``worker_ticks``: the CPU ticks the cell's workers (all started after __init__)
        used."""
        if self.start is None:
            return None
        t0, busy0, parent0 = self.start
        try:
            busy1 = _busy_ticks()
        except (OSError, ValueError, IndexError):
            return None
        wall = time.perf_counter() - t0
        ours = _ticks_of(os.getpid()) - parent0 + worker_ticks
        if wall < 0.5:
            return None  # too short for clock ticks to tell
        return min(max(busy1 - busy0 - ours, 0) / self.hz / wall, float(os.cpu_count() or 1))


def _busy_cores(interval: float = 0.5) -> float | None:
    """How many cores other processes kept busy over ``interval`` seconds (Linux only)."""

    try:
        busy0, t0 = _busy_ticks(), time.perf_counter()
        time.sleep(interval)
        busy1, t1 = _busy_ticks(), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)


# ------------------------------------------------------------------------------ the worker
class _Cell:
    """Worker side: builds, compiles and times one backend on one model."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.inputs: dict[str, np.ndarray] = dict(np.load(spec["input_path"]))
        self.fn: Callable[[], list] | None = None

    def compile(self) -> dict[str, Any]:
        spec = self.spec
        backend = spec["backend"]
        if backend in PEERS:
            start = time.perf_counter()
            run, applied = PEERS[backend].load(spec["onnx_path"], spec["threads"])
            result = {"compile_s": time.perf_counter() - start, "compile_cached_s": None,
                      "threads_applied": applied}
            feeds = self.inputs
            self.fn = lambda: run(feeds)
        else:
            result = self._compile_cnnc(backend)
        return result

    def _graph(self):
        spec = self.spec
        if spec["kind"] == "zoo":
            from cnncompiler import zoo

            net = zoo.get(spec["model"])
            return net.to_graph((spec["batch"], *net.input_shape[1:]), with_weights=True,
                                seed=spec["seed"])
        from cnncompiler.frontends.onnx import load

        return load(spec["onnx_path"], input_shapes={k: tuple(v) for k, v in
                                                 spec["input_shapes"].items()})

    def _compile_cnnc(self, backend: str) -> dict[str, Any]:
        import cnncompiler
        from cnncompiler.runtime.registry import get_backend

        spec = self.spec
        graph = self._graph()
        has_cache = bool(getattr(get_backend(backend), "has_compile_cache", False))
        options: dict[str, Any] = {"threads": spec["threads"]}
        applied = True
        start = time.perf_counter()
        try:
            cm = cnncompiler.compile(graph, backend=backend, batch=spec["batch"], **options)
        except UnsupportedError as e:
            if "threads" not in str(e) or "option" not in str(e):
                raise  # not about the threads option: the model is unsupported
            options, applied = {}, False
            start = time.perf_counter()
            cm = cnncompiler.compile(graph, backend=backend, batch=spec["batch"])
        cold = time.perf_counter() - start
        cached = None
        if has_cache:
            cm = None   # a user's second compile replaces the model: two never coexist,
            gc.collect()   # so peak RSS counts one model's weights and arena, not two
            start = time.perf_counter()
            cm = cnncompiler.compile(graph, backend=backend, batch=spec["batch"], **options)
            cached = time.perf_counter() - start
        args = [self.inputs[v.name] for v in cm.graph.inputs]
        names = cm.output_names

        def fn() -> dict:
            out = cm(*args)
            return dict(zip(names, out if isinstance(out, tuple) else (out,)))

        self.fn = fn
        return {"compile_s": cold, "compile_cached_s": cached, "threads_applied": applied}

    def run_once(self) -> float:
        start = time.perf_counter()
        self.fn()
        return time.perf_counter() - start

    def finish(self) -> dict[str, Any]:
        out = self.fn()
        if isinstance(out, dict):
            arrays = {k: np.asarray(v) for k, v in out.items()}
        else:
            arrays = {f"output{i}": np.asarray(v) for i, v in enumerate(out)}
        np.savez(self.spec["output_path"], **arrays)
        return {"rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MB (2**20 bytes).

    On Linux this is ``VmHWM``: ``getrusage``'s ``ru_maxrss`` survives ``fork`` + ``execve``,
    so a worker would report the (large) parent's peak instead of its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def _worker(spec: dict[str, Any]) -> None:
    """The ``--cell`` loop: one JSON reply per command line on stdin."""
    # the protocol keeps its own copy of stdout; anything else printed goes to stderr
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(**kw: Any) -> None:
        channel.write(json.dumps(kw) + "\n")
        channel.flush()

    try:
        cell = _Cell(spec)
        reply(ok=True, rss_mb=_peak_rss_mb())
    except Exception as e:  # noqa: BLE001 - reported to the parent
        reply(ok=False, error=f"{type(e).__name__}: {e}")
        return
    for line in sys.stdin:
        cmd = line.strip()
        try:
            if cmd == "compile":
                reply(ok=True, **cell.compile())
            elif cmd == "run":
                reply(ok=True, t=cell.run_once())
            elif cmd == "finish":
                reply(ok=True, **cell.finish())
                return
            else:
                reply(ok=False, error=f"unknown command {cmd!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent
            kind = "unsupported" if isinstance(e, UnsupportedError) else "error"
            reply(ok=False, kind=kind, error=f"{type(e).__name__}: {e}")


# ------------------------------------------------------------------------------ the parent
class _WorkerFailed(Exception):
    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


class _Worker:
    """Parent side of one worker process."""

    def __init__(self, spec: dict[str, Any], workdir: str, limit_s: float | None):
        self.backend = spec["backend"]
        self.limit_s = limit_s
        self.used_s = 0.0
        self.final_ticks = 0
        own = tempfile.mkdtemp(prefix=f"{self.backend}-", dir=workdir)
        self.err_path = os.path.join(own, "stderr.txt")
        env = dict(os.environ)
        threads = str(spec["threads"])
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = threads  # numpy's BLAS (reference backend) gets the same thread count
        env["CNNC_CACHE_DIR"] = os.path.join(own, "cache")  # empty: the first compile is cold
        # drivers' own kernel caches too: the OpenCL backend puts PoCL's under CNNC_CACHE_DIR
        # unless POCL_CACHE_DIR is set (as it is in this process once OpenCL was queried)
        env.pop("POCL_CACHE_DIR", None)
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnncompiler.bench", "--cell", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
            env=env, cwd=own)  # not the caller's cwd: a source checkout there would shadow
        #                        the installed package (whose cnncompiler.backends it lacks)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        timeout = None if self.limit_s is None else max(self.limit_s - self.used_s, 0.1)
        start = time.perf_counter()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else None
        self.used_s += time.perf_counter() - start
        if line is None:
            self.kill()
            raise _WorkerFailed(f"over the {self.limit_s:g} s cell limit", "stopped")
        if not line:
            self.proc.wait()
            raise _WorkerFailed(f"worker died (exit {self.proc.returncode}): "
                                f"{self._stderr_tail()}")
        msg = json.loads(line)
        if not msg.get("ok"):
            raise _WorkerFailed(msg.get("error", "?"), msg.get("kind", "error"))
        return msg

    def ask(self, cmd: str) -> dict[str, Any]:
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # _read reports the death
        return self._read()

    def _stderr_tail(self) -> str:
        self._err.flush()
        with open(self.err_path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "no message"

    def ticks(self) -> int:
        """CPU ticks this worker used (kept after it is closed)."""
        if self.proc.returncode is None:
            self.final_ticks = max(self.final_ticks, _ticks_of(self.proc.pid))
        return self.final_ticks

    def kill(self) -> None:
        self.ticks()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._err.close()


@dataclass
class Row:
    model: str
    batch: int
    threads: int
    backend: str
    compile_s: float | None = None
    compile_cached_s: float | None = None
    first_run_ms: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    runs: int = 0
    times_ms: list[float] = field(default_factory=list)
    rss_mb: float | None = None
    rss_startup_mb: float | None = None
    ratio_vs_onnxruntime: float | None = None
    gflop: float | None = None
    gflop_per_s: float | None = None
    max_rel_err: float | None = None
    outputs_match: bool | None = None
    has_compile_cache: bool = False
    threads_applied: bool | None = None
    busy_cores_other: float | None = None  # cores other processes used during the timed runs
    status: str = "ok"
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status.startswith(("error", "MISMATCH"))


def _rel_err(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Largest normwise relative error max|a-b| / max|b| over the outputs (by name, else by
    position)."""
    if set(got) == set(want):
        pairs = [(got[k], want[k]) for k in want]
    else:
        pairs = list(zip(got.values(), want.values()))
        if len(got) != len(want):
            return float("inf")
    worst = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
        err = float(np.max(np.abs(a - b))) / scale if a.size else 0.0
        if not np.isfinite(err):
            return float("inf")
        worst = max(worst, err)
    return worst


def _prepare(model: str, batch: int, config: Config, workdir: str) -> dict[str, Any]:
    """Graph FLOPs, the ONNX file the peers run, and the seeded input, for one model+batch."""
    from cnncompiler.runtime.api import as_graph

    if model.endswith(".onnx"):
        from cnncompiler.frontends.onnx import load

        kind, onnx_path = "onnx", os.path.abspath(model)
        graph = as_graph(load(onnx_path, input_shapes=config.input_shapes), batch=batch)
        name = os.path.basename(model)
    else:
        from cnncompiler import zoo
        from cnncompiler.frontends.onnx import save

        kind = "zoo"
        net = zoo.get(model)
        name = net.name
        graph = net.to_graph((batch, *net.input_shape[1:]), with_weights=True, seed=config.seed)
        onnx_path = os.path.join(workdir, f"{name}-b{batch}.onnx")
        save(graph, onnx_path)
    rng = np.random.default_rng(config.seed)
    inputs = {v.name: rng.standard_normal(v.type.concrete(default=batch))
              .astype(v.type.dtype.numpy) for v in graph.inputs}
    input_path = os.path.join(workdir, f"{name}-b{batch}-input.npz")
    np.savez(input_path, **inputs)
    flops = graph.summary(batch=batch).flops
    return {"name": name, "kind": kind, "onnx_path": onnx_path, "input_path": input_path,
            "gflop": flops / 1e9}


def _bench_cell(model: str, prep: dict[str, Any], batch: int, threads: int,
                backends: list[str], config: Config, workdir: str,
                log: Callable[[str], None]) -> list[Row]:
    rows = {b: Row(prep["name"], batch, threads, b, gflop=prep["gflop"]) for b in backends}
    workers: dict[str, _Worker] = {}
    started: list[_Worker] = []
    other = _OtherLoad()  # from before the first worker starts: compiles count as window
    settle = config.settle_s if threads > 1 else 0.0

    last: dict[str, float] = {}

    def timed(backend: str) -> float:
        if settle:
            time.sleep(settle)
            if last.get(backend, 0.0) < PRIME_BELOW_S:
                workers[backend].ask("run")  # untimed: wakes its threads after the pause
        last[backend] = t = workers[backend].ask("run")["t"]
        return t

    def fail(backend: str, e: _WorkerFailed) -> None:
        row = rows[backend]
        row.status = f"{e.kind}: {e}"
        w = workers.pop(backend, None)
        if w is not None:
            w.close()

    try:
        # start and compile one at a time, so compiles do not compete for the cores
        for b in backends:
            spec = {"backend": b, "model": model, "kind": prep["kind"],
                    "onnx_path": prep["onnx_path"], "input_path": prep["input_path"],
                    "output_path": os.path.join(workdir, f"{b}-out.npz"), "batch": batch,
                    "threads": threads, "seed": config.seed,
                    "input_shapes": {k: list(v) for k, v in config.input_shapes.items()}}
            try:
                w = _Worker(spec, workdir, config.cell_limit_s)
                workers[b] = w
                started.append(w)
                rows[b].rss_startup_mb = w.ready["rss_mb"]
                w.used_s = 0.0  # the limit counts from the compile on, not the imports
                msg = w.ask("compile")
            except _WorkerFailed as e:
                fail(b, e)
                continue
            row = rows[b]
            row.compile_s = msg["compile_s"]
            row.compile_cached_s = msg["compile_cached_s"]
            row.has_compile_cache = msg["compile_cached_s"] is not None
            row.threads_applied = msg["threads_applied"]
            if not msg["threads_applied"]:
                row.notes.append("threads n/a")

        # warm-up, interleaved: the first run is recorded, later ones stop at half the budget
        warm_s = dict.fromkeys(workers, 0.0)
        for i in range(max(config.warmup, 1)):
            for b in list(workers)[:: 1 if i % 2 == 0 else -1]:
                if i and warm_s[b] >= config.budget_s / 2:
                    continue
                try:
                    t = timed(b)
                except _WorkerFailed as e:
                    fail(b, e)
                    continue
                warm_s[b] += t
                if i == 0:
                    rows[b].first_run_ms = t * 1e3

        # timed rounds, interleaved, alternating the order
        spent = dict.fromkeys(workers, 0.0)
        active = list(workers)
        rnd = 0
        while active:
            for b in (active if rnd % 2 == 0 else active[::-1]):
                try:
                    t = timed(b)
                except _WorkerFailed as e:
                    fail(b, e)
                    continue
                rows[b].times_ms.append(t * 1e3)
                spent[b] += t
            rnd += 1
            active = [b for b in active if b in workers and len(rows[b].times_ms) < config.repeat
                      and not (len(rows[b].times_ms) >= min(config.min_repeat, config.repeat)
                               and spent[b] >= config.budget_s)]

        busy_other = other.stop(sum(w.ticks() for w in started))
        outputs = {}
        for b, w in list(workers.items()):
            try:
                rows[b].rss_mb = w.ask("finish")["rss_mb"]
                with np.load(os.path.join(workdir, f"{b}-out.npz")) as f:
                    outputs[b] = {k: f[k] for k in f.files}
            except _WorkerFailed as e:
                fail(b, e)
    finally:
        for w in workers.values():
            w.close()

    base = rows.get(BASELINE)
    for row in rows.values():
        row.busy_cores_other = None if busy_other is None else round(busy_other, 2)
        if busy_other is not None and busy_other > NOISY_CORES:
            row.notes.append(f"noisy: {busy_other:.1f} cores busy elsewhere")
    for b, row in rows.items():
        if row.times_ms:
            t = np.asarray(row.times_ms)
            row.runs = len(t)
            row.median_ms = float(np.median(t))
            row.p90_ms = float(np.percentile(t, 90))
            row.min_ms = float(t.min())
            row.gflop_per_s = row.gflop / (row.median_ms / 1e3) if row.median_ms else None
        if base is not None and base.median_ms and row.median_ms:
            row.ratio_vs_onnxruntime = row.median_ms / base.median_ms
        if b != BASELINE and b in outputs:
            if BASELINE in outputs:
                row.max_rel_err = _rel_err(outputs[b], outputs[BASELINE])
                row.outputs_match = row.max_rel_err < config.tolerance
                if not row.outputs_match:
                    row.status = f"MISMATCH (rel err {row.max_rel_err:.2g} >= " \
                                 f"{config.tolerance:g})"
            else:
                row.notes.append("output unchecked")
        elif b == BASELINE and b in outputs:
            row.outputs_match, row.max_rel_err = True, 0.0
        if row.status == "ok" and row.notes:
            row.status = "ok; " + "; ".join(row.notes)
        log(_format_rows([row], header=False))
    return list(rows.values())


def run(config: Config, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every cell of ``config``; the report (machine, config, rows, skipped backends)."""
    log = log or (lambda s: None)
    check_models(config.models)
    backends, skipped = resolve_backends(config.backends)
    if BASELINE not in backends:
        raise UnsupportedError(f"the baseline {BASELINE} cannot run here: {skipped[BASELINE]}")
    skipped = {**optional_peers(), **skipped}
    machine = machine_info()
    rows: list[Row] = []
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="cnnc-bench-")
    try:
        log(_preamble(machine, skipped))
        log(_format_rows([], header=True))
        for model in config.models:
            for batch in config.batches:
                prep = _prepare(model, batch, config, workdir)
                for threads in config.threads:
                    rows += _bench_cell(model, prep, batch, threads, backends, config, workdir,
                                        log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cfg = asdict(config)
    cfg["input_shapes"] = {k: list(v) for k, v in config.input_shapes.items()}
    try:
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "machine": machine,
            "config": cfg, "baseline": BASELINE, "skipped": skipped,
            "rows": [{**asdict(r), "failed": r.failed} for r in rows]}


# ---------------------------------------------------------------------------------- output
_COLUMNS = [("model", 14, "<"), ("batch", 5, ">"), ("thr", 3, ">"), ("backend", 11, "<"),
            ("compile s", 9, ">"), ("cached s", 8, ">"), ("median ms", 10, ">"),
            ("p90 ms", 10, ">"), ("RSS MB", 7, ">"), ("vs ORT", 7, ">"), ("GFLOP/s", 8, ">"),
            ("status", 0, "<")]


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _short(status: str, width: int = 90) -> str:
    line = status.splitlines()[0] if status else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _format_rows(rows: Sequence[Row | dict], header: bool = True) -> str:
    lines = []
    if header:
        lines.append("  ".join(f"{name:{align}{width}}" for name, width, align in _COLUMNS)
                     .rstrip())
        lines.append("-" * (sum(w for _, w, _ in _COLUMNS) + 2 * (len(_COLUMNS) - 1) + 24))
    for r in rows:
        r = asdict(r) if isinstance(r, Row) else r
        ms = ".3f" if (r["median_ms"] or 0) < 10 else ".1f"
        cached = "n/a" if not r["has_compile_cache"] else _fmt(r["compile_cached_s"], ".2f")
        cells = [r["model"], str(r["batch"]), str(r["threads"]), r["backend"],
                 _fmt(r["compile_s"], ".2f"), cached, _fmt(r["median_ms"], ms),
                 _fmt(r["p90_ms"], ms), _fmt(r["rss_mb"], ".0f"),
                 _fmt(r["ratio_vs_onnxruntime"], ".2f"), _fmt(r["gflop_per_s"], ".2f"),
                 _short(r["status"])]
        lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align)
                               in zip(cells, _COLUMNS)).rstrip())
    return "\n".join(lines)


def _preamble(machine: dict[str, Any], skipped: dict[str, str]) -> str:
    cpu = machine.get("cpu_model") or machine.get("cpu_name", "?")
    lines = [f"machine: {cpu} ({machine.get('cpu_name', '?')}), {machine.get('cores')} cores; "
             + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())]
    busy = machine.get("busy_cores_before")
    if busy is not None and busy > NOISY_CORES:
        lines.append(f"warning: {busy:.1f} of {machine.get('cores')} cores were busy with "
                     "other work before the run: timings are noisy")
    lines += [f"skipped {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    """The terminal table of a report, as :func:`run` streams it to ``log``."""
    return _preamble(report["machine"], report["skipped"]) + "\n" + _format_rows(report["rows"])


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def check_plotting() -> None:
    """Raise UnsupportedError if matplotlib is missing (``--plot`` needs it)."""
    if find_spec("matplotlib") is None:
        raise UnsupportedError("--plot needs matplotlib: pip install 'cnncompiler[bench]'")


def plot(report: dict[str, Any], path: str | os.PathLike) -> None:
    """A PNG bar chart: median latency (log scale) per model/batch/threads, one bar per
    backend, with the p90 as an error bar, the ratio to onnxruntime above each bar, and noisy
    cells hatched."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["median_ms"]]
    groups = list(dict.fromkeys((r["model"], r["batch"], r["threads"]) for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in report["rows"]))
    by_key = {(r["model"], r["batch"], r["threads"], r["backend"]): r for r in rows}
    width = 0.8 / max(len(backends), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.8))
    for j, b in enumerate(backends):
        xs, ys, errs, labels, noisy = [], [], [], [], []
        for i, g in enumerate(groups):
            r = by_key.get((*g, b))
            if r is None:
                continue
            noisy.append((r.get("busy_cores_other") or 0.0) > NOISY_CORES)
            xs.append(i + (j - (len(backends) - 1) / 2) * width)
            ys.append(r["median_ms"])
            errs.append(max(r["p90_ms"] - r["median_ms"], 0.0))
            ratio = r["ratio_vs_onnxruntime"]
            labels.append("" if ratio is None or b == BASELINE else f"{ratio:.2g}x")
        bars = ax.bar(xs, ys, width, yerr=[[0] * len(errs), errs], capsize=2, label=b)
        for bar, busy in zip(bars, noisy):
            if busy:
                bar.set_hatch("//")
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log scale; whisker: p90)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\nb{bt} t{th}" for m, bt, th in groups], fontsize=8)
    m = report["machine"]
    ax.set_title(f"cnncompiler vs peers on {m.get('cpu_model') or m.get('cpu_name', '?')} "
                 f"(label: ratio to {BASELINE}; hatched: noisy, other work kept cores busy)",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cnncompiler.bench --cell SPEC``: the worker (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--cell":
        print("usage: python -m cnncompiler.bench --cell SPEC_JSON  (the worker; use "
              "`cnnc bench` to run benchmarks)", file=sys.stderr)
        return 2
    _worker(json.loads(args[1]))
    return 0


__all__ = ["BASELINE", "PEERS", "Config", "Peer", "Row", "check_models", "format_table",
           "known_backends", "machine_info", "plot", "resolve_backends", "run", "write_json"]

if __name__ == "__main__":
    sys.exit(main())
