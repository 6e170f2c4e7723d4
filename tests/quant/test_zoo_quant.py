"""attach_quantizers + calibrate on zoo models, both exporters.

Per (model, exporter): the expected number of weight / activation quantizers; with every
quantizer disabled the outputs equal the plain bridge's BITWISE; after calibration on
random data (8 batches of 8) at 8/8 bits, per-tensor, the logits of a held-out batch of 8
stay within 5e-2 relative L2 error of fp32 (measured: resnet 1.3e-2, mobilenetv2 2.0e-2,
bert 2.4e-2; bert varies 2-6e-2 with the data: 24 quantizers of LayerNorm-scale signed
tensors, each adding 0.5-1.5 %);
one backward in train mode gives every original parameter and every d and q_m a finite
gradient (d: nonzero). Exports are cached per process (tests.zoo_cache).
"""
from __future__ import annotations

import pytest
import torch

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig
from geta_onnx.graph import load_model
from geta_onnx.quant import attach_quantizers, calibrate, relative_bops
from samples.zoo import ZOO
from tests.zoo_cache import zoo_path

# model -> (layers = weight sites, unique activation quantizers incl. conv outputs, unsigned activation sites)
EXPECTED = {
    # 9 conv + fc; block convs 1 and shortcuts share their input; all but the stem after Relu;
    # + 5 outputs: the 3 second convs and 2 shortcut convs end in the residual Add; + 1: the last
    # residual Add, whose Relu feeds the global pooling (sites.residual_outputs)
    "resnet": (10, 8 + 5 + 1, 9),
    "bert": (14, 10, 0),  # 2 x (q, k, v share; proj; inter; out) + pooler + classifier; nothing provably >= 0
    # 16 conv + fc; ReLU6 = Clip(0, 6) inputs unsigned, HardSwish signed; + 9 outputs: convs
    # before HardSwish, before the residual Adds, before the global pooling
    "mobilenetv2": (17, 17 + 9, 5),
}
CASES = [(m, e) for m in EXPECTED for e in ("legacy", "dynamo")]


def _setup(name, exporter, **cfg):
    model = load_model(zoo_path(name, exporter))
    module = to_torch(model).eval()
    return model, module, attach_quantizers(module, model, QuantConfig(**cfg))


def _run(module, inputs):
    with torch.no_grad():
        return module(*inputs.values())


@pytest.mark.parametrize("name,exporter", CASES, ids=[f"{m}-{e}" for m, e in CASES])
def test_zoo_quantizers(name, exporter):
    model, module, plan = _setup(name, exporter, weight_bits_start=8, act_bits_start=8, float_thin_convs=False)
    layers, acts, unsigned = EXPECTED[name]
    assert len(plan.weight_sites()) == len(plan.weight_quantizers()) == len(plan.layers) == layers
    assert len(plan.act_quantizers()) == acts
    assert sum(not s.signed for s in plan.act_sites()) == unsigned
    entry = ZOO[name]
    inputs = entry.example_inputs(8, seed=100)

    # disabled: exactly the plain bridge
    ref = to_torch(model).eval()
    for q in plan.every_quantizer():  # the embedding table's too (quant/tables.py)
        q.enabled = False
    want = _run(ref, inputs)
    assert torch.equal(_run(module, inputs), want)

    # calibrated 8/8 bits: close to fp32
    for q in plan.every_quantizer():
        q.enabled = True
    ranges = calibrate(module, plan, [entry.example_inputs(8, seed=s) for s in range(1, 9)],
                       QuantConfig(weight_bits_start=8, act_bits_start=8))
    assert set(ranges) == set(plan.act_quantizers()) and all(v > 0 for v in ranges.values())
    got = _run(module, inputs)
    err = float((got - want).norm() / want.norm())
    assert 0 < err < 5e-2, err
    assert relative_bops(plan) == pytest.approx(64 / 1024, rel=1e-5)

    # gradients reach every original parameter and every d, q_m
    module.train()
    out = module(*inputs.values())
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    params = dict(module.named_parameters())
    assert sum(n.startswith("quantizers.") for n in params) == 2 * (layers + acts)
    for n, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if n.endswith(".d"):
            assert float(p.grad.abs().sum()) > 0, n


def test_zoo_per_channel_legacy_transposed_weights():
    """BERT legacy: W (out, in) -> Transpose -> MatMul: per-channel along axis 1 of W^T = axis 0 of W."""
    _, module, plan = _setup("bert", "legacy", per_channel=True)
    transposed = [la for la in plan.layers if la.transpose is not None]
    assert len(transposed) == 12
    for la in transposed:
        assert (la.axis, la.out_axis) == (1, 0)
        w = module.parameter(la.weight).detach()
        assert torch.equal(plan.quantizer(la.weight_quantizer).q_m.detach(), w.abs().amax(dim=1))
    out = _run(module, ZOO["bert"].example_inputs(2))
    assert torch.isfinite(out).all()
