"""Why activations default to 8 bits (QuantConfig.act_bits): the ort profile stores every
activation as uint8 with step d = q_m / (2^b - 1), so below 8 bits the QuantizeLinear spans
255 d > q_m. After a Relu6 (Clip 0..6) that span passes 6, onnxruntime can no longer drop the
Clip before the Q, and the conv runs in float: fewer activation bits buy no speed and cost
the fusion (MobileNetV2 benchmark: 5 float convs, 0.51x the fp32 speed at batch 1)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.config import QuantConfig
from geta_onnx.export import export_onnx, fusion_report
from geta_onnx.graph import from_proto
from tests.export.helpers import fake_quant, output_tolerance, random_input_entry, untrained_result
from tests.helpers import make_model, rng

C = 16


def _relu6_convs():
    """x (2, C, 8, 8) -> Conv 3x3 -> Clip(0, 6) -> Conv 1x1 -> Clip(0, 6) -> GlobalAveragePool
    -> Flatten -> Gemm (C -> 4): MobileNetV2's Conv -> BN -> ReLU6, BN folded."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             n("Clip", ["c0", "zero", "six"], ["r0"], name="relu6_0"),
             n("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1"),
             n("Clip", ["c1", "zero", "six"], ["r1"], name="relu6_1"),
             n("GlobalAveragePool", ["r1"], ["g"], name="gap"),
             n("Flatten", ["g"], ["f"], name="flatten"),
             n("Gemm", ["f", "wg", "bg"], ["y"], name="gemm", transB=1)]
    inits = {"w0": (rng(0).standard_normal((C, C, 3, 3)) / 6).astype(np.float32),
             "w1": (rng(1).standard_normal((C, C, 1, 1)) / 2).astype(np.float32),
             "b0": np.full(C, 0.5, np.float32), "b1": np.full(C, 0.5, np.float32),
             "wg": (rng(2).standard_normal((4, C)) / 4).astype(np.float32), "bg": np.zeros(4, np.float32),
             "zero": np.float32(0), "six": np.float32(6)}
    return make_model(nodes, {"x": rng(3).standard_normal((2, C, 8, 8)).astype(np.float32)}, ["y"], inits,
                      opset=13)


def _entry():
    return random_input_entry("x", (C, 8, 8), scale=2.0)


def _export(act_bits: int, profile: str = "ort"):
    model = from_proto(_relu6_convs())
    result = untrained_result(model, _entry(), bits=(8,))
    for q in result.plan.act_quantizers().values():
        q.set_bits(act_bits)
    return result, export_onnx(result, model, profile)


def _float_convs(act_bits: int) -> list[str]:
    return fusion_report(_export(act_bits)[1])["float_nodes"]


def test_default_activation_bits_are_the_uint8_container():
    assert QuantConfig().act_bits == (8, 8)


def test_sub_8_bit_activations_after_relu6_block_the_fusion():
    assert _float_convs(8) == []
    assert len(_float_convs(5)) >= 1  # the Clip before a 5-bit Q stays: a float (Fused)Conv


@pytest.mark.parametrize("profile", ["ort", "tensorrt"])
@pytest.mark.parametrize("act_bits", [8, 5])
def test_export_equals_fake_quant_beyond_the_calibrated_range(act_bits, profile):
    """Inputs at 3x the calibration scale push activations past q_m. The fake quantizer clamps
    them at (2^b - 1) d; the export must too (a Clip before the Q below 8 bits: the uint8 Q
    alone saturates only at 255 d). Without it the 5-bit case differed by 0.046 on outputs
    of magnitude 1, 9x the 8-bit difference."""
    result, proto = _export(act_bits, profile)
    feeds = {"x": (3 * rng(5).standard_normal((2, C, 8, 8))).astype(np.float32)}
    got, want = run_onnxruntime(proto, feeds)[0], fake_quant(result.module, feeds)
    tol = output_tolerance(result, "gemm")
    assert float(np.abs(got - want).max()) <= tol, (float(np.abs(got - want).max()), tol)
    clips = [n for n in proto.graph.node if n.op_type == "Clip" and n.name.endswith("_Clip")]
    assert len(clips) == (0 if act_bits == 8 else len(result.plan.act_quantizers()))
