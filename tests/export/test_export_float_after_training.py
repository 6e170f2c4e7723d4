"""Layers that go to float after training (the quality guard's end check, QuantPlan.with_float):
their quantizers off in the module, left out of the plan, and the export computes what the
module does.

On a zoo ResNet (a residual conv with an output quantizer; a shortcut conv whose input
quantizer another conv shares) and a zoo BERT (the q projection, whose input quantizer k and v
share): the plan keeps the shared input quantizers and drops the rest; the export of both
profiles matches the fake-quant module within one input step of the last layer (as
tests/export/test_export_zoo.py); the floated layers read a float weight (no
DequantizeLinear), while the layers that share their input stay quantized; with_float refuses
while a quantizer it drops is still on.
"""
from __future__ import annotations

import numpy as np
import pytest

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.errors import GetaError
from geta_onnx.export import export_onnx
from geta_onnx.graph import load_model
from samples.zoo import ZOO
from tests.export.helpers import dq_input, fake_quant, output_tolerance, untrained_result
from tests.zoo_cache import zoo_path

# model -> (layers to float, a layer that shares one of their input quantizers and stays quantized)
CASES = {
    "resnet": (["/layers/layers.1/conv2/Conv", "/layers/layers.1/shortcut/shortcut.0/Conv"],
               "/layers/layers.1/conv1/Conv"),
    "bert": (["/layers.0/attn/q/MatMul"], "/layers.0/attn/k/MatMul"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layers_in_float_after_training_export_what_the_module_computes(name):
    model = load_model(zoo_path(name, "legacy"))
    entry = ZOO[name]
    result = untrained_result(model, entry, bits=(8,))
    floated, sharer = CASES[name]
    plan = result.plan
    gone = plan.only_of(floated)
    shared = plan.layer(sharer).act_quantizer
    assert shared not in gone and gone  # the shared input quantizer stays; the floated layers' own go
    with pytest.raises(GetaError, match="still on"):
        plan.with_float(floated, "quality")
    for q in gone:
        plan.quantizer(q).enabled = False
    result.plan = plan.with_float(floated, "quality")

    for node in floated:
        layer = result.plan.layer(node)
        assert (layer.weight_quantizer, layer.act_quantizer, layer.skipped) == (None, None, "quality")
        assert result.plan.sites_of(node) == [] or all(s.kind == "output" for s in result.plan.sites_of(node))
    assert set(result.plan.quantizers()) == set(plan.quantizers()) - set(gone)
    assert plan.layer(floated[0]).weight_quantizer is not None  # the plan it came from is unchanged

    feeds = {k: v.numpy() for k, v in entry.example_inputs(4, seed=100).items()}
    want = fake_quant(result.module, feeds)
    tol = output_tolerance(result, result.plan.layers[-1].node)
    for profile in ("ort", "tensorrt"):
        proto = export_onnx(result, model, profile)
        got = run_onnxruntime(proto, feeds)[0]
        assert float(np.abs(got - want).max()) <= tol, (profile, float(np.abs(got - want).max()), tol)
        nodes = {n.name: n for n in proto.graph.node}
        for node in floated:
            layer = result.plan.layer(node)
            assert dq_input(proto, nodes[node], layer.w_slot) is None, (profile, node)  # a float weight
        assert dq_input(proto, nodes[sharer], plan.layer(sharer).w_slot) is not None  # still quantized
