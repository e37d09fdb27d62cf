"""Training-step time: cnncompiler's compiled step against torch eager, interleaved in one
run (``cnnc bench lenet5 --train``, ``benchmarks/train_bench.py``).

The same LeNet-5 (same initial weights, same batch, SGD with momentum) is stepped
alternately by each contender, so a noisy machine's drift hits all alike; each row has the
median and p90 step time and the ratio to torch. torch is optional (pip install
torch==2.13.0): without it the rows stand alone. Every contender's loss after the timed steps
is reported: they agree to float32 rounding, a check that the same work is timed.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import cnncompiler
from cnncompiler import optim, zoo


def _torch_lenet(weights: dict[str, np.ndarray], threads: int):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
                        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
                        nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
                        nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    ours = ["c1", "c3", "c5", "f6", "output"]
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for name, layer in zip(ours, layers):
            w = weights[f"{name}.weight"]
            # our Linear keeps [out, in] like torch (Gemm transB)
            layer.weight.copy_(torch.from_numpy(w.reshape(layer.weight.shape)))
            layer.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))
    return net


def _torch_step(torch, threads: int, x: np.ndarray, y: np.ndarray):
    """One torch eager SGD-momentum step of LeNet-5 from our initial weights."""
    net = _torch_lenet(zoo.get("lenet5").init_parameters(0).state_dict(), threads)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


MODELS = ("lenet5",)   # the torch mirror exists for these


def run(backends: list[str], threads: list[int], batch: int = 64, steps: int = 40,
        log=print) -> list[dict]:
    """Rows of {model, batch, threads, backend, median_ms, p90_ms, vs_torch, loss}."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    rows = []
    for t in threads:
        contenders = {}
        for backend in backends:
            net = zoo.get("lenet5").init_parameters(0)
            options = {"threads": t} if backend == "llvm" else {}
            trainer = cnncompiler.compile_training(
                net, optimizer=optim.SGD(lr=0.01, momentum=0.9), backend=backend,
                batch_size=batch, **options)
            trainer.prepare([batch])
            contenders[backend] = lambda trainer=trainer: trainer.step(x, y)
        try:
            import torch

            contenders["torch"] = _torch_step(torch, t, x, y)
        except ImportError:
            log("torch not installed: no peer (pip install torch==2.13.0)")
        rows += _time(contenders, steps, batch, t, log)
    return rows


def _time(contenders: dict, steps: int, batch: int, threads: int, log) -> list[dict]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    losses: dict[str, float] = {}
    for step in contenders.values():   # warm-up
        step()
    for i in range(steps):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in order:
            start = time.perf_counter()
            losses[name] = contenders[name]()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["torch"]) if "torch" in times else None
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        p90 = sorted(ts)[int(0.9 * (len(ts) - 1))]
        ratio = med / base if base else None
        rows.append({"model": "lenet5", "batch": batch, "threads": threads, "backend": name,
                     "median_ms": med * 1e3, "p90_ms": p90 * 1e3, "vs_torch": ratio,
                     "loss": losses[name]})
        log(f"lenet5 b{batch} t{threads} {name:<8} median {med * 1e3:7.2f} ms  "
            f"p90 {p90 * 1e3:7.2f} ms  vs torch "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}  loss after {steps + 1} steps "
            f"{losses[name]:.5f}")
    return rows
