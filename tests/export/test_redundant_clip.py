"""A Clip / Relu right before a QuantizeLinear is dropped exactly when the Q's grid makes it
redundant (qdq._drop_clip_before_q): onnxruntime outputs are bit-identical with and without
it, and a Clip that binds stays. (onnxruntime 1.30 rejects Conv -> Clip -> Q graphs whose
Clip its own fusion cannot drop.)"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.graph.editor import GraphEditor
from geta_onnx.export.qdq import _drop_clip_before_q, _quantize_tensor


def _graph(op: str, lo: float, hi: float) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])
    inits = [numpy_helper.from_array(np.float32(lo), "lo"), numpy_helper.from_array(np.float32(hi), "hi")]
    node = (helper.make_node("Clip", ["x", "lo", "hi"], ["a"], name="clip") if op == "Clip"
            else helper.make_node("Relu", ["x"], ["a"], name="relu"))
    neg = helper.make_node("Neg", ["a"], ["y"], name="neg")  # a consumer, so `a` is not a graph output
    return helper.make_model(helper.make_graph([node, neg], "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _export(model: onnx.ModelProto, scale: float, zp: int, drop: bool) -> onnx.ModelProto:
    g = GraphEditor(model)
    _quantize_tensor(g, "a", np.float32(scale), np.array(zp, dtype=np.uint8))
    if drop:
        _drop_clip_before_q(g, "a", np.float32(scale), np.array(zp, dtype=np.uint8))
    return g.finish()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("op, lo, hi, scale, zp, dropped", [
    ("Clip", 0.0, 6.0, 6.001 / 255, 0, True),       # grid top a hair above 6: the Q saturates first
    ("Clip", 0.0, 6.0, 3.0 / 255, 0, True),         # grid inside the clip
    ("Clip", 0.0, 6.0, 6.5 / 255, 0, False),        # grid top 0.5 above 6: the clip binds
    ("Clip", -1.0, 6.0, 6.0 / 255, 0, True),        # a floor below 0: uint8 floors at 0 anyway
    ("Clip", 0.0, 6.0, 6.0 / 127, 128, False),      # signed grid reaches -6: the clip's floor binds
    ("Relu", 0.0, np.inf, 4.0 / 255, 0, True),
])
def test_clip_dropped_only_when_exact(op, lo, hi, scale, zp, dropped):
    model = _graph(op, lo, hi)
    x = np.random.default_rng(0).uniform(-10, 10, (256, 64)).astype(np.float32)
    x[0, :5] = [hi if np.isfinite(hi) else 9.0, lo, 6.0 + scale / 2, 6.0 - scale / 2, -scale / 2]  # edges
    with_pass, without = _export(model, scale, zp, True), _export(model, scale, zp, False)
    ops = [n.op_type for n in with_pass.graph.node]
    assert (op not in ops) == dropped, ops
    np.testing.assert_array_equal(_run(with_pass, x), _run(without, x))
