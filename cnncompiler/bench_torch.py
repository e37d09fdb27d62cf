"""A torch mirror of any Graph: the peer that ``cnnc bench --train`` times and tests check
training steps against, for benchmarks and tests only (torch is never on the compiled path
and is imported lazily).

:func:`torch_mirror` returns an ``nn.Module`` that walks the graph's nodes in topological
order and runs each with ``torch.nn.functional``. Trainable parameters are ``nn.Parameter``
leaves (so ``torch.optim`` steps them) and BatchNormalization running statistics are buffers,
all copied from the graph's stored weights. In train mode (``module.train()``)
BatchNormalization uses the batch's statistics and updates the running ones with ONNX's
momentum convention (torch momentum = 1 - ONNX momentum), and Dropout multiplies by the mask
the caller passes (our trainer's, so both sides drop the same units) or draws its own.

>>> net = torch_mirror(zoo.get("lenet5").to_graph(("N", 1, 32, 32)))
>>> net.train(); loss = F.cross_entropy(net(x), y); loss.backward()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncompiler.errors import ModelError, UnsupportedError
from cnncompiler.ir.graph import Graph, Node, ValueKind
from cnncompiler.ops.windows import end_padding_for

if TYPE_CHECKING:
    import torch
    from torch import nn


def running_stat_names(graph: Graph) -> list[str]:
    """The stored running means and variances of BatchNormalization nodes (buffers in the
    mirror, not parameters, as the trainer keeps them)."""
    return [v.name for n in graph.nodes if n.op == "BatchNormalization"
            for v in n.inputs[3:5] if v is not None and v.is_stored]


def dropout_mask_inputs(graph: Graph) -> dict[str, str]:
    """Dropout node name -> the name of the mask input the trainer gives it in train mode
    (``cnncompiler.training.trainer.train_mode_graph``'s naming), so a caller can pass the
    trainer's masks to the mirror."""
    out: dict[str, str] = {}
    for node in graph.nodes:
        if node.op == "Dropout" and node.attrs["ratio"] > 0:
            name, i = f"{node.name}.mask", 0
            while name in graph.values:
                i += 1
                name = f"{node.name}.mask{i}"
            out[node.name] = name
    return out


def torch_mirror(graph: Graph) -> nn.Module:
    """An ``nn.Module`` computing ``graph`` with torch ops, weights copied from the graph.

    Call it with the graph's inputs (tensors, in graph-input order) and optionally
    ``masks={mask input name: tensor}`` for train-mode Dropout; it returns one tensor for a
    one-output graph, else a tuple. Raises UnsupportedError naming the first node whose op
    it cannot run, and ModelError for a graph without weights.
    """
    return _module_class()(graph)


@functools.cache
def _module_class() -> type:
    """The nn.Module subclass, defined on first use so importing this module needs no torch."""
    import torch
    from torch import nn

    class GraphMirror(nn.Module):
        def __init__(self, graph: Graph):
            super().__init__()
            if not graph.has_data:
                raise ModelError(f"graph {graph.name!r} has no weights; call "
                                 "init_parameters() or to_graph(with_weights=True)")
            for node in graph.nodes:
                if node.op not in _OPS:
                    raise UnsupportedError(
                        f"node '{node.name}' ({node.op}): the torch mirror has no rule for op "
                        f"{node.op}; it runs {', '.join(sorted(_OPS))}")
                for layout in (node.attrs.get("layout"), node.attrs.get("x_layout")):
                    if layout not in (None, "NCHW"):
                        raise UnsupportedError(f"node '{node.name}' ({node.op}): the torch "
                                               f"mirror runs NCHW graphs, not layout {layout}")
            self.graph = graph
            stats = set(running_stat_names(graph))
            self.param_names = sorted(v.name for v in graph.values.values()
                                      if v.kind is ValueKind.PARAM and v.name not in stats)
            self.params = nn.ParameterList(
                nn.Parameter(torch.tensor(np.array(graph.data[n]))) for n in self.param_names)
            # running statistics and constants: buffers, under attribute names without dots
            self.buffer_names = sorted(v.name for v in graph.values.values()
                                       if v.is_stored and v.name not in self.param_names)
            for i, n in enumerate(self.buffer_names):
                self.register_buffer(f"b{i}", torch.tensor(np.array(graph.data[n])))
            self.mask_inputs = dropout_mask_inputs(graph)

        def stored(self) -> dict[str, torch.Tensor]:
            """Every stored tensor (parameters, running statistics, constants) by our name."""
            out = dict(zip(self.param_names, self.params))
            out.update({n: getattr(self, f"b{i}") for i, n in enumerate(self.buffer_names)})
            return out

        def numpy_state(self) -> dict[str, np.ndarray]:
            """Parameters and buffers as numpy arrays under our names (to compare with a
            trainer's ``state_dict()``)."""
            return {n: t.detach().cpu().numpy().copy() for n, t in self.stored().items()}

        def forward(self, *inputs: torch.Tensor,
                    masks: Mapping[str, torch.Tensor] | None = None):
            graph = self.graph
            if len(inputs) != len(graph.inputs):
                raise ModelError(f"graph {graph.name!r} takes {len(graph.inputs)} input(s), "
                                 f"got {len(inputs)}")
            env: dict[str, Any] = self.stored()
            env.update({v.name: t for v, t in zip(graph.inputs, inputs)})
            ctx = _Context(self.training, masks or {}, self.mask_inputs)
            for node in graph.nodes:
                args = [None if v is None else env[v.name] for v in node.inputs]
                try:
                    result = _OPS[node.op](node, args, ctx)
                except (UnsupportedError, ModelError):
                    raise
                except Exception as e:   # name the node, as the reference backend does
                    raise UnsupportedError(f"node '{node.name}' ({node.op}) failed in the torch "
                                           f"mirror: {type(e).__name__}: {e}") from e
                results = result if isinstance(result, (tuple, list)) else (result,)
                for v, r in zip(node.outputs, results):
                    env[v.name] = r
            outs = tuple(env[v.name] for v in graph.outputs)
            return outs[0] if len(outs) == 1 else outs

    return GraphMirror


class _Context:
    """What a node's rule needs besides its inputs: train mode and the Dropout masks."""

    def __init__(self, training: bool, masks: Mapping[str, Any], mask_inputs: dict[str, str]):
        self.training, self.masks, self.mask_inputs = training, masks, mask_inputs


# --------------------------------------------------------------------------- op rules
_Rule = Callable[[Node, list, _Context], Any]
_OPS: dict[str, _Rule] = {}


def _rule(*names: str) -> Callable[[_Rule], _Rule]:
    def register(fn: _Rule) -> _Rule:
        for name in names:
            _OPS[name] = fn
        return fn
    return register


def _f():
    import torch.nn.functional as F

    return F


def _torch():
    import torch

    return torch


def _unary(name: str, fn: Callable[[Any, dict], Any]) -> None:
    _OPS[name] = lambda node, args, ctx: fn(args[0], node.attrs)


_unary("Identity", lambda x, a: x)
_unary("Relu", lambda x, a: _f().relu(x))
_unary("Tanh", lambda x, a: _torch().tanh(x))
_unary("Sigmoid", lambda x, a: _torch().sigmoid(x))
_unary("Exp", lambda x, a: _torch().exp(x))
_unary("Log", lambda x, a: _torch().log(x))
_unary("Sqrt", lambda x, a: _torch().sqrt(x))
_unary("Neg", lambda x, a: -x)
_unary("Abs", lambda x, a: _torch().abs(x))
_unary("Reciprocal", lambda x, a: _torch().reciprocal(x))
_unary("Erf", lambda x, a: _torch().erf(x))
_unary("Floor", lambda x, a: _torch().floor(x))
_unary("Ceil", lambda x, a: _torch().ceil(x))
_unary("LeakyRelu", lambda x, a: _f().leaky_relu(x, a["alpha"]))
_unary("Elu", lambda x, a: _f().elu(x, a["alpha"]))
_unary("Celu", lambda x, a: _f().celu(x, a["alpha"]))
_unary("Selu", lambda x, a: a["gamma"] * _torch().where(x > 0, x, a["alpha"] * _torch().expm1(x)))
_unary("HardSigmoid", lambda x, a: _torch().clamp(a["alpha"] * x + a["beta"], 0.0, 1.0))
_unary("HardSwish", lambda x, a: _f().hardswish(x))
_unary("Softplus", lambda x, a: _f().softplus(x))
_unary("Softsign", lambda x, a: _f().softsign(x))
_unary("Mish", lambda x, a: _f().mish(x))
_unary("Gelu", lambda x, a: _f().gelu(x, approximate=a["approximate"]))
_unary("Swish", lambda x, a: x * _torch().sigmoid(a["alpha"] * x))
_unary("ThresholdedRelu", lambda x, a: _torch().where(x > a["alpha"], x, _torch().zeros_like(x)))
_unary("Softmax", lambda x, a: _torch().softmax(x, a["axis"]))
_unary("LogSoftmax", lambda x, a: _torch().log_softmax(x, a["axis"]))


@_rule("Clip")
def _clip(node, args, ctx):
    """Both bounds: hardtanh, whose gradient (zero at the bounds) is ours; ReLU6 is one."""
    x, low, high = args[0], node.attrs["min"], node.attrs["max"]
    if low is not None and high is not None:
        return _f().hardtanh(x, low, high)
    return _torch().clamp(x, low, high)


_BINARY = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
           "Div": lambda a, b: a / b, "Pow": lambda a, b: a ** b}
for _name, _fn in _BINARY.items():
    _OPS[_name] = lambda node, args, ctx, fn=_fn: fn(args[0], args[1])


@_rule("Sum", "Mean", "Max", "Min")
def _variadic(node, args, ctx):
    torch = _torch()
    combine = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum,
               "Min": torch.minimum}[node.op]
    out = args[0]
    for a in args[1:]:
        out = combine(out, a)
    return out / len(args) if node.op == "Mean" else out


@_rule("PRelu")
def _prelu(node, args, ctx):
    x, slope = args
    return _torch().where(x >= 0, x, x * slope)


@_rule("MatMul")
def _matmul(node, args, ctx):
    return _torch().matmul(args[0], args[1])


@_rule("Gemm")
def _gemm(node, args, ctx):
    """alpha A' B' + beta C; the common Linear case (transB, unit scales) is F.linear."""
    a, b, c = (args + [None])[:3]
    at = node.attrs
    if not at["transA"] and at["transB"] and at["alpha"] == 1.0 and at["beta"] == 1.0 \
            and (c is None or c.dim() == 1):
        return _f().linear(a, b, c)
    a = a.t() if at["transA"] else a
    b = b.t() if at["transB"] else b
    out = at["alpha"] * (a @ b) if at["alpha"] != 1.0 else a @ b
    if c is not None:
        out = out + (at["beta"] * c if at["beta"] != 1.0 else c)
    return out


# ------------------------------------------------------------------------- windows
def _window_pads(node: Node, x, kernel: tuple, strides: tuple, dilations: tuple
                 ) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding that makes torch's floor rounding give the node's
    output size: ceil mode and asymmetric pads become extra end padding, as in our
    reference (``end_padding_for``)."""
    pads = tuple(node.attrs.get("pads") or (0, 0, 0, 0))
    out_hw = node.outputs[0].type.shape[2:]
    ends = [end_padding_for(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + 2],
                            dilations[i], out_hw[i]) for i in range(2)]
    return pads[0], pads[1], ends[0], ends[1]


def _symmetric(pads: tuple, kernel: tuple | None = None) -> tuple[int, int] | None:
    """(pad_h, pad_w) when torch can pad natively (same at both ends, and for pooling at
    most half the window), else None."""
    t, l, b, r = pads
    if t != b or l != r:
        return None
    if kernel is not None and (2 * t > kernel[0] or 2 * l > kernel[1]):
        return None
    return t, l


def _crop(node: Node, y):
    """Drop any extra window torch's rounding made beyond the node's output size."""
    oh, ow = node.outputs[0].type.shape[2:]
    return y[:, :, :oh, :ow] if y.shape[2] > oh or y.shape[3] > ow else y


@_rule("Conv")
def _conv(node, args, ctx):
    x, w, b = (args + [None])[:3]
    a = node.attrs
    strides, dilations = tuple(a["strides"]), tuple(a["dilations"])
    pads = _window_pads(node, x, tuple(w.shape[2:]), strides, dilations)
    native = _symmetric(pads)
    if native is None:
        x = _f().pad(x, (pads[1], pads[3], pads[0], pads[2]))
        native = (0, 0)
    y = _f().conv2d(x, w, b, strides, native, dilations, a["group"])
    return _crop(node, y)


@_rule("MaxPool")
def _max_pool(node, args, ctx):
    x, a = args[0], node.attrs
    kernel, strides = tuple(a["kernel_shape"]), tuple(a["strides"])
    dilations = tuple(a.get("dilations") or (1, 1))
    pads = _window_pads(node, x, kernel, strides, dilations)
    native = _symmetric(pads, kernel)
    if native is None:
        x = _f().pad(x, (pads[1], pads[3], pads[0], pads[2]), value=-math.inf)
        native = (0, 0)
    return _crop(node, _f().max_pool2d(x, kernel, strides, native, dilations))


@_rule("AveragePool")
def _average_pool(node, args, ctx):
    """Native when the pads are symmetric and no ceil-mode padding is added; otherwise the
    mean of the padded input over the mean of a mask of the cells that count (our
    reference's divisor)."""
    x, a = args[0], node.attrs
    F = _f()
    kernel, strides = tuple(a["kernel_shape"]), tuple(a["strides"])
    given = tuple(a.get("pads") or (0, 0, 0, 0))
    pads = _window_pads(node, x, kernel, strides, (1, 1))
    native = _symmetric(pads, kernel)
    if native is not None and pads == given:
        return _crop(node, F.avg_pool2d(x, kernel, strides, native,
                                        count_include_pad=a["count_include_pad"]))
    t, l, b, r = pads
    h, w = x.shape[2:]
    mask = x.new_zeros((1, 1, t + h + b, l + w + r))
    if a["count_include_pad"]:
        mask[:, :, :given[0] + h + given[2], :given[1] + w + given[3]] = 1.0
    else:
        mask[:, :, t:t + h, l:l + w] = 1.0
    total = F.avg_pool2d(F.pad(x, (l, r, t, b)), kernel, strides)
    return _crop(node, total / F.avg_pool2d(mask, kernel, strides))


@_rule("GlobalAveragePool")
def _global_average_pool(node, args, ctx):
    return args[0].mean(dim=(2, 3), keepdim=True)


@_rule("GlobalMaxPool")
def _global_max_pool(node, args, ctx):
    return _torch().amax(args[0], dim=(2, 3), keepdim=True)


# ---------------------------------------------------------------------- normalisation
@_rule("BatchNormalization")
def _batch_norm(node, args, ctx):
    """Train mode: batch statistics, running ones updated in place (unbiased variance, as
    ours); torch's momentum weighs the batch, ONNX's the running value."""
    x, scale, bias, mean, var = args
    return _f().batch_norm(x, mean, var, scale, bias, training=ctx.training,
                           momentum=1.0 - node.attrs["momentum"], eps=node.attrs["epsilon"])


@_rule("LRN")
def _lrn(node, args, ctx):
    """ONNX LRN: the channel window takes floor((size-1)/2) before and ceil after (torch's
    local_response_norm pads the other way round for an even size)."""
    x, a = args[0], node.attrs
    F = _f()
    size = a["size"]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, lo, hi))
    mean = F.avg_pool3d(sq, (size, 1, 1), stride=1).squeeze(1)
    return x / (a["bias"] + a["alpha"] * mean) ** a["beta"]


@_rule("Dropout")
def _dropout(node, args, ctx):
    x, ratio = args[0], node.attrs["ratio"]
    if not ctx.training or ratio <= 0:
        return x
    name = ctx.mask_inputs[node.name]
    if name in ctx.masks:
        return x * ctx.masks[name]
    return _f().dropout(x, ratio, training=True)


# ----------------------------------------------------------------------------- shapes
@_rule("Flatten")
def _flatten(node, args, ctx):
    x = args[0]
    axis = node.attrs["axis"] % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


@_rule("Reshape")
def _reshape(node, args, ctx):
    """ONNX Reshape: 0 (or a symbolic dim) copies the input dim, -1 is inferred."""
    x = args[0]
    shape = [x.shape[i] if isinstance(d, str) or (d == 0 and not node.attrs["allowzero"])
             else d for i, d in enumerate(node.attrs["shape"])]
    return x.reshape(shape)


@_rule("Transpose")
def _transpose(node, args, ctx):
    x = args[0]
    perm = node.attrs["perm"] or tuple(reversed(range(x.dim())))
    return x.permute(*perm)


@_rule("Squeeze")
def _squeeze(node, args, ctx):
    x, axes = args[0], node.attrs["axes"]
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    return x.squeeze(tuple(a % x.dim() for a in axes))


@_rule("Unsqueeze")
def _unsqueeze(node, args, ctx):
    x, axes = args[0], node.attrs["axes"]
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@_rule("Concat")
def _concat(node, args, ctx):
    return _torch().cat(args, dim=node.attrs["axis"])


@_rule("Split")
def _split(node, args, ctx):
    axis = node.attrs["axis"]
    sizes = [v.type.shape[axis] for v in node.outputs]
    return _torch().split(args[0], sizes, dim=axis)


@_rule("Slice")
def _slice(node, args, ctx):
    x, a = args[0], node.attrs
    axes = a["axes"] if a["axes"] is not None else range(len(a["starts"]))
    steps = a["steps"] or [1] * len(a["starts"])
    index: list[slice] = [slice(None)] * x.dim()
    for axis, start, end, step in zip(axes, a["starts"], a["ends"], steps):
        if step < 0:
            raise UnsupportedError(f"node '{node.name}' (Slice): the torch mirror has no "
                                   "negative steps")
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


@_rule("Pad")
def _pad(node, args, ctx):
    x, a = args[0], node.attrs
    pads, rank = a["pads"], args[0].dim()
    torch_pads: list[int] = []
    for d in reversed(range(rank)):
        torch_pads += [pads[d], pads[d + rank]]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(a["mode"])
    if mode is None:
        raise UnsupportedError(f"node '{node.name}' (Pad): mode {a['mode']!r}")
    if mode == "constant":
        return _f().pad(x, torch_pads, value=a["value"])
    return _f().pad(x, torch_pads, mode=mode)


def _reduce(fn: Callable) -> _Rule:
    def rule(node, args, ctx):
        x, a = args[0], node.attrs
        axes = a["axes"]
        if not axes:
            if a["noop_with_empty_axes"]:
                return x
            axes = tuple(range(x.dim()))
        return fn(x, tuple(axes), bool(a["keepdims"]))
    return rule


_OPS["ReduceMean"] = _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k))
_OPS["ReduceSum"] = _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k))
_OPS["ReduceMax"] = _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k))
_OPS["ReduceMin"] = _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k))
_OPS["ReduceSumSquare"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k))


def supported_ops() -> list[str]:
    """The ops the mirror runs."""
    return sorted(_OPS)
