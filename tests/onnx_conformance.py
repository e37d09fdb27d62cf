"""The ONNX backend conformance suite: ONNX's own node test cases, through our importer and a
backend, with ``onnx.backend.test.BackendTest`` as the harness.

The onnx package generates its node test cases (one small model each, with inputs and the
expected outputs of its reference implementation) offline. This module

- adapts a cnncompiler backend to ``onnx.backend.base.Backend`` (``make_onnx_backend``);
- derives the candidate cases from our op registry and the importer's converters: each op
  maps to test-name prefixes (``MaxPool`` -> ``test_maxpool``), a case belongs to the op with
  the longest matching prefix, and counts when its model really uses that op (so
  ``test_less_equal`` is not a ``Less`` case) or is an ``_expanded`` variant (the op's
  function body inlined) of such a case. The ops we support are our registry's, the
  importer's converters' and the ONNX functions, which the importer expands through their
  bodies (GroupNormalization, Shrink, ...): a case of such an op counts when the body
  expands into ops we convert (``importer.unsupported_ops``), and is dropped otherwise (an
  Attention whose body needs ops we lack is no case of ours); an ``_expanded`` case of
  another op we lack whose body uses only our ops counts too, as a "composite" of that op;
- removes the cases out of scope: ones whose model uses an op or element type we do not have
  (found from the model itself) and the explicit ``EXCLUDE`` list, each with its reason;
- builds ``BackendTest(backend, __name__)`` with ``include`` of the allowlist and ``exclude``
  of the excluded cases.

On every backend, every allowlisted case must pass, with two exceptions:

- *unsupported* on that backend: its model has nodes the backend's ``supports`` rejects
  (``compile`` says so up front: "backend 'llvm' cannot compile N node(s)"). Such a case is
  neither a pass nor a failure: it is skipped ("unsupported on llvm") and counted apart.
  Any other error, an ``UnsupportedError`` raised later included, is a failure;
- a *known failure*: listed in ``KNOWN_FAILURES`` for that backend with the bug it shows,
  until the bug is fixed (it then runs as an expected failure; one that passes must go).

``python tests/onnx_conformance.py --docs docs/onnx_coverage.md`` runs every allowlisted case
on every available backend and writes the coverage table.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import time
import unittest
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from helpers import rejected_nodes
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

import cnncompiler
from cnncompiler.errors import UnsupportedError
from cnncompiler.frontends.onnx import load
from cnncompiler.frontends.onnx.converters import CONVERTERS
from cnncompiler.frontends.onnx.functions import schema_function_ops
from cnncompiler.frontends.onnx.importer import unsupported_ops
from cnncompiler.frontends.onnx.reader import MIN_OPSET
from cnncompiler.ops import all_ops

# ------------------------------------------------------------------------ backend adapter
# The node tests feed every operand as a graph input, the shape-like ones too. Our importer
# takes these operands (by ONNX op: input slots) at compile time, as attributes; the rep binds
# them to the test's values as initializers and compiles once per distinct set of values.
STATIC_OPERANDS: dict[str, tuple[int, ...]] = {
    "CenterCropPad": (1,),           # shape (an ONNX function: pads and slices by it)
    "Clip": (1, 2),                  # min, max
    "ConstantOfShape": (0,),         # shape
    "Dropout": (1, 2),               # ratio, training_mode
    "Expand": (1,),                  # shape
    "Pad": (1, 2, 3),                # pads, constant_value, axes
    "Reshape": (1,),                 # shape
    "Range": (0, 1, 2),              # start, limit, delta
    "Resize": (1, 2, 3),             # roi, scales, sizes
    "Slice": (1, 2, 3, 4),           # starts, ends, axes, steps
    "Split": (1,),                   # split
    "Squeeze": (1,),                 # axes
    "Tile": (1,),                    # repeats
    "Unsqueeze": (1,),               # axes
    "Upsample": (1,),                # scales
    **{op: (1,) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                           "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
                           "ReduceSumSquare")},  # axes
}


def static_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that feed a compile-time operand slot."""
    graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    found: list[str] = []
    for node in model.graph.node:
        for slot in STATIC_OPERANDS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot] in graph_inputs \
                    and node.input[slot] not in found:
                found.append(node.input[slot])
    return found


def bind_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the named graph inputs turned into initializers."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    kept = [i for i in bound.graph.input if i.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    bound.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name)
                                   for name, v in values.items())
    return bound


class CnnCompilerRep(BackendRep):
    """One ONNX model compiled for one backend; ``run`` takes and returns ONNX order."""

    def __init__(self, model: onnx.ModelProto, backend: str):
        self.model = model
        self.backend = backend
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        self.static = static_inputs(model)
        self._compiled: dict[tuple, cnncompiler.CompiledModel] = {}
        if not self.static:   # import errors surface in prepare
            self._compiled[()] = self._compile(model)

    def _compile(self, model: onnx.ModelProto) -> cnncompiler.CompiledModel:
        return cnncompiler.compile(load(model), backend=self.backend)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) != len(self.input_names):
                raise ValueError(f"expected {len(self.input_names)} inputs "
                                 f"({self.input_names}), got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        bound = {name: feeds.pop(name) for name in self.static}
        key = tuple((name, a.dtype.str, a.shape, a.tobytes()) for name, a in bound.items())
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(bind_inputs(self.model, bound))
        outputs = compiled(**feeds)
        return outputs if isinstance(outputs, tuple) else (outputs,)


@functools.cache
def make_onnx_backend(backend_name: str) -> type[Backend]:
    """An ``onnx.backend.base.Backend`` that imports with our importer and compiles for
    ``backend_name``."""

    class CnnCompilerBackend(Backend):
        name = backend_name

        @classmethod
        def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any
                    ) -> CnnCompilerRep:
            super().prepare(model, device, **kwargs)
            return CnnCompilerRep(model, backend_name)

        @classmethod
        def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                      **kwargs: Any) -> tuple[np.ndarray, ...]:
            return cls.prepare(model, device, **kwargs).run(inputs)

        @classmethod
        def supports_device(cls, device: str) -> bool:
            return device == "CPU"

    CnnCompilerBackend.__name__ = CnnCompilerBackend.__qualname__ = \
        f"CnnCompilerBackend_{backend_name}"
    return CnnCompilerBackend


# ------------------------------------------------------------------- which cases are ours
# op -> test-name prefixes where the lower-case op name is not it (Reduce* are snake case)
PREFIXES: dict[str, tuple[str, ...]] = {
    "BatchNormalization": ("test_batchnorm",),
    "Conv": ("test_conv", "test_basic_conv"),
    "Dropout": ("test_dropout", "test_training_dropout"),
    "GreaterOrEqual": ("test_greater_equal",),
    "InstanceNormalization": ("test_instancenorm",),
    "LessOrEqual": ("test_less_equal",),
    "MeanVarianceNormalization": ("test_mvn",),
    "RMSNormalization": ("test_rms_normalization",),
    "Pad": ("test_pad", "test_constant_pad", "test_edge_pad", "test_reflect_pad",
            "test_wrap_pad"),
}

# Cases out of scope, by regex on the case name, with the reason. Cases whose model uses an op
# or an element type we lack are found from the model and need no entry here.
EXCLUDE: list[tuple[str, str]] = [
    # we compile 2-D CNNs: 1-D/3-D windows raise UnsupportedError by design
    (r"^test_(averagepool|maxpool|convtranspose)_(1d|3d)", "1-D/3-D window, 2-D only"),
    (r"^test_averagepool_3d_dilations", "1-D/3-D window, 2-D only"),
    (r"^test_maxpool_3d", "1-D/3-D window, 2-D only"),
    # training-mode statistics and masks are not inference
    (r"^test_batchnorm_.*training_mode", "training-mode BatchNormalization"),
    (r"^test_training_dropout", "training-mode Dropout"),
    # Resize features we do not implement
    (r"^test_resize_.*cubic", "cubic Resize"),
    (r"^test_resize_tf_crop_and_resize", "Resize coordinate mode tf_crop_and_resize"),
    (r"^test_resize_.*antialias", "Resize antialias"),
    (r"^test_resize_.*not_(larger|smaller)", "Resize keep_aspect_ratio_policy"),
    # other features we do not implement
    (r"^test_averagepool_2d_dilations$", "dilated AveragePool (opset 19)"),
    (r"^test_maxpool_with_argmax", "MaxPool's Indices output"),
    # ONNX functions (bodies expanded into ours) and their _expanded cases
    (r"^test_causal_conv_with_state", "1-D/3-D window, 2-D only"),
    (r"^test_center_crop_pad_.*_expanded$", "Pad's pads computed at run time from a graph "
     "input"),
    (r"^test_rotary_embedding(_3d_input|_interleaved|_no_position_ids|_no_position_ids_"
     r"interleaved)?(_expanded)?$", "empty (zero-size) tensors: a Split with an empty part"),
]

# Allowlisted cases that fail on one backend because of a known bug, by backend: case name ->
# the bug (where it is, what is wrong). They run as expected failures, strictly: one that
# passes must be removed from here. A bug, never a scope decision (those go in EXCLUDE, which
# holds for every backend); an op a backend lacks needs no entry either (its ``supports``
# rejects it, and the case is reported as unsupported there).
KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "reference": {},
    "llvm": {},
}

# element types our importer takes: of graph inputs and outputs, and (widening int32) of
# initializers and constants
SUPPORTED_ELEM_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64,
                        onnx.TensorProto.BOOL}
CONSTANT_ELEM_TYPES = SUPPORTED_ELEM_TYPES | {onnx.TensorProto.INT32}
EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


def supported_ops() -> set[str]:
    """Every ONNX op type the importer may accept: our op registry, its own converters, and
    the ONNX functions (expanded through their bodies where these use only ops we convert:
    ``scope_problem`` tells per model)."""
    return set(all_ops()) | set(CONVERTERS) | schema_function_ops()


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def op_prefixes(op: str) -> tuple[str, ...]:
    if op in PREFIXES:
        return PREFIXES[op]
    if op.startswith("Reduce"):
        return ("test_reduce_" + snake(op[6:]),)
    return tuple(dict.fromkeys(("test_" + op.lower(), "test_" + snake(op))))


@dataclass
class Case:
    name: str           # ONNX node test name, without the device suffix
    op: str             # the op it tests
    excluded: str = ""  # why it is out of scope ("" when allowlisted)


@functools.lru_cache(maxsize=1)
def node_tests() -> dict[str, Any]:
    """ONNX's node test cases by name (``.model``, ``.data_sets``), generated by the onnx
    package offline."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {t.name: t for t in load_model_tests(kind="node")}


def _elem_types(model: onnx.ModelProto) -> Iterable[tuple[int, bool]]:
    """(element type, whether it is a constant) of every typed thing the model declares."""
    g = model.graph
    static = set(static_inputs(model))
    for vi in [*g.input, *g.output]:
        t = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else -1
        yield t, vi.name in static
    for t in g.initializer:
        yield t.data_type, True
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t.data_type, True
            elif node.op_type == "Cast" and a.name == "to":
                yield a.i, False


def _size(a: Any) -> int | None:
    if isinstance(a, onnx.TensorProto):
        return math.prod(a.dims)
    return a.size if isinstance(a, np.ndarray) else None


LACKS = "uses ops we lack: "


def scope_problem(case: Any, ours: set[str]) -> str:
    """Why a node test is out of scope, from what it contains: ops, opset or element types we
    lack, or empty tensors."""
    model = case.model
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        return f"opset {opset} model (we import opset >= {MIN_OPSET})"
    direct = set(all_ops()) | set(CONVERTERS)
    if any(n.op_type not in direct or n.domain not in ("", "ai.onnx") for n in model.graph.node):
        missing = unsupported_ops(model)  # functions expand, unless their bodies use these
        if missing:
            return LACKS + "; ".join(missing)
    bad = sorted({"non-tensor" if t < 0 else onnx.TensorProto.DataType.Name(t)
                  for t, constant in _elem_types(model)
                  if t not in (CONSTANT_ELEM_TYPES if constant else SUPPORTED_ELEM_TYPES)})
    if bad:
        return "element type " + ", ".join(bad)
    initializers = {t.name for t in model.graph.initializer}
    static = set(static_inputs(model))
    names = [i.name for i in model.graph.input if i.name not in initializers]
    for inputs, outputs in case.data_sets:  # an empty static operand (axes=[]) is fine
        data = [a for name, a in zip(names, inputs) if name not in static]
        if any(_size(a) == 0 for a in [*data, *outputs]):
            return "empty (zero-size) tensors"
    return ""


@functools.lru_cache(maxsize=1)
def cases() -> tuple[Case, ...]:
    """Every ONNX node test of an op we support, allowlisted or excluded with its reason."""
    ours = supported_ops()
    prefix_op = {p: op for op in ours for p in op_prefixes(op)}
    by_length = sorted(prefix_op, key=len, reverse=True)
    tests = node_tests()

    def owner(name: str) -> str | None:
        base = EXPANDED.sub("", name)
        for p in by_length:
            if base == p or base.startswith(p + "_"):
                op = prefix_op[p]
                case = tests.get(base)
                return op if case is not None and any(
                    n.op_type == op for n in case.model.graph.node) else None
        return None

    def composite(name: str) -> str | None:
        """The op of an ``_expanded`` case of an op we lack whose body uses only ours."""
        base = tests.get(EXPANDED.sub("", name))
        if name == EXPANDED.sub("", name) or base is None or len(base.model.graph.node) != 1:
            return None
        if not {n.op_type for n in tests[name].model.graph.node} <= ours:
            return None
        return base.model.graph.node[0].op_type

    direct = set(all_ops()) | set(CONVERTERS)
    out = []
    for name in sorted(tests):
        op = owner(name) or composite(name)
        if op is None:
            continue
        reason = next((why for pattern, why in EXCLUDE if re.search(pattern, name)), "")
        if not reason:
            reason = scope_problem(tests[name], ours)
            if op not in direct and reason.startswith(LACKS):
                continue  # an ONNX function whose body needs ops we lack: not one of ours
        out.append(Case(name, op, reason))
    return tuple(out)


def allowlist() -> list[str]:
    return [c.name for c in cases() if not c.excluded]


def _names_regex(names: Sequence[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")_cpu$"


def backend_test(backend_name: str, module: str = __name__):
    """``BackendTest`` for ``backend_name`` with our allowlist included, exclusions excluded."""
    import onnx.backend.test

    node_tests()  # generate the cases once (BackendTest reuses the loaded modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = onnx.backend.test.BackendTest(make_onnx_backend(backend_name), module)
    bt.include(_names_regex(allowlist()))
    excluded = [c.name for c in cases() if c.excluded]
    if excluded:
        bt.exclude(_names_regex(excluded))
    return bt


class UnsupportedOnBackend(unittest.SkipTest):
    """A case whose model has nodes the backend's ``supports`` rejects: skipped as
    "unsupported on <backend>"; ``reasons`` are the backend's distinct reasons."""

    def __init__(self, backend: str, reasons: list[str]):
        super().__init__(f"unsupported on {backend}")
        self.backend = backend
        self.reasons = reasons


def node_test_methods(bt) -> dict[str, Any]:
    """Allowlisted case name -> a callable running it: raises ``UnsupportedOnBackend`` where
    the backend rejects nodes of the case's model, any other exception on failure."""
    cls = bt.test_cases["OnnxBackendNodeModelTest"]
    backend_name = bt.backend.name
    out = {}
    for name in allowlist():
        method = f"{name}_cpu"
        if getattr(getattr(cls, method), "__unittest_skip__", False):
            raise AssertionError(f"{method} is allowlisted but BackendTest skips it")
        out[name] = functools.partial(_run_one, cls, method, backend_name)
    return out


def _run_one(cls: type[unittest.TestCase], method: str, backend_name: str) -> None:
    try:
        getattr(cls(method), method)()
    except UnsupportedError as e:
        reasons = rejected_nodes(e)
        if reasons is None:
            raise
        raise UnsupportedOnBackend(backend_name, reasons) from e


# ------------------------------------------------------------------------ coverage report
PASSED, UNSUPPORTED, KNOWN_FAILURE, FAILED = "passed", "unsupported", "known failures", "failed"


@dataclass(frozen=True)
class Outcome:
    status: str       # PASSED, UNSUPPORTED, KNOWN_FAILURE or FAILED
    detail: str = ""  # the backend's reasons (unsupported), the error's first line (failures)


def run_case(fn: Any, backend_name: str, name: str) -> Outcome:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except UnsupportedOnBackend as e:
        return Outcome(UNSUPPORTED, "; ".join(e.reasons))
    except Exception as e:  # a failing case is reported, not raised
        lines = str(e).strip().splitlines() or [""]
        why = f"{type(e).__name__}: {lines[0][:200]}"
        known = KNOWN_FAILURES.get(backend_name, {}).get(name)
        return Outcome(KNOWN_FAILURE, f"{known} ({why})") if known else Outcome(FAILED, why)
    return Outcome(PASSED)


def run_all(backend_name: str) -> dict[str, Outcome]:
    """Every allowlisted case on ``backend_name``: case name -> its outcome."""
    return {name: run_case(fn, backend_name, name)
            for name, fn in node_test_methods(backend_test(backend_name)).items()}


#: ops the importer composes of ours in a converter, by the family they belong to
COMPOSED_FAMILY = {"InstanceNormalization": "normalization", "LayerNormalization": "normalization",
                   "And": "math_ops", "Or": "math_ops", "Xor": "math_ops"}


def op_family(op: str) -> str:
    """The ops module defining ``op`` ("conv", "pooling", ...); for an op we have no op for,
    the family of ``COMPOSED_FAMILY``, "importer" for the other ops only the importer handles
    (evaluated at import time), "function" for an ONNX function the importer expands through
    its body, "composite" for another op whose ``_expanded`` cases use only ours."""
    opdef = all_ops().get(op)
    if opdef is None:
        if op in COMPOSED_FAMILY:
            return COMPOSED_FAMILY[op]
        if op in CONVERTERS:
            return "importer"
        return "function" if op in schema_function_ops() else "composite"
    return opdef.module.rpartition(".")[2] or "?"


def coverage_markdown(results: dict[str, dict[str, Outcome]]) -> str:
    backends = list(results)
    per_op: dict[str, list[Case]] = defaultdict(list)
    for c in cases():
        per_op[c.op].append(c)
    ops = sorted(per_op, key=lambda op: (op_family(op), op))
    # (backend, status) columns: "passed" always; the others where a backend has any
    columns = [(b, status) for b in backends for status in (PASSED, UNSUPPORTED, KNOWN_FAILURE)
               if status == PASSED or any(o.status == status for o in results[b].values())]

    def row(label: str, group: list[Case], bold: bool = False) -> str:
        listed = [c.name for c in group if not c.excluded]
        cells = [str(len(group)), str(len(listed))]
        cells += [str(sum(1 for n in listed if results[b][n].status == status))
                  for b, status in columns]
        if bold:
            label, cells = f"**{label}**", [f"**{x}**" for x in cells]
        return f"| {label} | " + " | ".join(cells) + " |"

    every = list(cases())
    head = " | ".join(f"{b} {status}" for b, status in columns)
    rule = "|" + " --- |" * (3 + len(columns))
    lines = ["# ONNX backend conformance coverage", "",
             "Generated by `python tests/onnx_conformance.py --docs docs/onnx_coverage.md` from "
             f"the node test cases of onnx {onnx.__version__}; `tests/test_onnx_conformance.py` "
             "runs the allowlisted cases on every backend. A case belongs to an op we support "
             "(our op registry, the importer's converters, and the ONNX functions the importer "
             "expands through their bodies into ops we convert: family *function*) by its name "
             "and its model; it is "
             "allowlisted unless excluded below. On each backend every allowlisted case must "
             "pass, unless it is *unsupported* there (its model has nodes the backend's "
             "`supports` rejects, which `compile` reports up front: neither a pass nor a "
             "failure) or a *known failure* (a bug listed in `KNOWN_FAILURES`).", "",
             "## By op family", "", f"| family | cases | allowlisted | {head} |", rule]
    for family in sorted({op_family(op) for op in ops}):
        lines.append(row(family, [c for c in every if op_family(c.op) == family]))
    lines += [row("total", every, bold=True), "",
              "## By op", "", f"| op (family) | cases | allowlisted | {head} |", rule]
    lines += [row(f"{op} ({op_family(op)})", per_op[op]) for op in ops]
    lines.append(row("total", every, bold=True))
    for b in backends:
        why_count: dict[str, int] = defaultdict(int)
        for o in results[b].values():
            if o.status == UNSUPPORTED:
                for why in o.detail.split("; "):
                    why_count[why] += 1
        if why_count:
            lines += ["", f"## Unsupported on {b}", "",
                      f"Why {b}'s `supports` rejects the unsupported cases (a case may have "
                      "several reasons).", "", "| reason | cases |", "| --- | --- |"]
            lines += [f"| {why.replace('|', '/')} | {n} |"
                      for why, n in sorted(why_count.items(), key=lambda x: (-x[1], x[0]))]
    for title, status in (("Known failures", KNOWN_FAILURE),
                          ("Failing allowlisted cases", FAILED)):
        found = [(b, name, o.detail) for b in backends for name, o in results[b].items()
                 if o.status == status]
        if found:
            lines += ["", f"## {title}", "", "| backend | case | error |", "| --- | --- | --- |"]
            lines += [f"| {b} | `{name}` | {why.replace('|', '/')} |" for b, name, why in found]
    lines += ["", "## Excluded cases", "", "| case | op | reason |", "| --- | --- | --- |"]
    lines += [f"| `{c.name}` | {c.op} | {c.excluded} |" for c in every if c.excluded]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", metavar="PATH", help="write the markdown coverage table")
    parser.add_argument("--backend", action="append",
                        help="backend(s) to run (default: every available one)")
    args = parser.parse_args(argv)
    from cnncompiler.backends import available

    names = args.backend or sorted((name for name, s in available().items() if s.ok),
                                   key=lambda name: (name != "reference", name))
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = run_all(name)
        counts = {status: sum(1 for o in results[name].values() if o.status == status)
                  for status in (PASSED, UNSUPPORTED, KNOWN_FAILURE, FAILED)}
        print(f"{name}: " + ", ".join(f"{n} {status}" for status, n in counts.items())
              + f" of {len(results[name])} in {time.perf_counter() - start:.1f}s")
        for k, o in results[name].items():
            if o.status == FAILED:
                print(f"  FAIL {k}: {o.detail}")
        for k in KNOWN_FAILURES.get(name, {}):
            if results[name].get(k, Outcome(FAILED)).status == PASSED:
                print(f"  {k} passes: remove it from KNOWN_FAILURES[{name!r}]")
    text = coverage_markdown(results)
    if args.docs:
        with open(args.docs, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
