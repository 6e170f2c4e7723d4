"""BOPs against numbers computed by hand on a tiny model (see the bops module docstring
for the convention). MACs per sample:
    c1   Conv 3->4, 3x3, pad 1, 8x8 out:  4*8*8 outputs x 3*3*3   = 6912
    c2   Conv 4->6, 1x1, stride 2, 4x4:   6*4*4 outputs x 4       =  384
    fc   Gemm 6->5 (transB=1):            5 outputs x 6           =   30
    att  MatMul of two activations: not a layer, never counted
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig
from geta_onnx.graph import from_proto
from geta_onnx.qadg import MemberSlice, PruneGroup
from geta_onnx.quant import (LayerKeep, attach_quantizers, fp32_bops, kept_from_groups, layer_bops, relative_bops,
                             total_bops)
from tests.helpers import make_model, rng

MACS = {"c1": 6912, "c2": 384, "fc": 30}


def _plan(**cfg):
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             n("Relu", ["a"], ["r"], name="relu"),
             n("Conv", ["r", "w2"], ["b"], name="c2", strides=[2, 2]),
             n("GlobalAveragePool", ["b"], ["p"], name="gap"),
             n("Flatten", ["p"], ["f"], name="flat"),
             n("Gemm", ["f", "wg"], ["y"], name="fc", transB=1),
             n("Transpose", ["f"], ["fT"], name="tr"),
             n("MatMul", ["fT", "f"], ["att"], name="att")]
    g = rng(0)
    inits = {"w1": g.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "w2": g.standard_normal((6, 4, 1, 1)).astype(np.float32),
             "wg": g.standard_normal((5, 6)).astype(np.float32)}
    x = g.standard_normal((1, 3, 8, 8)).astype(np.float32)
    model = from_proto(make_model(nodes, {"x": x}, ["y", "att"], inits))
    cfg.setdefault("float_thin_convs", False)  # the 3-channel conv c1 is a thin stem: quantize it here
    return attach_quantizers(to_torch(model), model, QuantConfig(**cfg))


def _set(plan, widths):
    for name, b in widths.items():
        plan.quantizer(name).set_bits(b)


WIDTHS = {"quantizers.w_w1": 4, "quantizers.a_x": 8, "quantizers.w_w2": 6, "quantizers.a_r": 5,
          "quantizers.w_wg": 3, "quantizers.a_f": 7}


def test_macs_and_hand_computed_bops():
    plan = _plan()
    assert {la.node: la.macs for la in plan.layers} == MACS  # the attention-like MatMul is not a layer
    _set(plan, WIDTHS)
    want = 6912 * 4 * 8 + 384 * 6 * 5 + 30 * 3 * 7  # = 233334
    assert total_bops(plan, rounded=True) == want
    assert total_bops(plan) == pytest.approx(want, rel=1e-5)  # continuous widths: float32 d, q_m
    assert fp32_bops(plan) == (6912 + 384 + 30) * 1024
    assert relative_bops(plan, rounded=True) == pytest.approx(want / ((6912 + 384 + 30) * 1024), rel=1e-12)
    rows = {r.node: r for r in layer_bops(plan, rounded=True)}
    assert (rows["c2"].weight_bits, rows["c2"].act_bits, rows["c2"].bops) == (6.0, 5.0, 384 * 30)


def test_all_8_bit_is_64_over_1024():
    plan = _plan()
    _set(plan, {n: 8 for n in WIDTHS})
    assert relative_bops(plan, rounded=True) == 64 / 1024


def test_float_layers_count_32_bits():
    plan = _plan(skip_last=True)  # fc stays in float: 32 x 32
    _set(plan, {n: b for n, b in WIDTHS.items() if not n.endswith(("w_wg", "a_f"))})
    assert total_bops(plan, rounded=True) == 6912 * 4 * 8 + 384 * 6 * 5 + 30 * 32 * 32
    plan.quantizer("quantizers.a_r").enabled = False  # a disabled quantizer: 32 bits
    assert total_bops(plan, rounded=True) == 6912 * 4 * 8 + 384 * 6 * 32 + 30 * 32 * 32
    weights_only = _plan(quantize_activations=False)
    _set(weights_only, {n: b for n, b in WIDTHS.items() if "w_" in n})
    assert total_bops(weights_only, rounded=True) == 6912 * 4 * 32 + 384 * 6 * 32 + 30 * 3 * 32


def test_bits_override():
    plan = _plan()
    _set(plan, WIDTHS)
    got = total_bops(plan, rounded=True, bits={"quantizers.w_w1": 2, "quantizers.a_x": 4})
    assert got == 6912 * 2 * 4 + 384 * 6 * 5 + 30 * 3 * 7


def test_pruning_scales_macs_and_per_channel_bits():
    plan = _plan(per_channel=True)
    _set(plan, WIDTHS)
    plan.quantizer("quantizers.w_w2").set_bits(torch.tensor([2.0, 4, 6, 8, 10, 12]))
    removed = [  # channel 1 of c1 (and c2's input 1); channels 0 and 3 of c2 (and fc's inputs 0, 3)
        PruneGroup(0, "channel", 1, 1, [MemberSlice("w1", 0, (1,), "out"), MemberSlice("w2", 1, (1,), "in")]),
        PruneGroup(1, "channel", 2, 2, [MemberSlice("w2", 0, (0, 3), "out"), MemberSlice("wg", 1, (0, 3), "in")]),
    ]
    kept = kept_from_groups(plan, removed)
    assert kept["c1"] == LayerKeep(1.0, 0.75, (0, 2, 3))
    assert kept["c2"] == LayerKeep(0.75, 4 / 6, (1, 2, 4, 5))
    assert kept["fc"] == LayerKeep(4 / 6, 1.0, None)
    rows = {r.node: r for r in layer_bops(plan, kept=kept, rounded=True)}
    assert rows["c2"].weight_bits == 8.0  # mean of the kept channels' widths 4, 6, 10, 12
    want = 6912 * 0.75 * 4 * 8 + 384 * 0.5 * 8 * 5 + 30 * (4 / 6) * 3 * 7
    assert total_bops(plan, kept=kept, rounded=True) == pytest.approx(want, rel=1e-12)
    # the same from per-layer (kept_in, kept_out) fractions; per-channel widths then average all channels
    fractions = {"c1": (1.0, 0.75), "c2": (0.75, 4 / 6), "fc": (4 / 6, 1.0)}
    assert {r.node: r.weight_bits for r in layer_bops(plan, kept=fractions, rounded=True)}["c2"] == 7.0
