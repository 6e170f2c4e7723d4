"""Pass 2: fold inference BatchNormalization into the Conv before it.

Requires: the float proto from write_back and its LayerQ list.
Ensures: every foldable Conv -> BatchNormalization pair (the Conv output feeds only the BN
and is no graph output; the BN is in inference form with constant scale / B / mean /
var; channel counts match after pruning) becomes one Conv with bias.

Quantization order. The fake-quant model quantizes the UNFOLDED weight W (step d, integers
k) and applies BN after the conv:  y_c = a_c * (x * (k d))_c + b'_c  with
a_c = gamma_c / sqrt(var_c + eps), b'_c = beta_c + a_c (bias_c - mean_c).
Folding keeps the integers and moves a_c into a per-output-channel scale:
    ints_c  <- sign(a_c) * k_c        scale_c <- |a_c| * d_c        bias_c <- b'_c
which is exactly the same function (a per-channel rescaling of the grid, the integers
never change), so the folded QDQ Conv matches the fake-quant Conv + BN up to float
rounding. A channel with a_c = 0 outputs the constant b'_c: its integers become 0.
Float (unquantized) convs are folded the usual way, W_c <- a_c W_c.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph.editor import GraphEditor, Node, is_default_domain
from .params import LayerQ


def fold_batchnorm(proto: onnx.ModelProto, layers: list[LayerQ]) -> onnx.ModelProto:
    """A new proto with BN folded; `layers` entries of folded convs are updated in place
    (per-channel ints / scale along axis 0, float `bias`)."""
    g = GraphEditor(proto)
    by_node = {la.layer.node: la for la in layers}
    for conv in [n for n in g.nodes if n.op == "Conv" and is_default_domain(n)]:
        layer = by_node.get(conv.name)
        bn = _foldable_bn(g, conv, quantized=layer is not None)
        if bn is None:
            continue
        scale, beta, mean, var = (g.const(bn.inputs[i]).astype(np.float64) for i in range(1, 5))
        eps = bn.attrs.get("epsilon", 1e-5)
        a = scale / np.sqrt(var + eps)  # (M,)
        m = layer.wq.ints.shape[0] if layer is not None else g.const(conv.inputs[1]).shape[0]
        if a.shape != (m,):
            continue
        bias = g.input_const(conv, 2)
        bias = np.zeros(m) if bias is None else bias.astype(np.float64)
        new_bias = (beta + a * (bias - mean)).astype(np.float32)
        if layer is not None:
            wq = layer.wq
            d = np.broadcast_to(wq.scale.astype(np.float64), (m,))
            sign = np.where(a < 0, -1, 1).reshape((m,) + (1,) * (wq.ints.ndim - 1))
            wq.ints = np.where(a.reshape(sign.shape) == 0, 0, wq.ints * sign)
            wq.scale = np.where(a == 0, d, np.abs(a) * d).astype(np.float32)
            wq.axis = 0
            layer.bias = new_bias
        else:
            w = g.const(conv.inputs[1]).astype(np.float64)
            w = (w * a.reshape((m,) + (1,) * (w.ndim - 1))).astype(np.float32)
            conv.inputs[1] = g.add_const(f"{conv.name}_folded_weight", w)
        g.set_input(conv, 2, g.add_const(f"{conv.name}_folded_bias", new_bias))
        y = bn.outputs[0]
        g.remove(bn)  # first: a tensor has one producer
        conv.outputs[0] = y
    return g.finish()


def _foldable_bn(g: GraphEditor, conv: Node, quantized: bool) -> Node | None:
    out = conv.outputs[0]
    users = g.consumers(out)
    if len(users) != 1 or g.is_output(out):
        return None
    bn = users[0]
    if bn.op != "BatchNormalization" or not is_default_domain(bn) or bn.inputs[0] is not out:
        return None
    if bn.attrs.get("training_mode", 0) or len([o for o in bn.outputs if o.name]) != 1:
        return None
    if not quantized and not g.is_const(conv.inputs[1]):  # a quantized weight comes from its LayerQ
        return None
    if len(conv.inputs) > 2 and conv.inputs[2].name and g.input_const(conv, 2) is None:
        return None
    if any(g.input_const(bn, i) is None for i in range(1, 5)):
        return None
    return bn
