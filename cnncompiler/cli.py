"""``cnnc``: the command-line interface (click)."""

from __future__ import annotations

import json
import sys
import time

import click
import numpy as np

from cnncompiler.data import DATASETS
from cnncompiler.errors import CnnCompilerError
from cnncompiler.optim import OPTIMIZERS


def _load(model: str, with_weights: bool, batch: int | None = None, seed: int = 0,
          input_shapes: dict[str, tuple[int, ...]] | None = None):
    """A Graph from a zoo name or an ONNX file (whose symbolic dims ``input_shapes`` fixes)."""
    from cnncompiler import zoo

    if model in zoo.names():
        net = zoo.get(model)
        shape = net.input_shape if batch is None else (batch, *net.input_shape[1:])
        return net.to_graph(shape, with_weights=with_weights, seed=seed)
    if model.endswith(".onnx"):
        from cnncompiler.frontends.onnx import load

        return load(model, input_shapes=input_shapes)
    raise click.UsageError(f"unknown model {model!r}: give a built-in name "
                           f"({', '.join(zoo.names())}) or an .onnx file")


def _parse_shapes(items: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            sep = ""
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: use NAME=1,3,224,224", param_hint="--shape")
    return shapes


_SHAPE_OPTION = click.option("--shape", "shapes", multiple=True, metavar="NAME=1,3,224,224",
                             help="concrete shape for an ONNX input with symbolic dims")


class _Group(click.Group):
    """Turns the project's errors into one clear line and exit status 2 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnCompilerError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="cnncompiler")
def main() -> None:
    """cnncompiler: compile convolutional neural networks to native kernels."""


@main.command()
def models() -> None:
    """List the built-in networks."""
    from cnncompiler import zoo

    for name in zoo.names():
        click.echo(f"{name:<14} {zoo.describe(name)}")


@main.command()
def backends() -> None:
    """List backends and whether they work on this machine."""
    from cnncompiler.runtime.registry import available

    for status in available().values():
        click.echo(str(status))


@main.command()
@click.argument("model")
@click.option("--batch", type=int, default=1, show_default=True, help="batch size for FLOPs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--plan", "with_plan", is_flag=True,
              help="also plan the activation memory of the optimised graph (batch --batch)")
@_SHAPE_OPTION
def summary(model: str, batch: int, as_json: bool, with_plan: bool,
            shapes: tuple[str, ...]) -> None:
    """Per-layer table of MODEL (built-in name or .onnx): volumes, activations, weights, FLOPs."""
    from cnncompiler.summary import summarize

    graph = _load(model, with_weights=False, input_shapes=_parse_shapes(shapes))
    s = summarize(graph, batch=batch)
    plan = None
    if with_plan:
        from cnncompiler.passes import PassManager
        from cnncompiler.passes.memory import plan_memory

        plan = plan_memory(PassManager(2).run(graph), batch=batch)
    if as_json:
        out = s.to_dict()
        if plan is not None:
            out["memory_plan"] = plan.to_dict()
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(str(s))
        if plan is not None:
            click.echo("")
            click.echo(plan.describe())


_THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="threads the compiled code runs on (llvm; default 1)")
_DEVICE_OPTION = click.option(
    "--device", default=None, metavar="PLATFORM:DEVICE",
    help="OpenCL device by indices, e.g. 0:0 (opencl; default PYOPENCL_CTX or the best one)")


def _backend_options(threads: int | None, device: str | None) -> dict:
    """The backend options the user gave (a backend rejects ones it does not take)."""
    options: dict = {}
    if threads is not None:
        options["threads"] = threads
    if device is not None:
        options["device"] = device
    return options


@main.command("compile")
@click.argument("model")
@click.option("--backend", default="reference", show_default=True)
@click.option("--opt-level", type=click.IntRange(0, 2), default=2, show_default=True)
@click.option("--disable", "disabled", multiple=True, metavar="PASS", help="skip a pass")
@click.option("--explain", is_flag=True, help="what each pass did, in order, and the plan")
@click.option("--dump-ir", "dump", metavar="after:PASS|final",
              help="print the IR after a named pass (or the final IR)")
@click.option("--dot", "dot_path", type=click.Path(dir_okay=False),
              help="write the dumped (or final) IR as a Graphviz DOT file")
@click.option("--batch", type=int, default=None, help="pin the symbolic batch")
@click.option("-o", "--output", "lib_path", type=click.Path(dir_okay=False),
              help="AOT: write a shared library + C header + weights file (llvm)")
@click.option("--no-cache", is_flag=True, help="don't read or write the compile cache")
@_THREADS_OPTION
@_DEVICE_OPTION
@_SHAPE_OPTION
def compile_command(model: str, backend: str, opt_level: int, disabled: tuple[str, ...],
                    explain: bool, dump: str | None, dot_path: str | None, batch: int | None,
                    lib_path: str | None, no_cache: bool, threads: int | None,
                    device: str | None, shapes: tuple[str, ...]) -> None:
    """Compile MODEL through the pass pipeline for a backend."""
    import cnncompiler

    keep = []
    if dump and dump != "final":
        stage, _, pass_name = dump.partition(":")
        if stage != "after" or not pass_name:
            raise click.BadParameter(f"{dump!r}: use after:PASS or final", param_hint="--dump-ir")
        keep.append(pass_name)
    graph = _load(model, with_weights=True, batch=batch, input_shapes=_parse_shapes(shapes))
    options = _backend_options(threads, device)
    if no_cache:
        options["cache"] = False
    cm = cnncompiler.compile(graph, backend=backend, opt_level=opt_level,
                             disable_passes=disabled, keep_snapshots=keep, **options)
    chosen = cm.graph
    if keep:
        if keep[0] not in cm.passes.snapshots:
            ran = [r.name for r in cm.passes.records]
            raise click.BadParameter(f"pass {keep[0]!r} did not run; ran: {ran}",
                                     param_hint="--dump-ir")
        chosen = cm.passes.snapshots[keep[0]]
    if dump:
        click.echo(chosen.dump())
    if dot_path:
        chosen.to_dot(dot_path)
        click.echo(f"wrote {dot_path}")
    if explain:
        from cnncompiler.passes.memory import plan_memory

        click.echo(cm.explain())
        click.echo(f"kernels: {len(cm.source.nodes)} nodes in, {len(cm.graph.nodes)} kernels out")
        click.echo(plan_memory(cm.graph, batch=batch or 1).describe())
    lazy = any(v.type.symbols for v in cm.graph.inputs) and backend != "reference"
    click.echo(f"compiled {cm.graph.name} for {backend} at opt_level {opt_level} in "
               f"{cm.compile_seconds:.2f} s: {len(cm.graph.nodes)} kernels"
               + (" (symbolic batch: native code is generated per batch size on first run;"
                  " --batch N compiles it now)" if lazy else ""))
    if lib_path:
        files = cm.export(lib_path, batch=batch or 1)
        click.echo("wrote " + ", ".join(files.values()) + ("" if batch else " (batch 1)"))


def _parse_inputs(items: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use NAME=FILE.npy", param_hint="--input")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise click.BadParameter(f"cannot read {path!r}: {e}", param_hint="--input") from e
    return out


@main.command()
@click.argument("model")
@click.option("--backend", default="reference", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the random weights and the random input")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="feed an input from a .npy file instead of random data")
@click.option("--top", type=int, default=5, show_default=True, help="how many top values")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="save every output to this .npz file, keyed by output name")
@click.option("--profile", "with_profile", is_flag=True,
              help="per-kernel time, GFLOP/s and % of FMA peak (llvm, opencl)")
@_THREADS_OPTION
@_DEVICE_OPTION
@_SHAPE_OPTION
def run(model: str, backend: str, seed: int, batch: int, inputs: tuple[str, ...],
        top: int, output_path: str | None, shapes: tuple[str, ...],
        with_profile: bool, threads: int | None, device: str | None) -> None:
    """Compile MODEL (built-in name or .onnx) and run it on a random (or given) input."""
    import cnncompiler

    graph = _load(model, with_weights=True, batch=batch, seed=seed,
                  input_shapes=_parse_shapes(shapes))
    cm = cnncompiler.compile(graph, backend=backend, **_backend_options(threads, device))
    feeds = _parse_inputs(inputs)
    rng = np.random.default_rng(seed)
    for v in graph.inputs:
        if v.name not in feeds:
            shape = v.type.concrete(default=batch)
            feeds[v.name] = rng.standard_normal(shape).astype(v.type.dtype.numpy)
    start = time.perf_counter()
    result = cm(**feeds)
    elapsed = time.perf_counter() - start
    outs = result if isinstance(result, tuple) else (result,)
    click.echo(f"model {graph.name} on {backend}: compiled in {cm.compile_seconds:.2f} s, "
               f"ran in {elapsed * 1e3:.1f} ms")
    if with_profile:
        click.echo(str(cm.profile(**feeds)))
    if output_path:
        np.savez(output_path, **dict(zip(cm.output_names, outs)))
        click.echo(f"saved {len(outs)} output(s) to {output_path}")
    for name, y in zip(cm.output_names, outs):
        click.echo(f"output {name}: shape {list(y.shape)} dtype {y.dtype}")
        flat = y.reshape(y.shape[0], -1) if y.ndim > 1 else y.reshape(1, -1)
        for b, row in enumerate(flat):
            idx = np.argsort(row)[::-1][:top]
            tops = ", ".join(f"[{i}] {row[i]:.6g}" for i in idx)
            click.echo(f"  batch {b} top {len(idx)}: {tops}")


def _split(items: tuple[str, ...] | str, convert=str) -> list:
    """Comma-separated lists, also given as repeated arguments: ``a,b c`` -> [a, b, c]."""
    items = (items,) if isinstance(items, str) else items
    return [convert(p.strip()) for item in items for p in item.split(",") if p.strip()]


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        out = _split(value, int)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use a comma-separated list of integers") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: use positive integers, e.g. 1,8")
    return out


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--backends", default="llvm,onnxruntime", show_default=True,
              help="comma-separated cnncompiler backends and peers (onnxruntime, the baseline, "
                   "is always run; torch when installed)")
@click.option("--batch", "batches", default="1", show_default=True, callback=_int_list,
              help="comma-separated batch sizes")
@click.option("--threads", default="1", show_default=True, callback=_int_list,
              help="comma-separated thread counts (passed to backends that take them)")
@click.option("--repeat", type=click.IntRange(1), default=10, show_default=True,
              help="timed runs per backend and cell (fewer once --budget is spent)")
@click.option("--warmup", type=click.IntRange(1), default=2, show_default=True,
              help="untimed runs first")
@click.option("--budget", type=click.FloatRange(0), default=10.0, show_default=True,
              help="seconds of timed runs per backend and cell before stopping early "
                   "(after at least 3 runs)")
@click.option("--cell-limit", type=click.FloatRange(1), default=None,
              help="give up a backend whose cell (compile + runs) takes longer, in seconds")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the weights and the input")
@click.option("--tolerance", type=float, default=1e-3, show_default=True,
              help="relative error vs onnxruntime above which a row is flagged MISMATCH")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="write the rows and machine info as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="write a PNG bar chart of the medians (needs matplotlib)")
@click.option("--train", is_flag=True,
              help="time compiled training steps against torch eager instead (any zoo "
                   "model; --batch is the training batch, default 64 for lenet5 and 8 "
                   "otherwise, --repeat the timed steps, --shape x=C,H,W the input size)")
@_SHAPE_OPTION
def bench(models: tuple[str, ...], backends: str, batches: list[int], threads: list[int],
          repeat: int, warmup: int, budget: float, cell_limit: float | None, seed: int,
          tolerance: float, json_path: str | None, plot_path: str | None,
          shapes: tuple[str, ...], train: bool) -> None:
    """Benchmark MODELS (built-in names or .onnx files, comma-separated) against onnxruntime.

    Each backend runs in its own process (peak RSS is its own); the backends of one cell are
    timed interleaved, round by round. Columns: cold compile s, cached compile s (n/a without
    a compile cache), median and p90 latency, peak RSS, median / onnxruntime's median, GFLOP/s
    from the graph's FLOPs, status (MISMATCH when outputs differ from onnxruntime's). Exits 1
    when a row is flagged.
    """
    from cnncompiler import bench as harness

    model_list = _split(models)
    backend_list = _split(backends)
    if train:
        _bench_training(model_list, backend_list, batches, threads, repeat, json_path,
                        _parse_shapes(shapes))
        return
    harness.check_models(model_list)
    harness.resolve_backends(backend_list)  # unknown names fail before anything runs
    if plot_path:
        harness.check_plotting()
    config = harness.Config(models=model_list, backends=backend_list, batches=batches,
                            threads=threads, repeat=repeat, warmup=warmup, budget_s=budget,
                            cell_limit_s=cell_limit, seed=seed, tolerance=tolerance,
                            input_shapes=_parse_shapes(shapes))
    report = harness.run(config, log=click.echo)  # the table, a row per finished cell
    if json_path:
        harness.write_json(report, json_path)
        click.echo(f"wrote {json_path}")
    if plot_path:
        harness.plot(report, plot_path)
        click.echo(f"wrote {plot_path}")
    flagged = [r for r in report["rows"] if r["failed"]]
    if flagged:
        click.echo(f"{len(flagged)} row(s) flagged: " + "; ".join(
            f"{r['model']} {r['backend']} b{r['batch']} t{r['threads']}: {r['status']}"
            for r in flagged), err=True)
        sys.exit(1)


def _bench_training(models: list[str], backends: list[str], batches: list[int],
                    threads: list[int], steps: int, json_path: str | None,
                    shapes: dict[str, tuple[int, ...]]) -> None:
    """``cnnc bench --train``: compiled training steps of zoo models against torch eager.

    ``--shape x=C,H,W`` sets the input size (``x=N,C,H,W`` also sets the batch); without
    ``--batch`` (whose default 1 means "the model's default" here) LeNet-5 steps 64 examples
    and the others 8.
    """
    from cnncompiler import bench_train

    canonical = [m.lower().replace("-", "_") for m in models]
    unknown = [m for m, c in zip(models, canonical) if c not in bench_train.MODELS]
    if unknown:
        raise click.BadParameter(f"{unknown}: training is benchmarked on the zoo models "
                                 f"{', '.join(bench_train.MODELS)}", param_hint="MODELS")
    input_shape = None
    if shapes:
        (name, dims), *rest = shapes.items()
        if rest or name != "x" or len(dims) not in (3, 4):
            raise click.BadParameter(f"{shapes}: the zoo models take one input x; use "
                                     "x=C,H,W or x=N,C,H,W", param_hint="--shape")
        if len(dims) == 4:
            if batches not in ([1], [dims[0]]):
                raise click.BadParameter(f"x={','.join(map(str, dims))} says batch {dims[0]} "
                                         f"but --batch says {batches}", param_hint="--shape")
            batches, dims = [dims[0]], dims[1:]
        input_shape = dims
    peers = [b for b in backends if b not in ("onnxruntime", "torch")]
    rows = []
    for model in canonical:
        for batch in batches if batches != [1] else [None]:   # None: the model's default
            rows += bench_train.run(peers, threads, batch, steps, log=click.echo, model=model,
                                    input_shape=input_shape)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)
        click.echo(f"wrote {json_path}")


# ---------------------------------------------------------------------- train
_MODEL_ALIASES = {"lenet": "lenet5"}


def _fit_images(x: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """Images ``[N, C, h, w]`` made the model's ``(C, H, W)``: grey repeated over the
    channels, upsampled by the largest whole factor that fits (nearest neighbour), then
    zero-padded evenly; with a few words saying what was done."""
    c, height, width = shape
    _, cx, h, w = x.shape
    steps = []
    if cx != c:
        if cx != 1:
            raise click.UsageError(f"the data has {cx} channels, the model wants {c}")
        x = np.repeat(x, c, axis=1)
        steps.append(f"grey x{c}")
    if h > height or w > width:
        raise click.UsageError(f"the images are {h}x{w}, larger than the model's input "
                               f"{height}x{width}")
    k = min(height // h, width // w)
    if k > 1:
        x = np.repeat(np.repeat(x, k, axis=2), k, axis=3)
        h, w = h * k, w * k
        steps.append(f"upsample x{k}")
    top, left = (height - h) // 2, (width - w) // 2
    if h != height or w != width:
        x = np.pad(x, ((0, 0), (0, 0), (top, height - h - top), (left, width - w - left)))
        steps.append(f"pad {top}" if top == left == height - h - top == width - w - left
                     else f"pad to {height}x{width}")
    return np.ascontiguousarray(x, np.float32), ", ".join(steps) or "as is"


def _plot_training(report: dict, batch_losses: list[tuple[float, float]], path: str) -> None:
    """A PNG with the loss (per batch, and the epoch means) and the test accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in report["epochs"]]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if batch_losses:
        xs, ys = (np.array(v) for v in zip(*batch_losses))
        ax_loss.plot(xs, ys, lw=0.5, alpha=0.25, color="tab:blue", label="batch")
        window = len(ys) // 100
        if window > 1:   # a moving mean over 1% of the batches
            smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
            ax_loss.plot(xs[window - 1:], smooth, lw=1, color="tab:blue",
                         label=f"mean of {window} batches")
    ax_loss.plot(epochs, [e["loss"] for e in report["epochs"]], "o-", color="tab:blue",
                 label="epoch mean")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * e["accuracy"] for e in report["epochs"]], "o-",
                color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(epochs, default=1) + 0.1)
    opt = report["optimizer"]
    fig.suptitle(f"{report['model']} on {report['dataset']} ({report['backend']}, "
                 f"{opt['name']} lr {opt['lr']:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _train_epoch(trainer, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 rng: np.random.Generator, label: str, record) -> tuple[float, float, float, float]:
    """One epoch under a progress bar (running loss and examples/s, then the test accuracy);
    ``record(fraction of the epoch, batch loss)`` sees every batch. Returns (mean loss, test
    accuracy, training seconds, evaluation seconds)."""
    seen, total = 0, 0.0
    start = time.perf_counter()
    hidden = not (sys.stdout and sys.stdout.isatty())  # logs get the epoch lines only
    with click.progressbar(length=len(x), label=label, item_show_func=lambda s: s,
                           show_pos=True, hidden=hidden) as bar:
        def progress(n: int, loss: float) -> None:
            nonlocal seen, total
            seen += n
            total += loss * n
            record(seen / len(x), loss)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.update(n, f"loss {total / seen:.4f}  {rate:,.0f} ex/s")

        loss = trainer.fit_epoch(x, y, rng, progress=progress)
        seconds = time.perf_counter() - start
        bar.current_item = f"loss {loss:.4f}  {len(x) / seconds:,.0f} ex/s  evaluating"
        bar.render_progress()
        start = time.perf_counter()
        accuracy = trainer.evaluate(x_test, y_test)
        eval_seconds = time.perf_counter() - start
        bar.current_item = (f"loss {loss:.4f}  {len(x) / seconds:,.0f} ex/s  "
                            f"test acc {100 * accuracy:.2f}%")
        bar.render_progress()
    return loss, accuracy, seconds, eval_seconds


@main.command()
@click.argument("model")
@click.option("--dataset", type=click.Choice(list(DATASETS)), default="digits",
              show_default=True, help="offline data set (see cnncompiler.data)")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="folder with the four *-ubyte.gz files (fashion-mnist only; default "
                   "Debian's /usr/share/datasets/fashion-mnist)")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--backend", default="llvm", show_default=True)
@click.option("--optimizer", "opt_name", type=click.Choice(list(OPTIMIZERS)), default="sgd",
              show_default=True)
@click.option("--lr", type=float, default=None,
              help="learning rate [default: the optimizer's: 0.01, adam 0.001]")
@click.option("--momentum", type=float, default=None, help="SGD momentum [default: 0]")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum (sgd with --momentum)")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="L2 weight decay")
@click.option("--lr-step", type=click.IntRange(min=1), default=None, metavar="N",
              help="divide the learning rate by 10 every N epochs")
@click.option("--plateau", is_flag=True,
              help="divide the learning rate by 10 when the test accuracy has not improved "
                   "for 2 epochs")
@click.option("--augment", is_flag=True,
              help="each epoch: random crop (zero padding 2) and random horizontal flip "
                   "(the flip suits clothes, not digits)")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="standardise the images with the training set's mean and std")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the initial weights, the shuffling and the augmentation")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="train on the first N training examples only (quick runs)")
@click.option("--save", "save_path", type=click.Path(dir_okay=False),
              help="write the trained parameters and optimiser state (.npz)")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="export the trained model to ONNX (it expects the prepared input)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="write the configuration and per-epoch metrics as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="write a PNG of the loss and accuracy curves (needs matplotlib)")
@_THREADS_OPTION
@_DEVICE_OPTION
def train(model: str, dataset: str, data_dir: str | None, epochs: int, batch_size: int,
          backend: str, opt_name: str, lr: float | None, momentum: float | None,
          nesterov: bool, weight_decay: float, lr_step: int | None, plateau: bool,
          augment: bool, normalize: bool, seed: int, limit: int | None,
          save_path: str | None, onnx_path: str | None, json_path: str | None,
          plot_path: str | None, threads: int | None, device: str | None) -> None:
    """Train MODEL (a built-in name; ``lenet`` is LeNet-5) on an offline data set with
    compiled training steps, printing a progress bar and a line per epoch: mean training
    loss, test accuracy, training examples/s and the learning rate.

    The images are fitted to the model's input (upsampled by a whole factor, zero-padded,
    grey repeated over colour channels) and standardised (--no-normalize keeps [0, 1]);
    an exported model expects its input prepared the same way (the JSON records how).
    """
    import dataclasses

    import cnncompiler
    from cnncompiler import data, optim, zoo
    from cnncompiler.runtime.registry import get_backend

    name = _MODEL_ALIASES.get(model.lower(), model.lower().replace("-", "_"))
    if name not in zoo.names():
        raise click.UsageError(f"unknown model {model!r}: give a built-in name "
                               f"({', '.join(['lenet', *zoo.names()])})")
    if data_dir is not None and dataset != "fashion-mnist":
        raise click.BadParameter("only fashion-mnist reads a folder", param_hint="--data-dir")
    kwargs: dict = {"weight_decay": weight_decay}
    if lr is not None:
        kwargs["lr"] = lr
    if momentum is not None or nesterov:
        if opt_name != "sgd":
            raise click.UsageError("--momentum and --nesterov go with --optimizer sgd")
        kwargs.update(momentum=momentum or 0.0, nesterov=nesterov)
    optimizer = OPTIMIZERS[opt_name](**kwargs)
    get_backend(backend)   # an unknown or unavailable one fails before the data loads
    opt_config = {"name": opt_name, **dataclasses.asdict(optimizer)}
    if plot_path:
        from cnncompiler.bench import check_plotting

        check_plotting()

    start = time.perf_counter()
    try:
        loader = DATASETS[dataset]
        xtr, ytr, xte, yte = loader(data_dir) if data_dir is not None else loader()
    except data.DatasetUnavailableError as e:
        raise click.ClickException(str(e)) from None
    if limit is not None:
        xtr, ytr = xtr[:limit], ytr[:limit]
    num_classes = int(max(ytr.max(), yte.max())) + 1
    net = zoo.get(name, num_classes=num_classes)
    shape = tuple(net.input_shape[1:])
    source = list(xtr.shape[1:])
    xtr, how = _fit_images(xtr, shape)
    xte, _ = _fit_images(xte, shape)
    mean, std = (float(xtr.mean()), float(xtr.std()) or 1.0) if normalize else (0.0, 1.0)
    if normalize:
        xtr = (xtr - np.float32(mean)) / np.float32(std)
        xte = (xte - np.float32(mean)) / np.float32(std)
    background = (np.float32(0) - np.float32(mean)) / np.float32(std)  # a zero pixel, now
    click.echo(f"{dataset}: {len(xtr):,} training and {len(xte):,} test images "
               f"{'x'.join(map(str, source))} -> {'x'.join(map(str, shape))} ({how}), "
               f"{num_classes} classes, loaded in {time.perf_counter() - start:.1f} s")

    trainer = cnncompiler.compile_training(
        net.init_parameters(seed), optimizer=optimizer, backend=backend,
        batch_size=batch_size, seed=seed, **_backend_options(threads, device))
    hyper = ", ".join(f"{k} {v:g}" for k, v in opt_config.items()
                      if isinstance(v, float) and (v or k == "lr"))
    click.echo(f"training {name} ({sum(p.size for p in trainer.params.values()):,} "
               f"parameters) with {opt_name} ({hyper}{', nesterov' if nesterov else ''}), "
               f"batch {batch_size}, on {backend}")
    start = time.perf_counter()
    # the step graph is compiled once per batch size: the full one and the last partial one
    trainer.prepare(sorted({min(batch_size, len(xtr)), len(xtr) % batch_size} - {0}))
    trainer.predict(xte[:256])
    compile_seconds = time.perf_counter() - start
    click.echo(f"compiled the training step in {compile_seconds:.1f} s")

    schedules = ([optim.StepLR(optimizer, lr_step)] if lr_step else []) + \
        ([optim.ReduceLROnPlateau(optimizer, mode="max")] if plateau else [])
    rng = np.random.default_rng(seed)
    report: dict = {
        "model": name, "dataset": dataset, "backend": backend, "batch_size": batch_size,
        "train_examples": len(xtr), "test_examples": len(xte), "num_classes": num_classes,
        "input": {"data": source, "model": list(shape), "prepared": how},
        "normalize": {"mean": mean, "std": std} if normalize else None,
        "optimizer": opt_config,
        "schedule": {"lr_step": lr_step, "plateau": plateau},
        "augment": augment, "seed": seed, "compile_seconds": compile_seconds, "epochs": []}
    batch_losses: list[tuple[float, float]] = []
    for epoch in range(1, epochs + 1):
        x = xtr
        if augment:
            # shift the background to 0, which is what the crop pads with
            x = data.horizontal_flip(data.random_crop(xtr - background, 2, rng), rng) \
                + background
        epoch_lr = optimizer.lr
        loss, accuracy, seconds, eval_seconds = _train_epoch(
            trainer, x, ytr, xte, yte, rng, f"epoch {epoch}/{epochs}",
            lambda at, value, e=epoch: batch_losses.append((e - 1 + at, value)))
        speed = len(x) / seconds
        click.echo(f"epoch {epoch}/{epochs}: loss {loss:.4f}, test accuracy "
                   f"{100 * accuracy:.2f}%, {speed:,.0f} examples/s ({seconds:.1f} s), "
                   f"lr {epoch_lr:g}")
        report["epochs"].append({"epoch": epoch, "loss": loss, "accuracy": accuracy,
                                 "examples_per_s": speed, "lr": epoch_lr,
                                 "seconds": seconds, "eval_seconds": eval_seconds})
        for schedule in schedules:
            schedule.step(accuracy)

    report["final_accuracy"] = report["epochs"][-1]["accuracy"]
    if save_path:
        trainer.save(save_path)
        click.echo(f"wrote {save_path}")
    if onnx_path:
        from cnncompiler.frontends.onnx import save

        save(trainer.model, onnx_path)
        click.echo(f"wrote {onnx_path}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        click.echo(f"wrote {json_path}")
    if plot_path:
        _plot_training(report, batch_losses, plot_path)
        click.echo(f"wrote {plot_path}")


if __name__ == "__main__":
    main()
