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
- nothing else changes: the twin passes the full checker and keeps the input signature.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .graphutil import Graph
from .qdq import clip_range

CONTAINERS = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT16: np.int16,
              onnx.TensorProto.UINT16: np.uint16}


def dequantize(proto: onnx.ModelProto) -> onnx.ModelProto:
    g = Graph(proto)
    for node in g.nodes:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        if g.is_const(node.input[0]):
            _fold_constant(g, node)
        else:
            q = g.producer(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.domain in ("", "ai.onnx"):
                _saturate(g, q, node)
    return g.finish(label="float twin")


def _params(g: Graph, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    scale = g.const(node.input[1]).astype(np.float64)
    zp = g.const(node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
    return scale, zp


def _fold_constant(g: Graph, dq: onnx.NodeProto) -> None:
    """DQ(q, s, z) of constants -> the float initializer named as its output. Per-axis
    scales broadcast along `axis`; a blocked DQ (block_size) repeats each scale over its block."""
    q = g.const(dq.input[0]).astype(np.float64)
    scale, zp = _params(g, dq)
    if scale.ndim:
        axis = g.attr(dq, "axis", 1) % q.ndim
        block = g.attr(dq, "block_size", 0)
        if block:
            scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            zp = np.repeat(zp, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
    value = ((q - zp) * scale).astype(np.float32)
    g.remove(dq)
    tensor = numpy_helper.from_array(value, dq.output[0])  # the DQ's own output name: readers stay as they are
    g.g.initializer.append(tensor)
    g.inits[tensor.name] = tensor


def _saturate(g: Graph, q: onnx.NodeProto, dq: onnx.NodeProto) -> None:
    """tensor -> Q -> DQ -> y  =>  tensor -> Clip(lo, hi) -> y for an unsigned grid (lo = 0:
    the fake quantizer's clamp to [0, q_m]); a plain pass-through for a signed grid (only
    outliers beyond q_m saturate there, and a float Clip between two ops costs onnxruntime a
    pass over the tensor). A Relu / constant Clip producing `tensor` for the Q alone is
    merged into the Clip (clip(relu(x), 0, hi) == clip(x, 0, hi)), so a Conv -> Clip still
    fuses; the Clip is left out when the producer's range lies inside [lo, hi] already."""
    scale, zp = _params(g, q)
    zp_type = g.inits[q.input[2]].data_type if len(q.input) > 2 and q.input[2] else onnx.TensorProto.UINT8
    info = np.iinfo(CONTAINERS.get(zp_type, np.uint8))
    lo, hi = float(scale * (info.min - zp)), float(scale * (info.max - zp))
    x, y = q.input[0], dq.output[0]
    g.remove(dq)
    producer = g.producer(x)
    low, high = _range(g, producer)
    if lo < 0 or (low is not None and low >= lo and high <= hi):
        g.g.node.append(onnx.helper.make_node("Identity", [x], [y], name=g.unique(f"{dq.name}_float")))
        return
    if low is not None and x not in g.outputs and len(g.consumers(x)) == 1:  # the Q alone reads it
        source, lo, hi = producer.input[0], max(lo, low), min(hi, high)
        g.remove(producer)
    else:
        source = x
    bounds = [g.add_init(f"{x}_min", np.asarray(lo, np.float32)), g.add_init(f"{x}_max", np.asarray(hi, np.float32))]
    g.g.node.append(onnx.helper.make_node("Clip", [source, *bounds], [y], name=g.unique(f"{dq.name}_float")))


def _range(g: Graph, producer: onnx.NodeProto | None) -> tuple[float | None, float | None]:
    """(lo, hi) of a Relu / Clip with constant bounds in the default domain; (None, None) otherwise."""
    if producer is None or producer.op_type not in ("Relu", "Clip") or producer.domain not in ("", "ai.onnx"):
        return None, None
    return (0.0, np.inf) if producer.op_type == "Relu" else clip_range(g, producer)
