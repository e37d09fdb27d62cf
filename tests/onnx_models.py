"""Test data for the ONNX front end: the 'light' model zoo inside the onnx wheel, with its
constant weights replaced by seeded random ones, and onnxruntime as the oracle."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ["bvlc_alexnet", "vgg19", "resnet50", "squeezenet", "densenet121",
                "inception_v1", "inception_v2", "shufflenet", "zfnet512"]


def _consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    return uses


def random_weight(shape: tuple, uses: list[tuple[onnx.NodeProto, int]],
                  rng: np.random.Generator) -> np.ndarray:
    """He-normal kernels, small biases, well-conditioned BatchNorm statistics."""
    node, slot = uses[0] if uses else (None, -1)
    op = node.op_type if node is not None else ""
    if op in ("Conv", "ConvTranspose") and slot == 1:
        fan_in = math.prod(shape[1:])
        return normal(rng, shape, math.sqrt(2.0 / fan_in))
    if op == "Gemm" and slot == 1:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        fan_in = shape[1] if trans_b else shape[0]
        return normal(rng, shape, math.sqrt(2.0 / fan_in))
    if op == "BatchNormalization":
        if slot in (1, 4):          # scale, variance
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return normal(rng, shape, 0.1)
    if op == "Mul":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return normal(rng, shape, 0.1)


def normal(rng: np.random.Generator, shape: tuple, std: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every ConstantOfShape weight (how the light models ship) by a seeded random
    initializer, so onnxruntime and cnncompiler see the same well-conditioned network."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    uses = _consumers(model)
    keep = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            value = random_weight(shape, uses.get(node.output[0], []), rng)
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            if model.ir_version < 4:  # IR v3 lists every initializer among the graph inputs
                model.graph.input.append(helper.make_tensor_value_info(
                    node.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {name for node in keep for name in node.input}
    for collection in (model.graph.initializer, model.graph.input):
        stale = [t for t in collection if t.name.endswith("__SHAPE") and t.name not in used]
        for t in stale:
            collection.remove(t)
    return model


def expose_inputs_of(model: onnx.ModelProto, op_type: str) -> onnx.ModelProto:
    """Also output the input of each final ``op_type`` node (Softmax, Sigmoid).

    Random-weight logits are large, so softmax probabilities alone would be a near one-hot
    that hides any error; and onnxruntime's Sigmoid is an approximation (3.6e-7 at x=-15
    where the exact value is 3.1e-7; 0 below -17), so a mostly-background probability map
    can only be compared absolutely while its logits are compared relatively."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    for out in list(model.graph.output):
        node = producers.get(out.name)
        if node is not None and node.op_type == op_type and node.input[0] in infos:
            model.graph.output.append(infos[node.input[0]])
    return model


def load_light(name: str, seed: int = 0) -> onnx.ModelProto:
    model = onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))
    return with_random_weights(expose_inputs_of(model, "Softmax"), seed)


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check_passes_preserve_numerics(graph, feeds: dict[str, np.ndarray], tol: float = 1e-5
                                   ) -> float:
    """opt_level=2 against opt_level=0 in float64 on the reference backend; returns the error."""
    from cnncompiler.backends.reference import evaluate
    from cnncompiler.passes import PassManager

    optimised = PassManager(2, verify=True).run(graph)
    worst = 0.0
    for a, b in zip(evaluate(graph, feeds), evaluate(optimised, feeds)):
        err = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))
        assert err < tol, f"optimisation changed the result by {err:.3g}"
        worst = max(worst, err)
    return worst


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
