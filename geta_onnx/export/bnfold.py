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

from .graphutil import Graph
from .params import LayerQ


def fold_batchnorm(proto: onnx.ModelProto, layers: list[LayerQ]) -> onnx.ModelProto:
    """A new proto with BN folded; `layers` entries of folded convs are updated in place
    (per-channel ints / scale along axis 0, float `bias`)."""
    g = Graph(proto)
    by_node = {la.node: la for la in layers}
    for conv in [n for n in g.nodes if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        layer = by_node.get(conv.name)
        bn = _foldable_bn(g, conv, quantized=layer is not None)
        if bn is None:
            continue
        scale, beta, mean, var = (g.const(bn.input[i]).astype(np.float64) for i in range(1, 5))
        eps = g.attr(bn, "epsilon", 1e-5)
        a = scale / np.sqrt(var + eps)  # (M,)
        m = layer.wq.ints.shape[0] if layer is not None else g.const(conv.input[1]).shape[0]
        if a.shape != (m,):
            continue
        bias = g.const(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(m)
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
            w = g.const(conv.input[1]).astype(np.float64)
            w = (w * a.reshape((m,) + (1,) * (w.ndim - 1))).astype(np.float32)
            conv.input[1] = g.add_init(f"{conv.name}_folded_weight", w)
        bias_name = g.add_init(f"{conv.name}_folded_bias", new_bias)
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias_name
        conv.output[0] = bn.output[0]
        g.remove(bn)
    return g.finish()


def _foldable_bn(g: Graph, conv: onnx.NodeProto, quantized: bool) -> onnx.NodeProto | None:
    out = conv.output[0]
    users = g.consumers(out)
    if len(users) != 1 or out in g.outputs:
        return None
    bn = users[0]
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or bn.input[0] != out:
        return None
    if g.attr(bn, "training_mode", 0) or len([o for o in bn.output if o]) != 1:
        return None
    if not quantized and not g.is_const(conv.input[1]):  # a quantized weight comes from its LayerQ
        return None
    if len(conv.input) > 2 and conv.input[2] and g.const_or_none(conv.input[2]) is None:
        return None
    if any(g.const_or_none(bn.input[i]) is None for i in range(1, 5)):
        return None
    return bn
