"""``cnnc``: the command-line interface (click)."""

from __future__ import annotations

import json
import sys
import time

import click
import numpy as np

from cnncompiler.errors import CnnCompilerError


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
@_SHAPE_OPTION
def bench(models: tuple[str, ...], backends: str, batches: list[int], threads: list[int],
          repeat: int, warmup: int, budget: float, cell_limit: float | None, seed: int,
          tolerance: float, json_path: str | None, plot_path: str | None,
          shapes: tuple[str, ...]) -> None:
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


if __name__ == "__main__":
    main()
