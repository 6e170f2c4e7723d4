"""[quant] reduce_range = "on" end to end on the digits CNN (120 QASSO steps at 25 % group
sparsity): every weight quantizer is held in [4, 7] bits, the cool-down freezes the 8-bit
container's width at 7, the export's int8 weights stay inside +-63, and onnxruntime's fused int8
kernels (graph optimizations on: QLinearConv / QGemm) compute the QDQ model's own math (graph
optimizations off) within one input step of the head pushed through its weights.

The last check is the point: on a CPU without VNNI the same run with full-range weights
differed by 0.71 in the logits against a tolerance of 0.22 (docs/deployment.md); with the
7-bit grid by 0.02. It holds on every CPU, so it is asserted everywhere."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.config import DataConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig
from geta_onnx.export import export_onnx, fusion_report
from geta_onnx.geta import run_geta
from geta_onnx.graph import load_model
from geta_onnx.train import load_data
from tests.e2e.digits import write_problem
from tests.export.helpers import output_tolerance


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    onnx_path, npz, _ = write_problem(tmp_path_factory.mktemp("digits"))
    model = load_model(onnx_path)
    data = load_data(f"npz:{npz}", DataConfig(batch_size=32), model=model, seed=0)
    result = run_geta(model, data, quant=QuantConfig(weight_bits=(4, 8), reduce_range="on"),
                      prune=PruneConfig(target_sparsity=0.25, group_divisible=1), schedule=ScheduleConfig(steps=120),
                      train_config=TrainConfig(progress=False))
    return result, export_onnx(result, model, "ort"), np.load(npz)["eval_x"][:256]


def test_weights_are_held_and_frozen_inside_seven_bits(trained):
    result, _, _ = trained
    quantizers = result.plan.weight_quantizers()
    assert quantizers and all(tuple(q.bit_range) == (4, 7) for q in quantizers.values())
    bits = [la["weight_bits"] for la in result.layers() if la["weight_bits"] is not None]
    assert bits and max(bits) <= 7


def test_the_int8_weights_stay_inside_plus_minus_63(trained):
    _, proto, _ = trained
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims]
    weights = [w for w in weights if w.size > 1 and np.any(w)]  # not the zero points
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 63


def test_the_fused_int8_kernels_compute_the_qdq_model(trained):
    result, proto, x = trained
    fused = fusion_report(proto)
    assert sum(fused["fused"].values()) >= 3, fused  # the convs and the head run onnxruntime's int8 kernels
    exact = run_onnxruntime(proto, {"image": x})[0]  # DequantizeLinear / float op / QuantizeLinear
    kernels = run_onnxruntime(proto, {"image": x}, optimize=True)[0]
    assert float(np.abs(exact - kernels).max()) <= output_tolerance(result, "/head/Gemm")
    assert (exact.argmax(1) == kernels.argmax(1)).all()
