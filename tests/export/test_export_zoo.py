"""export_onnx on zoo models without training (bridge + quantizers + calibration, weight bits
cycling 8 / 6 / 4 so both the int8 container and the INT4 MatMul path are exercised).

Per model: full_check (inside export_onnx), onnxruntime runs it, the logits match the
fake-quant module within one input step of the last layer pushed through its weights
(helpers.output_tolerance), the TensorRT structural rules hold, and onnxruntime's CPU
optimiser fuses exactly the expected layers (ort profile). Every Conv / Gemm / weight
MatMul fuses: convs whose output no layer reads directly (before the residual Add, before
HardSwish or global pooling, vit's patch conv before Reshape) get there through their
output quantizers (quant.sites.fusion_outputs). What stays float is no weighted layer: the
attention MatMuls q k^T and p v of bert / vit (activation x activation, never quantized).
"""
from __future__ import annotations

import numpy as np
import pytest

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.export import export_onnx, fusion_report
from geta_onnx.graph import load_model
from samples.zoo import ZOO
from tests.export.helpers import check_tensorrt_rules, fake_quant, output_tolerance, untrained_result
from tests.zoo_cache import zoo_path

# (model, exporter) -> (fused kernels in the ort profile, number of float weighted ops left).
# The CNN stems (3 input channels, 3x3 or an 8x8 patch: quant.sites.is_thin_conv) stay float
# by default, as a plain Conv: onnxruntime's QLinearConv is slower there.
EXPECTED = {
    ("resnet", "legacy"): ({"QLinearConv": 8, "QGemm": 1}, 1),
    ("mobilenetv2", "legacy"): ({"QLinearConv": 15, "QGemm": 1}, 1),
    ("bert", "legacy"): ({"QGemm": 2, "MatMulIntegerToFloat": 8, "MatMulNBits": 4}, 4),
    ("bert", "dynamo"): ({"QGemm": 2, "MatMulIntegerToFloat": 8, "MatMulNBits": 4}, 4),
    ("vit", "legacy"): ({"QGemm": 1, "MatMulIntegerToFloat": 8, "MatMulNBits": 4}, 5),
}


@pytest.mark.parametrize("name,exporter", list(EXPECTED), ids=[f"{m}-{e}" for m, e in EXPECTED])
def test_zoo_export(name, exporter):
    model = load_model(zoo_path(name, exporter))
    entry = ZOO[name]
    result = untrained_result(model, entry)
    feeds = {k: v.numpy() for k, v in entry.example_inputs(4, seed=100).items()}
    want = fake_quant(result.module, feeds)
    tol = output_tolerance(result, result.plan.layers[-1].node)
    quantized = {s.node for s in result.plan.weight_sites()}
    for profile in ("ort", "tensorrt"):
        proto = export_onnx(result, model, profile)
        got = run_onnxruntime(proto, feeds)[0]
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= tol, (profile, float(np.abs(got - want).max()), tol)
        if profile == "tensorrt":
            check_tensorrt_rules(proto, quantized)
            continue
        report = fusion_report(proto)
        fused, n_float = EXPECTED[(name, exporter)]
        assert report["fused"] == fused, report
        assert len(report["float_nodes"]) == n_float, report
        thin = [la.node for la in result.plan.layers if la.skipped == "thin"]
        assert len(thin) == (0 if name == "bert" else 1)
        assert report["float"].get("Conv", 0) == len(thin), report  # the only float conv is the stem
        if "MatMulNBits" in fused:
            assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21


def test_per_channel_weights_and_tensorrt_scales():
    """Per-channel weight quantizers (axis 0 for Conv, the output axis of Gemm / MatMul):
    1-D scales of the channel count, and the same parity."""
    model = load_model(zoo_path("resnet", "legacy"))
    entry = ZOO["resnet"]
    result = untrained_result(model, entry, bits=(8,), per_channel=True)
    feeds = {k: v.numpy() for k, v in entry.example_inputs(4, seed=100).items()}
    want = fake_quant(result.module, feeds)
    for profile in ("ort", "tensorrt"):
        proto = export_onnx(result, model, profile)
        got = run_onnxruntime(proto, feeds)[0]
        assert float(np.abs(got - want).max()) <= output_tolerance(result, result.plan.layers[-1].node)
    check_tensorrt_rules(proto, {s.node for s in result.plan.weight_sites()})
