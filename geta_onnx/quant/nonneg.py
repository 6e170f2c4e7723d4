"""Which tensors are provably non-negative (they get an unsigned activation quantizer).

One pass in topological order (graph.normalize sorts the nodes). A tensor is non-negative
when its producer is a non-negative SOURCE (Relu, Sigmoid, Softmax, Clip with a constant
min >= 0, ...), or an op that keeps non-negativity and whose relevant inputs are
non-negative (pooling, reshaping and indexing ops, Concat / Add / Mul of non-negative
inputs, ...). Constants count when every value is >= 0; trainable parameters never do
(training may make them negative), nor do graph inputs (nothing is known about them).
Anything else is "maybe negative": a signed quantizer, which is always correct.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph.model import OnnxModel, attr

# output >= 0 whatever the input
SOURCES = frozenset({"Relu", "Sigmoid", "Softmax", "HardSigmoid", "Softplus", "Abs", "Exp",
                     "ReduceL1", "ReduceL2", "ReduceSumSquare"})
# output >= 0 when input 0 is (other inputs are shapes, indices, axes)
FIRST_INPUT = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten",
                         "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Gather", "GatherElements",
                         "GatherND", "Expand", "Tile", "Split", "Resize", "Upsample", "Dropout", "Cast",
                         "SpaceToDepth", "DepthToSpace", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum",
                         "TopK"})
# output >= 0 when every (non-empty) input is
ALL_INPUTS = frozenset({"Concat", "Add", "Mul", "Div", "Sum", "Mean", "Min"})


def nonnegative_tensors(model: OnnxModel, trainable: frozenset[str] | set[str]) -> set[str]:
    """Names of the tensors of `model` that are >= 0 for every input.

    trainable: initializer names that are trained (their sign may change)."""
    known: set[str] = set()
    for name in model.initializers:
        if name not in trainable and _const_nonneg(model, name):
            known.add(name)
    for node in model.nodes:
        if _node_nonneg(model, node, known):
            known.update(o for o in node.output if o)
    return known


def _node_nonneg(model: OnnxModel, node: onnx.NodeProto, known: set[str]) -> bool:
    op, inputs = node.op_type, [x for x in node.input]
    if node.domain not in ("", "ai.onnx"):
        return False
    if op in SOURCES:
        return True
    if op == "Clip":
        return _clip_min_nonneg(model, node, known)
    if op in FIRST_INPUT:
        return bool(inputs) and inputs[0] in known
    if op in ALL_INPUTS:
        present = [x for x in inputs if x]
        return bool(present) and all(x in known for x in present)
    if op == "Max":  # max(a, b, ...) >= a
        return any(x in known for x in inputs if x)
    if op == "Pad":  # constant padding with a value >= 0 (default 0) or edge / reflect
        value_ok = len(inputs) < 3 or not inputs[2] or inputs[2] in known
        return bool(inputs) and inputs[0] in known and value_ok
    if op == "Where":
        return len(inputs) == 3 and inputs[1] in known and inputs[2] in known
    return False


def _clip_min_nonneg(model: OnnxModel, node: onnx.NodeProto, known: set[str]) -> bool:
    """Clip's lower bound is a constant >= 0 (opset >= 11: input 1; before: attribute `min`).
    A Clip without a lower bound keeps non-negativity of its input."""
    if model.opset(node.domain) < 11:
        low = attr(node, "min")
        return (low is not None and low >= 0) or (bool(node.input) and node.input[0] in known)
    if len(node.input) > 1 and node.input[1]:
        return node.input[1] in known or (bool(node.input) and node.input[0] in known)
    return bool(node.input) and node.input[0] in known


def _const_nonneg(model: OnnxModel, name: str) -> bool:
    try:
        value = np.asarray(model.array(name))
    except Exception:  # noqa: BLE001  (exotic dtypes: not provably anything)
        return False
    if value.dtype.kind not in "biuf":
        return False
    return bool(value.size == 0 or np.all(value >= 0))
