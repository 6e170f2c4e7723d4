"""LSTMs with int8 weights: LSTM(X, W, R, B, ...) => com.microsoft DynamicQuantizeLSTM(X,
W_q, R_q, B, ..., W_scale, W_zp, R_scale, R_zp), the weights and steps of
quant.recurrent.recurrent_int8 (the function training rounded with), so its weights are the
fake-quant ones bitwise; onnxruntime runs it faster than the float LSTM (docs/deployment.md,
"Recurrent layers", measured with tools/bench_lstm_int8.py).

Requires: the float proto after write_back (pruned weights), the plan's QuantRecurrent list.
Ensures:
- each listed LSTM becomes a DynamicQuantizeLSTM with its attributes (layout 0 is the only
  layout it has; find_lstms takes no other), weights transposed to its [D, K, 4H] layout,
  int8, one scale per direction, zero points 0, its outputs the LSTM's;
- `dequantized` (a profile without int8 LSTMs, tensorrt): the LSTM stays, its weights become
  their fake-quant values in float, so that export too computes the trained weights;
- with_contrib_domain: the model imports com.microsoft (version 1) when a node uses it.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph.editor import GraphEditor
from ..quant.recurrent import WEIGHT_SLOTS, QuantRecurrent, recurrent_int8

CONTRIB = "com.microsoft"
SCALE_SLOTS = {1: (8, 9), 2: (10, 11)}  # DynamicQuantizeLSTM: W -> (W_scale, W_zero_point), R -> (R_scale, R_zero_point)


def int8_lstms(g: GraphEditor, lstms: list[QuantRecurrent], dequantized: bool = False) -> None:
    nodes = g.nodes_by_name()
    for lstm in lstms:
        node = nodes[lstm.node]
        for slot in WEIGHT_SLOTS:
            source = node.inputs[slot]
            ints, steps = recurrent_int8(g.const(source))
            if dequantized:
                g.set_const(source, ints.astype(np.float32) * steps[:, None, None])
                continue
            base = source.name
            g.set_input(node, slot, g.add_const(f"{base}_quantized", np.ascontiguousarray(ints.transpose(0, 2, 1))))
            scale, zero = SCALE_SLOTS[slot]
            g.set_input(node, scale, g.add_const(f"{base}_scale", steps))
            g.set_input(node, zero, g.add_const(f"{base}_zero_point", np.zeros(steps.shape, np.int8)))
        if not dequantized:
            node.op, node.domain = "DynamicQuantizeLSTM", CONTRIB
            node.attrs.pop("layout", None)


def with_contrib_domain(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` importing com.microsoft version 1 when one of its nodes is of that domain."""
    if any(n.domain == CONTRIB for n in proto.graph.node) and all(o.domain != CONTRIB for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(CONTRIB, 1))
    return proto
