"""A 2-D MatMul with a bias Add (keras / tf2onnx Dense layers, skl2onnx MLPs, a dynamically
quantized file read back as float) exports as Gemm with an int32 bias, so onnxruntime runs
QGemm. As MatMul -> Add, onnxruntime's MatMulAddFusion made a float-C Gemm of it before its
QDQ fusions and ran the layer in float (docs/deployment.md)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.export import export_onnx, fusion_report
from geta_onnx.export.dequantize import dequantize
from geta_onnx.graph import from_proto
from tests.export.helpers import fake_quant, output_tolerance, random_input_entry, untrained_result
from tests.helpers import make_model, rng

K, H, N = 32, 24, 8


def _mlp(rank: int):
    """x (2, [5,] K) -> MatMul(K x H) -> Add(b1) -> Relu -> MatMul(H x N) -> Add(b2) -> y."""
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["m1"], name="dense1"), n("Add", ["m1", "b1"], ["a1"], name="bias1"),
             n("Relu", ["a1"], ["r1"], name="relu"),
             n("MatMul", ["r1", "w2"], ["m2"], name="dense2"), n("Add", ["b2", "m2"], ["y"], name="bias2")]
    inits = {"w1": (rng(1).standard_normal((K, H)) / np.sqrt(K)).astype(np.float32),
             "b1": np.linspace(-0.3, 0.3, H, dtype=np.float32),
             "w2": (rng(2).standard_normal((H, N)) / np.sqrt(H)).astype(np.float32),
             "b2": np.linspace(0.2, -0.2, N, dtype=np.float32)}
    shape = (2, K) if rank == 2 else (2, 5, K)
    return make_model(nodes, {"x": rng(3).standard_normal(shape).astype(np.float32)}, ["y"], inits, opset=13), shape


@pytest.mark.parametrize("rank", [2, 3])
def test_a_matmul_with_a_bias_add_runs_in_integer_kernels(rank):
    proto, shape = _mlp(rank)
    model = from_proto(proto)
    entry = random_input_entry("x", shape[1:])
    result = untrained_result(model, entry, bits=(8,))
    exported = export_onnx(result, model, "ort")
    report = fusion_report(exported)
    assert report["float_nodes"] == [], report
    if rank == 2:  # as Gemm with the bias as DQ(int32): QGemm
        assert report["fused"] == {"QGemm": 2}, report
        assert not any(n.op_type in ("MatMul", "Add") for n in exported.graph.node)
    else:  # dense1's output is Q'd (onnxruntime's QGemm through Reshapes); dense2's float output
        # keeps MatMul -> Add(bias [1, 1, N]), no MatMulAddFusion: MatMulIntegerToFloat
        assert report["fused"] == {"QGemm": 1, "MatMulIntegerToFloat": 1}, report
    twin = dequantize(exported)  # the float twin reads every bias as [N] again: the float fusion's shape
    consts = {t.name: t for t in twin.graph.initializer}
    biases = [i for n in twin.graph.node for i in (n.input if n.op_type == "Add" else n.input[2:])
              if n.op_type in ("Add", "Gemm") and i in consts]
    assert len(biases) == 2 and all(len(consts[i].dims) == 1 for i in biases), biases
    feeds = {k: v.numpy() for k, v in entry.example_inputs(2, seed=100).items()}
    got, want = run_onnxruntime(exported, feeds)[0], fake_quant(result.module, feeds)
    tol = output_tolerance(result, "dense2")
    assert float(np.abs(got - want).max()) <= tol, (float(np.abs(got - want).max()), tol)
