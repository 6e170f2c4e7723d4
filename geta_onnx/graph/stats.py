"""Parameter and MAC counts of a normalised graph.

MACs are counted per sample: a symbolic or unknown dimension counts as 1 (fix input
shapes with graph.shapes.with_input_shapes for real sequence lengths). Weighted ops are
Conv, ConvTranspose, Gemm, MatMul, Einsum, LSTM and GRU; a MatMul between two
activations (attention scores) is counted too and marked `weighted=False`.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import onnx

from .model import FLOAT_TYPES, OnnxModel, attr

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU")


@dataclass(frozen=True)
class OpCost:
    node: str
    op_type: str
    macs: int | None  # None when a needed shape is unknown
    params: int  # elements of the op's float initializer inputs
    weighted: bool  # True when some input is an initializer (a weight)

    def to_dict(self) -> dict:
        return asdict(self)


def _dims(shape) -> list[int] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in shape]


def _prod(xs) -> int:
    return int(math.prod(xs)) if xs else 1


def op_cost(model: OnnxModel, node: onnx.NodeProto) -> OpCost:
    inits = [x for x in node.input if x and model.is_initializer(x)]
    params = sum(_prod(model.initializers[x].dims) for x in inits if model.initializers[x].data_type in FLOAT_TYPES)
    return OpCost(node.name, node.op_type, _macs(model, node), params, bool(inits))


def _macs(model: OnnxModel, node: onnx.NodeProto) -> int | None:
    op = node.op_type
    shape = lambda name: _dims(model.shape(name)) if name else None  # noqa: E731
    if op == "Conv":
        out, w = shape(node.output[0]), shape(node.input[1])
        if out is None or w is None:
            return None
        return _prod(out[1:]) * _prod(w[1:])  # each output element: C_in/g * kernel MACs
    if op == "ConvTranspose":
        x, w = shape(node.input[0]), shape(node.input[1])
        if x is None or w is None:
            return None
        return _prod(x[1:]) * _prod(w[1:])  # each input element scatters C_out/g * kernel
    if op in ("Gemm", "MatMul"):
        a, out = shape(node.input[0]), shape(node.output[0])
        if a is None or out is None or not a:
            return None
        trans_a = bool(attr(node, "transA", 0))
        k = a[0] if op == "Gemm" and trans_a else a[-1]  # the reduced dimension
        return _matmul_macs(out, k)
    if op == "Einsum":
        return _einsum_macs(model, node)
    if op in ("LSTM", "GRU"):
        x, w = shape(node.input[0]), shape(node.input[1])
        if x is None or w is None:
            return None
        layout = attr(node, "layout", 0)
        seq = x[1] if layout else x[0]
        num_dir, gates_h, inp = w
        hidden = gates_h // (4 if op == "LSTM" else 3)
        return seq * num_dir * gates_h * (inp + hidden)
    return 0


def _matmul_macs(out: list[int], k: int) -> int:
    """Output elements per sample x the reduced dimension. (B, N) -> N per sample;
    (B, S, N) or (B, H, S, N) -> everything but the batch dim."""
    per_sample = out[1:] if len(out) > 2 else out[-1:]
    return _prod(per_sample) * k


def _einsum_macs(model: OnnxModel, node: onnx.NodeProto) -> int | None:
    eq = attr(node, "equation", b"").decode().replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, name in zip(lhs, node.input):
        shape = _dims(model.shape(name))
        if shape is None or "..." in term or len(term) != len(shape):
            return None
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)
    first = lhs[0][:1]
    batch = sizes.get(first, 1) if first and all(t[:1] == first for t in lhs) else 1
    return _prod(sizes.values()) // max(batch, 1)


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    op_histogram: dict[str, int]
    params: int  # elements of float initializers
    macs: int  # sum over ops with known MACs
    ops: list[OpCost]  # the weighted / MAC-carrying ops
    unknown_macs: list[str]  # weighted ops whose MACs could not be counted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ops"] = [o.to_dict() for o in self.ops]
        return d


def model_stats(model: OnnxModel) -> ModelStats:
    hist = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.nodes)
    costs = [op_cost(model, n) for n in model.nodes if n.op_type in WEIGHTED_OPS]
    params = sum(_prod(t.dims) for t in model.initializers.values() if t.data_type in FLOAT_TYPES)
    return ModelStats(
        nodes=len(model.nodes),
        op_histogram=dict(hist.most_common()),
        params=params,
        macs=sum(c.macs for c in costs if c.macs),
        ops=costs,
        unknown_macs=[c.node for c in costs if c.macs is None],
    )


