"""Operator-format quantized files read back as QDQ: each QLinear op of onnxruntime's
`quantize_static(..., quant_format=QuantFormat.QOperator)` (the ONNX model zoo's "-int8"
files are made so) becomes the float op it fuses between DequantizeLinear and
QuantizeLinear, which graph/quantized.py then reads as float like any QDQ file.

    QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B)  =>  Q(Conv(DQ(x), DQ(w), DQ(B, xs * ws)), ys, yz)

and likewise QLinearMatMul, com.microsoft QGemm (C at scale alpha * as * bs; a float output
when it has no ys), QLinearAdd, QLinearMul, QLinearConcat, QLinearGlobalAveragePool,
QLinearAveragePool, QLinearSigmoid, QLinearLeakyRelu and QLinearSoftmax. The output keeps
its name and its uint8 / int8 type, so the graph around is untouched. An op that only moves
or selects elements (Flatten, Reshape, MaxPool, ...) reading such a tensor commutes with
dequantization: `Q -> P -> DQ` becomes `Q -> DQ -> P -> Q -> DQ` (float P, the same grid
after it), so every DequantizeLinear of an activation reads a QuantizeLinear, the form
export.dequantize reads (a fused Relu comes back there as the Clip of its uint8 grid).
A QLinear op whose scales or zero points are not constants, with channels_last, or a
QLinearSoftmax of opset-12 semantics on a rank other than 2 in a newer graph, is left as it
is, and the bridge refuses the file with it named. docs/realworld.md, "Models that are
already quantized".

    proto, rewritten = qdq_from_operators(onnx.load("model_int8.onnx"))
"""
from __future__ import annotations

import numpy as np
import onnx

from .editor import GraphEditor, Node, Tensor, is_default_domain

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
# op -> (float op, its attributes kept); inputs / output quantization per op in _unfuse
OPERATORS = {"QLinearConv": ("Conv", CONV_ATTRS), "QLinearMatMul": ("MatMul", ()), "QGemm": ("Gemm", ("transA", "transB")),
             "QLinearAdd": ("Add", ()), "QLinearMul": ("Mul", ()), "QLinearConcat": ("Concat", ("axis",)),
             "QLinearGlobalAveragePool": ("GlobalAveragePool", ()), "QLinearAveragePool": ("AveragePool", POOL_ATTRS),
             "QLinearSigmoid": ("Sigmoid", ()), "QLinearLeakyRelu": ("LeakyRelu", ("alpha",)),
             "QLinearSoftmax": ("Softmax", ("axis",))}
DEFAULT_DOMAIN_OPS = ("QLinearConv", "QLinearMatMul")  # the others are com.microsoft's
# ops that only move or select elements: P(DQ(q)) == DQ(P(q)) with the same scale and zero point
# (MaxPool: DQ is increasing, the scale being positive; Resize: its weights sum to 1, so it
# commutes with the affine DQ up to the rounding of its uint8 result)
ELEMENT_MOVERS = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "GlobalMaxPool", "Slice",
                  "Split", "Identity", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Gather", "Resize")


def qdq_from_operators(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(`proto` with its QLinear ops as DQ -> float op -> Q, how many were rewritten); (`proto`
    itself, 0) when it has none."""
    if not any(_is_operator(n.op_type, n.domain) for n in proto.graph.node):
        return proto, 0
    g = GraphEditor(proto)
    rewritten = sum(_unfuse(g, node) for node in list(g.nodes) if _is_operator(node.op, node.domain))
    if not rewritten:
        return proto, 0
    _float_movers(g)
    return g.finish(label="QDQ model"), rewritten


def _is_operator(op: str, domain: str) -> bool:
    return op in OPERATORS and (domain in (None, "", "ai.onnx") if op in DEFAULT_DOMAIN_OPS else domain == "com.microsoft")


def _input(node: Node, i: int):
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _unfuse(g: GraphEditor, node: Node) -> int:
    """One QLinear op => DQ(inputs) -> float op -> Q(output); 0 (left as it is) when its
    quantization parameters are not constants or an attribute has no float equivalent."""
    op, keep = OPERATORS[node.op]
    if node.attrs.get("channels_last", 0):
        return 0
    # (tensor, scale, zero point) of each quantized input, and the output's (scale, zero point)
    if op == "Concat":  # Y_scale, Y_zp, then (X, X_scale, X_zp) per input
        triples = [tuple(node.inputs[i:i + 3]) for i in range(2, len(node.inputs), 3)]
        out = (_input(node, 0), _input(node, 1))
    elif op in ("Conv", "MatMul", "Gemm", "Add", "Mul"):
        triples = [tuple(node.inputs[0:3]), tuple(node.inputs[3:6])]
        tail = {"Conv": 6, "MatMul": 6, "Gemm": 7, "Add": 6, "Mul": 6}[op]
        out = (_input(node, tail), _input(node, tail + 1))
    else:  # X, X_scale, X_zp, Y_scale, Y_zp
        triples = [tuple(node.inputs[0:3])]
        out = (_input(node, 3), _input(node, 4))
    if any(t is None or not g.is_const(t) for _, s, z in triples for t in (s, z)) or \
            any(t is not None and not g.is_const(t) for t in out):
        return 0
    if op == "Softmax" and not _softmax_same(g, node):
        return 0
    attrs = {k: v for k, v in node.attrs.items() if k in keep}
    extra = []  # a Conv's / Gemm's bias
    if op in ("Conv", "Gemm"):
        bias = _input(node, 8 if op == "Conv" else 6)
        if bias is not None:
            if not g.is_const(bias):
                return 0
            alpha = float(node.attrs.get("alpha", 1.0)) if op == "Gemm" else 1.0
            extra = [_bias(g, node, bias, g.const(triples[0][1]), g.const(triples[1][1]), alpha)]
        if op == "Gemm":
            attrs["alpha"] = float(node.attrs.get("alpha", 1.0))
    floats = [_dequantized(g, node, op, k, *t) for k, t in enumerate(triples)]
    y = node.outputs[0]
    g.remove(node)
    if out[0] is None:  # QGemm without Y_scale: a float output
        g.add_node(op, [*floats, *extra], f"{node.name}_float", output=y, **attrs)
        return 1
    value = g.add_node(op, [*floats, *extra], f"{node.name}_float", **attrs)
    g.add_node("QuantizeLinear", [value, out[0], out[1] if out[1] is not None else ""], f"{node.name}_quantize", output=y)
    return 1


def _dequantized(g: GraphEditor, node: Node, op: str, k: int, x, scale, zp) -> Tensor:
    """DQ(x, scale, zp): per tensor, or per output channel of a constant weight (input k = 1
    of a Conv: axis 0; of a MatMul: the last; of a Gemm: 0 with transB, else 1)."""
    attrs = {}
    if np.asarray(g.const(scale)).size > 1:
        rank = len(g.const(x).shape) if g.is_const(x) else 2
        attrs["axis"] = {"Conv": 0, "MatMul": rank - 1}.get(op, 0 if node.attrs.get("transB", 0) else 1)
    return g.add_node("DequantizeLinear", [x, scale, zp if zp is not None else ""], f"{node.name}_dequantize_{k}", **attrs)


def _bias(g: GraphEditor, node: Node, bias, x_scale: np.ndarray, w_scale: np.ndarray, alpha: float) -> Tensor:
    """DQ(int32 bias, alpha * x_scale * w_scale, 0): onnxruntime's quantizer's own bias grid."""
    scale = (np.float32(alpha) * np.asarray(x_scale, np.float32) * np.asarray(w_scale, np.float32)).astype(np.float32)
    s = g.add_const(f"{bias.name}_scale", scale.reshape(-1) if scale.size > 1 else scale.reshape(()))
    z = g.add_const(f"{bias.name}_zero_point", np.zeros(s.shape, np.int32))
    return g.add_node("DequantizeLinear", [bias, s, z], f"{node.name}_bias", **({"axis": 0} if scale.size > 1 else {}))


def _softmax_same(g: GraphEditor, node: Node) -> bool:
    """QLinearSoftmax's `opset` attribute names the Softmax semantics it computes; before 13
    Softmax flattens to 2-D at `axis`, which a Softmax of a newer graph does only on 2-D."""
    semantics, graph_opset = int(node.attrs.get("opset", 13)), g.opset()
    if (semantics >= 13) == (graph_opset >= 13):
        return True
    shape = node.inputs[0].shape
    return shape is not None and len(shape) == 2


def _float_movers(g: GraphEditor) -> None:
    """Q -> P -> (readers) with P an element mover on the quantized tensor => Q -> DQ -> P(float)
    -> Q -> (readers), the Q after P on the same grid, repeated down chains of movers."""
    work = [n for n in g.nodes if n.op == "QuantizeLinear" and is_default_domain(n)]
    while work:
        q = work.pop()
        if len(q.outputs) != 1 or g.is_output(q.outputs[0]):
            continue
        for mover in g.consumers(q.outputs[0]):
            if mover.op not in ELEMENT_MOVERS or not is_default_domain(mover) or mover.inputs[0] is not q.outputs[0] \
                    or any(g.is_output(t) for t in mover.outputs):
                continue
            params = [q.inputs[1], q.inputs[2] if len(q.inputs) > 2 else ""]
            axis = {"axis": q.attrs["axis"]} if "axis" in q.attrs else {}
            dq = g.add_node("DequantizeLinear", [q.outputs[0], *params], f"{mover.name}_dequantize", **axis)
            g.set_input(mover, 0, dq)
            for k, quantized in enumerate(list(mover.outputs)):
                value = g.variable(f"{mover.name}_float_{k}")
                mover.outputs[k] = value
                g.add_node("QuantizeLinear", [value, *params], f"{mover.name}_quantize_{k}", output=quantized, **axis)
                for reader in g.consumers(quantized):  # P's float output is on the grid already: DQ(Q(.)) is itself
                    if reader.op == "DequantizeLinear" and is_default_domain(reader) and _same_grid(g, q, reader):
                        y = reader.outputs[0]
                        g.remove(reader)
                        g.add_node("Identity", [value], f"{reader.name}_float", output=y)
                work.append(g.producer(quantized))


def _same_grid(g: GraphEditor, q: Node, dq: Node) -> bool:
    """Q and DQ of one per-tensor grid: equal constant scales and zero points (absent: 0)."""
    def params(node):
        scale = g.const_or_none(node.inputs[1])
        zp = g.const_or_none(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.zeros((), np.uint8)
        return scale, zp
    (s1, z1), (s2, z2) = params(q), params(dq)
    return all(v is not None and v.size == 1 for v in (s1, z1, s2, z2)) and "axis" not in dq.attrs \
        and s1.item() == s2.item() and z1.item() == z2.item() and z1.dtype == z2.dtype
