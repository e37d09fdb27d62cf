"""Op definitions: every op is one :class:`OpDef`, registered by importing its module."""

from cnncompiler.ops import (  # noqa: F401  (importing a module registers its ops)
    activations,
    broadcast,
    conv,
    conv_transpose,
    fused,
    im2col,
    layout_ops,
    linear,
    math_ops,
    normalization,
    pooling,
    reduce_ops,
    resize,
    shape_ops,
    softmax,
    tensor_ops,
)
from cnncompiler.ops.opdef import Attr, Cost, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import all_ops, get_op, infer_node, node_cost, register

__all__ = ["Attr", "Cost", "FusionKind", "InferContext", "Input", "OpDef", "all_ops", "get_op",
           "infer_node", "node_cost", "register"]
