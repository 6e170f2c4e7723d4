"""LSTM weights in int8 (quant/recurrent.py, export/recurrent.py): which LSTMs qualify, the
fake-quant module against its DynamicQuantizeLSTM export (the weights bitwise, the outputs
within the kernel's dynamic activation rounding), the quantizer off giving the original
function, the straight-through gradient and a pruned (zero) input column, the export read
back as float by integer_ops, and a short compress per profile.

The models: x [T, B, I] -> LSTM(bidirectional, hidden H) -> (Y, Y_h), and a sequence
classifier x [B, T, F] -> Transpose -> MatMul(F -> 16) -> Relu -> LSTM -> Y_h -> Gemm for the
compress (the MatMul's output channels are the LSTM's prunable input columns).
"""
from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.bridge import to_torch
from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.config import QuantConfig
from geta_onnx.export import dequantize, export_onnx
from geta_onnx.graph import OnnxModel
from geta_onnx.graph.quantized import as_float
from geta_onnx.qadg import analyze
from geta_onnx.quant import attach_quantizers
from geta_onnx.quant.quantizer import quantizers_off
from geta_onnx.quant.recurrent import find_lstms, recurrent_int8
from tests.export.helpers import cli_inspect, initializer, short_compress

T, B, I, H = 6, 3, 16, 24
# DynamicQuantizeLSTM rounds the input sequence and each hidden state to uint8 over their
# range per call (not trained): LSTM outputs lie in (-1, 1), its grid steps are ~1/127 there
ACT_ROUNDING_TOL = 0.05


def _weights(seed: int = 0, directions: int = 2):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((directions, 4 * H, I)) * 0.3).astype(np.float32)
    r = (rng.standard_normal((directions, 4 * H, H)) * 0.3).astype(np.float32)
    b = (rng.standard_normal((directions, 8 * H)) * 0.1).astype(np.float32)
    return w, r, b


def _lstm_model(op: str = "LSTM", w=None, layout: int = 0, extra=()) -> OnnxModel:
    """x -> op(W, R, B) -> (y, y_h); `extra`: (node, initializers, output) appended."""
    if op == "GRU":
        rng = np.random.default_rng(0)
        w, r, b = ((rng.standard_normal(s) * 0.3).astype(np.float32) for s in ((2, 3 * H, I), (2, 3 * H, H), (2, 6 * H)))
    else:
        w, r, b = _weights() if w is None else (w, *_weights()[1:])
    attrs = dict(hidden_size=H, direction="bidirectional", **({"layout": layout} if layout else {}))
    nodes = [helper.make_node(op, ["x", "W", "R", "B"], ["y", "y_h"], name="lstm", **attrs)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h")]
    for node, init, out in extra:
        nodes.append(node)
        inits += init
        outputs.append(out)
    x_shape = ["B", "T", I] if layout else ["T", "B", I]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)], outputs,
                              inits)
    return OnnxModel(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))


def _x(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


def _attached(model: OnnxModel, **cfg):
    module = to_torch(model).eval()
    plan = attach_quantizers(module, model, QuantConfig(**cfg))
    return module, plan


def _run(module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module(torch.from_numpy(x))]


def test_which_lstms_qualify():
    model = _lstm_model()
    assert find_lstms(model, frozenset(model.initializers)) == [("lstm", ("W", "R"))]
    assert find_lstms(model, frozenset({"W"})) == []  # R not trainable
    assert find_lstms(model, frozenset(model.initializers), exclude=("ls*",)) == []
    for other in (_lstm_model("GRU"), _lstm_model(layout=1)):  # no int8 GRU kernel; DynamicQuantizeLSTM has no layout
        assert find_lstms(other, frozenset(other.initializers)) == []
    shared = _lstm_model(extra=[(helper.make_node("ReduceSum", ["W"], ["w_sum"], name="sum", keepdims=0), [],
                                 helper.make_tensor_value_info("w_sum", TensorProto.FLOAT, None))])
    assert find_lstms(shared, frozenset(shared.initializers)) == []  # W read twice: two grids
    _, plan = _attached(model, quantize_recurrent=False)
    assert plan.recurrent == []


def test_export_equals_the_fake_quant_module():
    model = _lstm_model()
    original = _run(to_torch(model).eval(), _x())
    module, plan = _attached(model)
    (lstm,) = plan.recurrent
    assert lstm.parameters == 2 * 4 * H * (I + H)
    want = _run(module, _x())
    with quantizers_off(plan.every_quantizer()):
        off = _run(module, _x())
    assert all(np.array_equal(a, b) for a, b in zip(off, original))  # off: the original function, bitwise
    assert not np.array_equal(want[0], original[0])
    fake = {name: plan.quantizer(q)(module.parameter(name)).detach().numpy() for name, q in zip(lstm.weights, lstm.quantizers)}
    for name, value in zip(lstm.weights, _weights()[:2]):
        ints, steps = recurrent_int8(value)
        assert steps.shape == (2,) and np.array_equal(fake[name], ints.astype(np.float32) * steps[:, None, None])
        assert np.all(np.abs(fake[name] - value) <= steps[:, None, None] / 2 * (1 + 1e-6))  # half a step per direction
    result = type("R", (), {"module": module, "plan": plan, "qadg": analyze(model), "removed_groups": set()})()
    proto = export_onnx(result, model, "ort")
    (node,) = proto.graph.node
    assert (node.op_type, node.domain) == ("DynamicQuantizeLSTM", "com.microsoft")
    assert any(o.domain == "com.microsoft" for o in proto.opset_import)
    for slot, (name, scale) in zip((1, 2), (("W", 8), ("R", 10))):
        stored = initializer(proto, node.input[slot])
        ints, steps = recurrent_int8(_weights()[slot - 1])
        assert stored.dtype == np.int8 and np.array_equal(stored, ints.transpose(0, 2, 1))  # [D, K, 4H]
        assert np.array_equal(initializer(proto, node.input[scale]), steps)
        assert np.array_equal(initializer(proto, node.input[scale + 1]), np.zeros(2, np.int8))
    got = run_onnxruntime(proto, {"x": _x()})
    assert all(np.abs(g - w).max() <= ACT_ROUNDING_TOL for g, w in zip(got, want))
    assert [n.op_type for n in dequantize(proto).graph.node] == ["DynamicQuantizeLSTM"]  # the float twin keeps it
    back, _ = as_float(OnnxModel(proto))  # read back as float: the fake-quant weights exactly
    (lstm_back,) = back.nodes
    assert lstm_back.op_type == "LSTM"
    assert all(np.array_equal(back.array(lstm_back.input[slot]), fake[name]) for slot, name in ((1, "W"), (2, "R")))
    trt = export_onnx(result, model, "tensorrt")  # float LSTM with the fake-quant weights
    assert [n.op_type for n in trt.graph.node] == ["LSTM"] and initializer(trt, "W").dtype == np.float32
    assert all(np.allclose(g, w, atol=1e-5) for g, w in zip(run_onnxruntime(trt, {"x": _x()}), want))


def test_gradient_passes_straight_through_and_zero_columns_stay_zero():
    w = _weights()[0]
    w[:, :, 5] = 0.0  # a pruned input channel
    model = _lstm_model(w=w)
    module, plan = _attached(model)
    q = plan.quantizer(plan.recurrent[0].quantizers[0])
    param = module.parameter("W")
    assert torch.count_nonzero(q(param)[:, :, 5]) == 0
    module.zero_grad()
    (module(torch.from_numpy(_x()))[0] ** 2).sum().backward()  # the gradient reaches W through the quantizer
    assert torch.count_nonzero(param.grad) > 0
    x = param.detach().clone().requires_grad_(True)  # and passes it straight through
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    q(x).backward(g)
    assert torch.equal(x.grad, g)


def _classifier(tmp_path):
    """x [B, 10, 8] -> Transpose -> MatMul(8 -> 16) -> Relu -> LSTM(16 -> 24, bidirectional) ->
    Y_h [2, B, 24] -> Transpose -> Reshape [B, 48] -> Gemm(48 -> 3): labels from a fixed random
    linear rule on the sequence mean."""
    rng = np.random.default_rng(0)
    w_in = (rng.standard_normal((8, 16)) * 0.5).astype(np.float32)
    w, r, b = ((rng.standard_normal(s) * 0.3).astype(np.float32) for s in ((2, 96, 16), (2, 96, 24), (2, 192)))
    head = (rng.standard_normal((48, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="time_first", perm=[1, 0, 2]),
             helper.make_node("MatMul", ["xt", "w_in"], ["proj"], name="proj"),
             helper.make_node("Relu", ["proj"], ["act"], name="relu"),
             helper.make_node("LSTM", ["act", "W", "R", "B"], ["", "y_h"], name="lstm", hidden_size=24,
                              direction="bidirectional"),
             helper.make_node("Transpose", ["y_h"], ["h_b"], name="batch_first", perm=[1, 0, 2]),
             helper.make_node("Reshape", ["h_b", "flat"], ["h"], name="flatten"),
             helper.make_node("Gemm", ["h", "head", "bias"], ["logits"], name="head")]
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w_in, "w_in"), (w, "W"), (r, "R"), (b, "B"), (np.array([0, 48], np.int64), "flat"), (head, "head"),
        (np.zeros(3, np.float32), "bias"))]
    graph = helper.make_graph(nodes, "sequence", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 10, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])], inits)
    path = tmp_path / "sequence.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    x = rng.standard_normal((600, 10, 8)).astype(np.float32)
    y = (x.mean(1) @ rng.standard_normal((8, 3))).argmax(1).astype(np.int64)
    npz = tmp_path / "data.npz"
    np.savez(npz, x=x[:500], y=y[:500], eval_x=x[500:], eval_y=y[500:])
    return path, npz, w.nbytes + r.nbytes


@pytest.mark.parametrize("profile", ["ort", "tensorrt"])
def test_compress_ships_the_lstm_in_int8(profile, tmp_path):
    """ort: DynamicQuantizeLSTM with int8 weights and the pruned input columns gone (whichever
    export ships: the float twin keeps it), in the report; tensorrt: a float LSTM."""
    path, npz, lstm_bytes = _classifier(tmp_path)
    out = tmp_path / "out" / "small.onnx"
    proto, report = short_compress(path, npz, out, profile, group_divisible=4)
    ops = {n.op_type: n for n in proto.graph.node}
    if profile == "tensorrt":
        assert "LSTM" in ops and initializer(proto, ops["LSTM"].input[1]).dtype == np.float32
        assert "recurrent" not in report
        return
    lstm = ops["DynamicQuantizeLSTM"]
    w_q, r_q = initializer(proto, lstm.input[1]), initializer(proto, lstm.input[2])
    assert w_q.dtype == np.int8 and r_q.dtype == np.int8 and r_q.shape == (2, 24, 96)
    assert w_q.shape[0] == 2 and w_q.shape[2] == 96 and w_q.shape[1] < 16  # [D, kept inputs, 4H]: pruned columns gone
    (row,) = report["recurrent"]
    assert row["node"] == "lstm" and row["weights"] == ["W", "R"] and row["format"] == "DynamicQuantizeLSTM"
    assert w_q.nbytes + r_q.nbytes < lstm_bytes / 4
    assert "LSTM weights in int8" in out.with_suffix(".report.md").read_text()


def test_inspect_names_the_lstms_compress_quantizes(tmp_path):
    path, _, _ = _classifier(tmp_path)
    output, report = cli_inspect(path, tmp_path)
    assert "LSTMs             lstm (7,680 weights) (int8 weights, DynamicQuantizeLSTM" in output
    assert report["int8_lstms"] == [
        {"node": "lstm", "weights": ["W", "R"], "parameters": 2 * 96 * (16 + 24)}]
