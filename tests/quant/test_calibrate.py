"""Calibration: the pooled |a| percentile (histogram, exact to one bin width), activation
ranges from DATA (never from weights), state restored, batch formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig
from geta_onnx.errors import DataError
from geta_onnx.graph import from_proto
from geta_onnx.quant import attach_quantizers, calibrate
from geta_onnx.quant.calibrate import BINS, AbsHistogram
from tests.helpers import make_model, rng


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99, 100.0])
def test_histogram_percentile_is_pooled_and_exact_to_one_bin(p):
    g = rng(0)
    # batches of growing scale force bin merges (the width doubles several times)
    batches = [g.standard_normal(5000) * s for s in (0.01, 1.0, 3.0, 40.0)] + [np.zeros(100)]
    h = AbsHistogram()
    for b in batches:
        h.add(torch.from_numpy(b.astype(np.float32)))
    pooled = np.abs(np.concatenate(batches)).astype(np.float32)
    exact = float(np.percentile(pooled, p, method="inverted_cdf"))
    got = h.percentile(p)
    assert h.count == pooled.size and h.max == pytest.approx(float(pooled.max()))
    assert len(h.counts) <= 2 * BINS and h.width <= h.max / BINS * (1 + 1e-6)
    assert exact - 1e-6 <= got <= exact + h.width * (1 + 1e-6), (got, exact, h.width)
    if p == 100.0:
        assert got == float(pooled.max())


def test_histogram_zeros_first_then_values():
    h = AbsHistogram()
    h.add(torch.zeros(900))
    assert h.percentile(99.0) == 0.0
    h.add(torch.linspace(0.5, 1.0, 100))
    assert h.percentile(50.0) <= 1.0 / BINS  # 90 % of the values are 0
    assert h.percentile(95.0) == pytest.approx(0.75, abs=0.01)


def _model():
    """x -> Conv (weights max|W| = 0.1) -> Relu -> Conv: activations are ~50x the weights."""
    n = helper.make_node
    w1 = np.clip(rng(1).standard_normal((4, 3, 1, 1)), -1, 1).astype(np.float32) * 0.1
    w2 = np.clip(rng(2).standard_normal((2, 4, 1, 1)), -1, 1).astype(np.float32) * 0.1
    nodes = [n("Conv", ["x", "w1"], ["a"], name="c1"), n("Relu", ["a"], ["r"], name="relu"),
             n("Conv", ["r", "w2"], ["y"], name="c2")]
    x = rng(3).standard_normal((2, 3, 4, 4)).astype(np.float32)
    model = from_proto(make_model(nodes, {"x": x}, ["y"], {"w1": w1, "w2": w2}))
    module = to_torch(model)
    # float_thin_convs off: c1 (3 input channels, 1x1) is a thin stem and would stay float
    return module, attach_quantizers(module, model, QuantConfig(act_bits=(4, 6), act_bits_start=6,
                                                                float_thin_convs=False))


def _data(k, scale=50.0):
    return [(rng(10 + i).standard_normal((2, 3, 4, 4)) * scale).astype(np.float32) for i in range(k)]


def test_ranges_come_from_data_not_weights():
    module, plan = _model()
    acts = plan.act_quantizers()
    qx = acts["quantizers.a_x"]
    assert not qx.calibrated and qx.q_m.item() == 1.0  # a placeholder until calibrated
    w_before = {n: q.q_m.detach().clone() for n, q in plan.weight_quantizers().items()}
    batches = _data(3)
    cfg = QuantConfig(act_bits=(4, 6), act_bits_start=6, calibration_percentile=99.0)
    ranges = calibrate(module, plan, batches, cfg)
    exact = float(np.percentile(np.abs(np.concatenate([b.ravel() for b in batches])), 99.0, method="inverted_cdf"))
    assert ranges["quantizers.a_x"] == pytest.approx(exact, abs=exact / BINS * 2)  # pooled over the 3 batches
    assert exact > 50  # ~2.6 sigma of N(0, 50^2): nothing like max|W| = 0.1
    for q in acts.values():
        assert q.calibrated and q.q_m.item() == pytest.approx(ranges[[n for n, v in acts.items() if v is q][0]])
        assert float(q.bits()) == pytest.approx(6.0, abs=1e-4)  # d = d(act_bits_start)
    assert not acts["quantizers.a_r"].signed
    for n, q in plan.weight_quantizers().items():
        assert torch.equal(q.q_m.detach(), w_before[n])  # weights untouched


def test_state_restored_and_only_the_first_batches_used():
    module, plan = _model()
    module.train()
    plan.quantizer("quantizers.w_w2").enabled = False
    pulled = []

    def stream():
        for i, b in enumerate(_data(10)):
            pulled.append(i)
            yield {"x": torch.from_numpy(b)}

    calibrate(module, plan, stream(), QuantConfig(calibration_batches=2))
    assert pulled == [0, 1]
    assert module.training
    assert {n: q.enabled for n, q in plan.quantizers().items()} == {
        "quantizers.w_w1": True, "quantizers.a_x": True, "quantizers.w_w2": False, "quantizers.a_r": True}


def test_batch_formats_and_errors():
    module, plan = _model()
    cfg = QuantConfig()
    x = _data(1)[0]
    ranges = [calibrate(module, plan, [b], cfg)["quantizers.a_x"]
              for b in (x, torch.from_numpy(x), (x,), [torch.from_numpy(x)], {"x": x})]
    assert all(r == ranges[0] for r in ranges)
    with pytest.raises(DataError, match="lacks model input"):
        calibrate(module, plan, [{"image": x}], cfg)
    with pytest.raises(DataError, match="takes 1"):
        calibrate(module, plan, [(x, x)], cfg)
    with pytest.raises(DataError, match="no batches"):
        calibrate(module, plan, [], cfg)
