"""The float twin of an exported QDQ model: the same pruned graph and the same trained
weights, run in float. What `compress` ships instead when onnxruntime runs the QDQ model
slower (docs/realworld.md: Q/DQ pairs around ops with no integer kernel, e.g. hard-swish,
cost more than the int8 convs save).

    twin = dequantize(qdq_proto)

Requires: a model written by insert_qdq (weights as DQ(integer initializer), activations as
tensor -> Q -> DQ -> readers).
Ensures:
- every DequantizeLinear of constants (weights, int32 biases, blocked INT4 weights) becomes
  the float initializer it computes, (q - zero point) * scale, exactly the fake-quant weight
  the run trained;
- every unsigned activation Q -> DQ pair becomes Clip(x, 0, s (qmax - z)) named as the DQ
  output: the fake quantizer's clamp to [0, q_m] is kept (the export dropped the Relu / Clip
  nodes that the Q made redundant, export.qdq._drop_clip_before_q), only the rounding goes;
  a signed pair becomes a pass-through (see _saturate for both, and for the merge of a Relu
  / Clip producer into that Clip);
- an Add of a [1, .., 1, N] constant after a MatMul reads it as [N] (_vector_bias);
- an int8 embedding table (Gather(int8) -> Cast -> Mul, quant/tables.py) stays: it is no
  Q/DQ, computes the trained values exactly, and costs float a fraction of a millisecond;
  a DynamicQuantizeLSTM (export/recurrent.py) stays too: it is no Q/DQ pair either, and runs
  faster than the float LSTM (docs/deployment.md, "Recurrent layers");
- nothing else changes: the twin passes the full checker and keeps the input signature.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph.editor import GraphEditor, Node, is_default_domain
from .qdq import clip_range

CONTAINERS = (np.uint8, np.int8, np.uint16, np.int16)  # zero-point dtypes of the Q grids; others: uint8


def dequantize(proto: onnx.ModelProto) -> onnx.ModelProto:
    g = GraphEditor(proto)
    for node in g.nodes:
        if node.op != "DequantizeLinear" or not is_default_domain(node):
            continue
        if g.is_const(node.inputs[0]):
            _fold_constant(g, node)
        else:
            q = g.producer(node.inputs[0])
            if q is not None and q.op == "QuantizeLinear" and is_default_domain(q):
                _saturate(g, q, node)
    for node in g.nodes:
        if node.op == "Add" and is_default_domain(node):
            _vector_bias(g, node)
    return g.finish(label="float twin")


def _vector_bias(g: GraphEditor, add: Node) -> None:
    """MatMul -> Add(bias [1, .., 1, N]) => Add(bias [N]): the int8 export gave an N-D layer's
    bias that shape to keep onnxruntime's MatMulAddFusion off it (export.qdq._matmul_add_as_gemm);
    in float the fusion (a Gemm, through Reshapes) is what the runtime should do. The same sum:
    the MatMul output has at least the bias's rank."""
    for slot in (0, 1):
        producer = g.producer(add.inputs[1 - slot])
        value = g.const_or_none(add.inputs[slot])
        if producer is None or producer.op != "MatMul" or value is None or value.ndim < 2:
            continue
        if value.size == value.shape[-1]:
            add.inputs[slot] = g.add_const(f"{add.inputs[slot].name}_vector", value.reshape(-1))
        return


def _params(g: GraphEditor, node: Node) -> tuple[np.ndarray, np.ndarray]:
    scale = g.const(node.inputs[1]).astype(np.float64)
    zp = g.input_const(node, 2)
    return scale, (np.zeros_like(scale) if zp is None else zp.astype(np.float64))


def _fold_constant(g: GraphEditor, dq: Node) -> None:
    """DQ(q, s, z) of constants -> the float initializer named as its output. Per-axis
    scales broadcast along `axis`; a blocked DQ (block_size) repeats each scale over its block."""
    q = g.const(dq.inputs[0]).astype(np.float64)
    scale, zp = _params(g, dq)
    if scale.ndim:
        axis = dq.attrs.get("axis", 1) % q.ndim
        block = dq.attrs.get("block_size", 0)
        if block:
            scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            zp = np.repeat(zp, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
    value = ((q - zp) * scale).astype(np.float32)
    y = dq.outputs[0]
    g.remove(dq)
    y.to_constant(value)  # the DQ's own output becomes the initializer: readers stay as they are


def _saturate(g: GraphEditor, q: Node, dq: Node) -> None:
    """tensor -> Q -> DQ -> y  =>  tensor -> Clip(lo, hi) -> y for an unsigned grid (lo = 0:
    the fake quantizer's clamp to [0, q_m]); a plain pass-through for a signed grid (only
    outliers beyond q_m saturate there, and a float Clip between two ops costs onnxruntime a
    pass over the tensor). A Relu / constant Clip producing `tensor` for the Q alone is
    merged into the Clip (clip(relu(x), 0, hi) == clip(x, 0, hi)), so a Conv -> Clip still
    fuses; the Clip is left out when the producer's range lies inside [lo, hi] already."""
    scale, zp = _params(g, q)
    zp_const = g.input_const(q, 2)
    info = np.iinfo(zp_const.dtype if zp_const is not None and zp_const.dtype in CONTAINERS else np.uint8)
    lo, hi = float(scale * (info.min - zp)), float(scale * (info.max - zp))
    x, y = q.inputs[0], dq.outputs[0]
    g.remove(dq)
    producer = g.producer(x)
    low, high = _range(g, producer)
    if lo < 0 or (low is not None and low >= lo and high <= hi):
        g.add_node("Identity", [x], f"{dq.name}_float", output=y)
        return
    if low is not None and not g.is_output(x) and len(g.consumers(x)) == 1:  # the Q alone reads it
        source, lo, hi = producer.inputs[0], max(lo, low), min(hi, high)
        g.remove(producer)
    else:
        source = x
    bounds = [g.add_const(f"{x.name}_min", np.asarray(lo, np.float32)),
              g.add_const(f"{x.name}_max", np.asarray(hi, np.float32))]
    g.add_node("Clip", [source, *bounds], f"{dq.name}_float", output=y)


def _range(g: GraphEditor, producer: Node | None) -> tuple[float | None, float | None]:
    """(lo, hi) of a Relu / Clip with constant bounds in the default domain; (None, None) otherwise."""
    if producer is None or producer.op not in ("Relu", "Clip") or not is_default_domain(producer):
        return None, None
    return (0.0, np.inf) if producer.op == "Relu" else clip_range(g, producer)
