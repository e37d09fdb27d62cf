"""Training-step time: cnncompiler's compiled step against torch eager, interleaved in one
run (``cnnc bench lenet5 --train``, ``benchmarks/train_bench.py``).

Any zoo model at any input size: the same graph (same initial weights, same batch, SGD with
momentum 0.9 and lr 0.01) is stepped alternately by each contender, so a noisy machine's
drift hits all alike; each row has the median and p90 step time and the ratio to torch.
torch runs the graph through :mod:`cnncompiler.bench_torch` (a generic mirror, in train mode,
fed our trainer's Dropout masks); it is optional (pip install torch==2.13.0): without it the
rows stand alone. Every contender's loss after the timed steps is reported, and how far its
weights and BatchNormalization running statistics are from torch's then (``params_rel_err``,
``stats_rel_err``: max|a - b| / max|b| over all the tensors): they agree to float32 rounding, a
check that the same work is timed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import cnncompiler
from cnncompiler import optim, zoo
from cnncompiler.errors import ModelError
from cnncompiler.ir.graph import Graph

MODELS = tuple(zoo.names())
#: the batch when none is given: LeNet-5's tiny steps need a large one to time compute
DEFAULT_BATCH = {"lenet5": 64}
OTHER_BATCH = 8
LR, MOMENTUM, SEED = 0.01, 0.9, 0


def default_batch(model: str) -> int:
    """The training batch ``run`` uses for ``model`` when given none."""
    return DEFAULT_BATCH.get(model, OTHER_BATCH)


def model_graph(model: str, input_shape: Sequence[int] | None = None, seed: int = SEED
                ) -> Graph:
    """Zoo ``model`` with seeded weights and a symbolic batch; ``input_shape`` (C, H, W)
    replaces the model's own (LeNet-5 1x32x32, ResNet 3x224x224...)."""
    net = zoo.get(model)
    shape = tuple(input_shape) if input_shape else tuple(net.input_shape[1:])
    if len(shape) != 3:
        raise ModelError(f"{model}: the input shape is C,H,W, got {list(shape)}")
    if shape[0] != net.input_shape[1]:
        raise ModelError(f"{model} takes {net.input_shape[1]} input channel(s), got "
                         f"{shape[0]}")
    return net.to_graph(("N", *shape), seed=seed)


def _rel_err(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
    """max|a - b| / max|b| over all the named tensors as one vector (per tensor, one that
    stays near zero, such as a bias whose gradient vanishes, would show float32 noise
    as a relative error of 1)."""
    diff = max((float(np.abs(ours[n] - theirs[n]).max()) for n in theirs), default=0.0)
    scale = max((float(np.abs(theirs[n]).max()) for n in theirs), default=0.0)
    return diff / scale if scale else diff


class _Contender:
    """A step function, and the parameters and running statistics it has reached."""

    def __init__(self, step: Callable[[], float],
                 params: Callable[[], dict[str, np.ndarray]],
                 stats: Callable[[], dict[str, np.ndarray]]):
        self.step, self.params, self.stats = step, params, stats


def _ours(graph: Graph, backend: str, threads: int, batch: int, x: np.ndarray,
          y: np.ndarray) -> _Contender:
    options = {"threads": threads} if backend == "llvm" else {}
    trainer = cnncompiler.compile_training(
        graph, optimizer=optim.SGD(lr=LR, momentum=MOMENTUM), backend=backend,
        batch_size=batch, seed=SEED, **options)
    trainer.prepare([batch])
    return _Contender(lambda: trainer.step(x, y), lambda: dict(trainer.params),
                      lambda: dict(trainer.stats))


def _torch(graph: Graph, threads: int, batch: int, x: np.ndarray, y: np.ndarray
           ) -> _Contender:
    """torch eager SGD-momentum steps of the mirror, with the Dropout masks our trainer
    draws for the same step number (both sides drop the same units)."""
    import torch

    from cnncompiler.bench_torch import running_stat_names, torch_mirror
    from cnncompiler.ir.specialize import bind_symbols
    from cnncompiler.training.trainer import dropout_masks, train_mode_graph

    torch.set_num_threads(threads)
    net = torch_mirror(graph).train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    masks = []
    if any(n.op == "Dropout" for n in graph.nodes):
        symbol = sorted({s for v in graph.inputs for s in v.type.symbols})[0]
        masks = train_mode_graph(bind_symbols(graph, {symbol: batch})).masks
    steps = [0]

    def step() -> float:
        steps[0] += 1
        drop = {k: torch.from_numpy(v) for k, v in dropout_masks(masks, SEED, steps[0]).items()}
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(tx, masks=drop), ty)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def state(names: list[str]) -> dict[str, np.ndarray]:
        wanted = set(names)
        return {n: a for n, a in net.numpy_state().items() if n in wanted}

    return _Contender(step, lambda: state(net.param_names),
                      lambda: state(running_stat_names(graph)))


def run(backends: list[str], threads: list[int], batch: int | None = None, steps: int = 40,
        log: Callable[[str], Any] = print, model: str = "lenet5",
        input_shape: Sequence[int] | None = None) -> list[dict]:
    """Rows of {model, input_shape, batch, threads, backend, median_ms, p90_ms, vs_torch,
    loss, params_rel_err, stats_rel_err} for zoo ``model`` at ``input_shape`` (C, H, W; the
    model's own by default), ``batch`` examples a step (:func:`default_batch` by default)."""
    batch = batch or default_batch(model)
    graph = model_graph(model, input_shape)
    shape = tuple(graph.inputs[0].type.shape[1:])
    classes = graph.outputs[0].type.shape[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    rows = []
    for t in threads:
        contenders = {b: _ours(graph, b, t, batch, x, y) for b in backends}
        try:
            import torch  # noqa: F401
        except ImportError:
            log("torch not installed: no peer (pip install torch==2.13.0)")
        else:
            contenders["torch"] = _torch(graph, t, batch, x, y)
        rows += _time(contenders, steps, {"model": graph.name, "input_shape": list(shape),
                                          "batch": batch, "threads": t}, log)
    return rows


#: timed steps per contender and round of the interleaving
ROUND = 5


def _time(contenders: dict[str, _Contender], steps: int, cell: dict[str, Any],
          log: Callable[[str], Any]) -> list[dict]:
    """Interleaved rounds (the order alternates each round): per round and contender, one
    untimed settling step, then up to ``ROUND`` timed ones. A thread pool keeps spinning for
    a while after its last step (torch's OpenMP workers, our team's short poll), so a step
    timed right after another contender's measured the two pools fighting over the cores:
    LeNet-5 at 2 threads took 10.9 ms that way and 3.2 ms alone."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    losses: dict[str, float] = {}
    done = 0
    while done < steps:
        timed = min(ROUND, steps - done)
        order = list(contenders) if (done // ROUND) % 2 == 0 else list(reversed(contenders))
        for name in order:
            losses[name] = contenders[name].step()   # settles (and warms up, in round 1)
            for _ in range(timed):
                start = time.perf_counter()
                losses[name] = contenders[name].step()
                times[name].append(time.perf_counter() - start)
        done += timed
    total = steps + -(-steps // ROUND)   # timed and settling steps of each contender
    base = statistics.median(times["torch"]) if "torch" in times else None
    peer = contenders.get("torch")
    peer_params = peer.params() if peer else {}
    peer_stats = peer.stats() if peer else {}
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        p90 = sorted(ts)[int(0.9 * (len(ts) - 1))]
        ratio = med / base if base else None
        mine = contenders[name]
        compared = peer is not None and name != "torch"
        params_err = _rel_err(mine.params(), peer_params) if compared else None
        stats_err = _rel_err(mine.stats(), peer_stats) if compared and peer_stats else None
        rows.append({**cell, "backend": name,
                     "median_ms": med * 1e3, "p90_ms": p90 * 1e3, "vs_torch": ratio,
                     "loss": losses[name], "params_rel_err": params_err,
                     "stats_rel_err": stats_err})
        shape = "x".join(map(str, cell["input_shape"]))
        log(f"{cell['model']} {shape} b{cell['batch']} t{cell['threads']} {name:<8} "
            f"median {med * 1e3:8.2f} ms  p90 {p90 * 1e3:8.2f} ms  vs torch "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}  loss after {total} steps "
            f"{losses[name]:.6g}"
            + ("" if params_err is None else f"  weights vs torch {params_err:.1e}")
            + ("" if stats_err is None else f", running stats {stats_err:.1e}"))
    return rows
