"""onnxruntime's dynamic quantization read back as float (graph/integer_ops.py): every pattern
its quantizers write becomes the float op it quantizes, with the dequantized weight, and a
pattern that differs is left for the bridge to refuse by name."""
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.bridge import to_torch
from geta_onnx.cli import main
from geta_onnx.errors import UnsupportedOpError
from geta_onnx.graph import load_model
from geta_onnx.graph.integer_ops import float_dynamic
from geta_onnx.graph.quantized import as_float
from geta_onnx.qadg import analyze
from tests.graph.test_quantized import compress_quantized

DIGITS = "samples/digits/digits_cnn.onnx"
NPZ = "samples/digits/digits.npz"
INTEGER = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
           "DynamicQuantizeLSTM", "DequantizeLinear"}


def _run(model, feed: dict) -> list[np.ndarray]:
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def _quantize_dynamic(src, dst, **kw):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice goes to the root logger
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, **kw)
    return dst


@pytest.fixture(scope="module", params=[False, True], ids=["per-tensor", "per-channel"])
def digits_dynamic(request, tmp_path_factory):
    return _quantize_dynamic(DIGITS, tmp_path_factory.mktemp("dyn") / "digits_dyn.onnx", per_channel=request.param)


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weight of each Conv / MatMul (input 1) and the bias of each Conv, by node name."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            key = n.name.removesuffix("_MatMul").removesuffix("/Gemm").removesuffix("/Conv")
            out[key] = inits[n.input[1]]
            if len(n.input) > 2:
                out[key + ":bias"] = inits[n.input[2]]
    return out


def test_digits_dynamic_file_reads_back_as_its_float_model(digits_dynamic):
    """quantize_dynamic's ConvInteger / MatMulInteger patterns become Conv (its bias folded
    back from the quantizer's Add) and MatMul; each float weight lies within half a
    quantization step of the fp32 weight the file was quantized from (the property of
    rounding to the grid), the biases are the fp32 ones, the model prunes as the fp32 one
    does, and it agrees with the fp32 model on >= 97 % of the held-out digits."""
    model = load_model(digits_dynamic)
    floated, note = as_float(model)
    assert "4 integer ops of onnxruntime's dynamic quantization" in note
    assert floated.run_path == model.run_path == digits_dynamic
    ops = [n.op_type for n in floated.proto.graph.node]
    assert not INTEGER & set(ops) and ops.count("Conv") == 3 and ops.count("MatMul") == 1
    original = onnx.load(DIGITS)
    fp32 = _weights(original)
    got = {n.name: n for n in floated.proto.graph.node if n.op_type in ("Conv", "MatMul")}
    inits = {t.name: numpy_helper.to_array(t) for t in floated.proto.graph.initializer}
    scales = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(digits_dynamic)).graph.initializer
              if t.name.endswith("_scale")}
    for name, node in got.items():
        conv = node.op_type == "Conv"
        key = name.removesuffix("/Conv") if conv else "/head"
        w = inits[node.input[1]]
        reference = fp32[key] if conv else fp32[key].T  # the head is a Gemm(transB) in the fp32 file
        scale = next(v for k, v in scales.items() if k.startswith(node.input[1]))
        assert np.all(np.abs(w - reference) <= scale / 2 * (1 + 1e-5) + 1e-7), name
        if conv:
            np.testing.assert_array_equal(inits[node.input[2]], fp32[key + ":bias"])
    prunable = lambda m: len(analyze(m).prunable)  # noqa: E731
    assert prunable(floated) == prunable(load_model(DIGITS)) > 0
    x = np.load(NPZ)["eval_x"]
    agree = (_run(floated.proto, {"image": x})[0].argmax(1) == _run(original, {"image": x})[0].argmax(1)).mean()
    assert agree >= 0.97, agree


def _mlp(tmp_path, *, bias: bool) -> str:
    """x[., 16] -> MatMul(W1 [16, 24]) (+ b1) -> Relu, and x -> MatMul(W2 [16, 8]) (+ b2): two
    weights reading one input, so onnxruntime's fusions make MatMulIntegerToFloat / DynamicQuantizeMatMul."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W1", (16, 24)), ("W2", (16, 8)), ("b1", (24,)), ("b2", (8,)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mm1"),
             helper.make_node("MatMul", ["x", "W2"], ["m2"], name="mm2")]
    if bias:
        nodes += [helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
                  helper.make_node("Add", ["m2", "b2"], ["y2"], name="add2")]
    nodes.append(helper.make_node("Relu", ["a1" if bias else "m1"], ["y1"], name="relu"))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", k]) for n, k in (("y1", 24), ("y2", 8))]
    if not bias:
        nodes.append(helper.make_node("Identity", ["m2"], ["y2"], name="id"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                              outputs, inits if bias else inits[:2])
    path = tmp_path / f"mlp_{bias}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("bias", [False, True])
def test_onnxruntime_fused_dynamic_ops_read_back(tmp_path, bias):
    """A file onnxruntime saved after its fusions holds com.microsoft DynamicQuantizeMatMul /
    MatMulIntegerToFloat (bias fused in or not): each becomes MatMul (+ Add of its bias), and
    the float model computes exactly what the fp32 model computes with the dequantized weights."""
    dynamic = _quantize_dynamic(_mlp(tmp_path, bias=bias), tmp_path / "dyn.onnx", per_channel=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(dynamic), options, providers=["CPUExecutionProvider"])
    fused = onnx.load(str(tmp_path / "fused.onnx"))
    assert {n.op_type for n in fused.graph.node} & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    plain, _ = float_dynamic(onnx.load(str(dynamic)))
    out, count = float_dynamic(fused)
    assert count == 2 and not INTEGER & {n.op_type for n in out.graph.node}
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    for a, b in zip(_run(out, {"x": x}), _run(plain, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # the same float model either way
    reference = _run(str(tmp_path / f"mlp_{bias}.onnx"), {"x": x})
    for a, r in zip(_run(out, {"x": x}), reference):
        assert np.abs(a - r).max() < 0.05 * np.abs(r).max()  # 8-bit weights of the fp32 model


def _old_quantizer_conv(tmp_path) -> tuple[str, dict]:
    """The pattern of onnxruntime's early quantizer (producer "onnx.quantize 0.1.0", e.g.
    ddddocr's common_old.onnx): the bias added to the int32 accumulator as
    Cast(int32, Floor(Div(bias, x_scale * w_scale))), reshaped to [1, M, 1, 1]."""
    rng = np.random.default_rng(2)
    w_q = rng.integers(0, 255, size=(6, 3, 3, 3)).astype(np.uint8)
    values = {"w_q": w_q, "w_zp": np.uint8(128), "w_s": np.float32(0.01), "bias": rng.normal(size=6).astype(np.float32),
              "shape": np.array([1, -1, 1, 1], np.int64)}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="x_QuantizeLinear"),
             helper.make_node("Mul", ["xs", "w_s"], ["bs"], name="bias_scale"),
             helper.make_node("Div", ["bias", "bs"], ["bd"], name="bias_div"),
             helper.make_node("Floor", ["bd"], ["bf"], name="bias_floor"),
             helper.make_node("Cast", ["bf"], ["bq"], name="bias_cast", to=TensorProto.INT32),
             helper.make_node("Reshape", ["bq", "shape"], ["br"], name="bias_reshape"),
             helper.make_node("ConvInteger", ["xq", "w_q", "xz", "w_zp"], ["acc"], name="Conv_0_quant", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["acc", "br"], ["acc_b"], name="bias_add"),
             helper.make_node("Cast", ["acc_b"], ["accf"], name="acc_cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "w_s"], ["ys"], name="scales_mul"),
             helper.make_node("Mul", ["accf", "ys"], ["y"], name="output_scale_mul")]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in values.items()])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path, values


def test_early_quantizer_int32_bias_becomes_the_conv_bias(tmp_path):
    """The int32 bias of the early quantizer's ConvInteger becomes the Conv's float bias
    exactly (the Floor of its rounding goes), the weight (w_q - zp) * scale exactly; the float
    model is within the activations' rounding of the file as onnxruntime runs it."""
    path, v = _old_quantizer_conv(tmp_path)
    out, count = float_dynamic(onnx.load(str(path)))
    assert count == 1 and [n.op_type for n in out.graph.node] == ["Conv"]
    conv = out.graph.node[0]
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(inits[conv.input[1]], ((v["w_q"].astype(np.float64) - 128) * v["w_s"]).astype(np.float32))
    np.testing.assert_array_equal(inits[conv.input[2]], v["bias"])
    assert [a.ints for a in conv.attribute if a.name == "pads"] == [[1, 1, 1, 1]]
    x = np.random.default_rng(3).random((2, 3, 8, 8), dtype=np.float32)
    got, given = _run(out, {"x": x})[0], _run(str(path), {"x": x})[0]
    assert np.abs(got - given).max() < 0.02 * np.abs(given).max()


def _quantized_lstm(tmp_path, per_column: bool) -> tuple[str, str]:
    """A bidirectional com.microsoft DynamicQuantizeLSTM (input 5, hidden 4: a transposed weight
    would not even have LSTM's shape) and the fp32 LSTM of its dequantized weights."""
    rng = np.random.default_rng(4)
    d, n_in, hidden = 2, 5, 4
    w_q = rng.integers(-127, 128, size=(d, n_in, 4 * hidden)).astype(np.int8)
    r_q = rng.integers(-127, 128, size=(d, hidden, 4 * hidden)).astype(np.int8)
    shape = (d, 4 * hidden) if per_column else (d,)
    w_s, r_s = (rng.uniform(0.002, 0.01, size=shape).astype(np.float32) for _ in range(2))
    zp = np.zeros(shape, np.int8)
    b = rng.normal(scale=0.1, size=(d, 8 * hidden)).astype(np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, n_in])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def save(name, node, values):
        graph = helper.make_graph([node], name, [x_info], [y_info],
                                  [numpy_helper.from_array(np.asarray(a), k) for k, a in values.items()])
        path = tmp_path / f"{name}.onnx"
        opsets = [helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)]
        onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
        return path

    per = (d, 1, -1) if per_column else (d, 1, 1)
    dq = lambda q, s: (q.astype(np.float64) * s.reshape(per)).astype(np.float32).transpose(0, 2, 1)  # noqa: E731
    quantized = save("dyn_lstm", helper.make_node(
        "DynamicQuantizeLSTM", ["x", "w_q", "r_q", "b", "", "", "", "", "w_s", "w_zp", "r_s", "r_zp"], ["y"],
        name="LSTM_0_quant", domain="com.microsoft", direction="bidirectional", hidden_size=hidden),
        {"w_q": w_q, "r_q": r_q, "b": b, "w_s": w_s, "w_zp": zp, "r_s": r_s, "r_zp": zp})
    reference = save("lstm", helper.make_node("LSTM", ["x", "w", "r", "b"], ["y"], name="LSTM_0",
                                              direction="bidirectional", hidden_size=hidden),
                     {"w": dq(w_q, w_s), "r": dq(r_q, r_s), "b": b})
    return quantized, reference


@pytest.mark.parametrize("per_column", [False, True], ids=["per-direction", "per-gate-column"])
def test_dynamic_quantized_lstm_becomes_the_lstm_of_its_float_weights(tmp_path, per_column):
    """DynamicQuantizeLSTM's weights are [directions, in, 4 hidden]: read back, they are LSTM's
    [directions, 4 hidden, in] of the dequantized values, so the rewrite computes what the fp32
    LSTM of those weights computes (to float rounding), and what onnxruntime's quantized LSTM
    computes to within its activations' rounding."""
    quantized, reference = _quantized_lstm(tmp_path, per_column)
    out, count = float_dynamic(onnx.load(str(quantized)))
    assert count == 1 and [n.op_type for n in out.graph.node] == ["LSTM"]
    x = np.random.default_rng(5).normal(size=(3, 1, 5)).astype(np.float32)
    got = _run(out, {"x": x})[0]
    np.testing.assert_allclose(got, _run(str(reference), {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert np.abs(got - _run(str(quantized), {"x": x})[0]).max() < 0.05


def test_a_pattern_that_differs_is_left_for_the_bridge_to_refuse(digits_dynamic, tmp_path):
    """A ConvInteger whose int32 accumulator is also a graph output is not onnxruntime's
    pattern: it stays, the other three ops read back, and verify refuses the file naming the
    integer ops left and the forms that are read back."""
    proto = onnx.load(str(digits_dynamic))
    first = next(n for n in proto.graph.node if n.op_type == "ConvInteger")
    proto.graph.output.append(helper.make_tensor_value_info(first.output[0], TensorProto.INT32, list("bchw")))
    path = tmp_path / "odd.onnx"
    onnx.save(proto, str(path))
    out, count = float_dynamic(proto)
    assert count == 3 and sum(n.op_type == "ConvInteger" for n in out.graph.node) == 1
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "ConvInteger" in result.output and "does not read back" in result.output
    with pytest.raises(UnsupportedOpError, match="compress the float model"):
        to_torch(as_float(load_model(path))[0])


def test_compress_a_dynamically_quantized_file(tmp_path):
    """compress trains the float model of a quantize_dynamic file and writes a valid QDQ file
    compared with the file as given (it was refused with "unsupported op(s): ConvInteger ...")."""
    dynamic = _quantize_dynamic(DIGITS, tmp_path / "digits_dyn.onnx", per_channel=True)
    out = compress_quantized(dynamic, NPZ, tmp_path / "small.onnx", "integer ops of onnxruntime's dynamic quantization")
    assert not {"ConvInteger", "MatMulInteger"} & {n.op_type for n in out.graph.node}


@pytest.mark.parametrize("per_column", [False, True])
def test_quantized_embedding_table_reads_back_exactly(per_column):
    """quantize_dynamic stores an embedding table as uint8 read by Gather -> DequantizeLinear
    (MiniLM's word / position / token-type tables): it becomes Gather of the float table, whose
    rows are exactly what the DequantizeLinear yielded. Per column too (a DequantizeLinear with
    axis -1 and one scale per column of the table)."""
    table = np.random.default_rng(6).integers(0, 256, size=(10, 4)).astype(np.uint8)
    scale, zp = (np.float32([0.05, 0.2, 0.01, 1.5]), np.uint8([131, 0, 255, 7])) if per_column else \
        (np.float32(0.05), np.uint8(131))
    values = {"table_quantized": table, "table_scale": scale, "table_zero_point": zp}
    nodes = [helper.make_node("Gather", ["table_quantized", "ids"], ["rows_q"], name="embed"),
             helper.make_node("DequantizeLinear", ["rows_q", "table_scale", "table_zero_point"], ["rows"], name="dq",
                              **({"axis": -1} if per_column else {}))]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 3])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["b", 3, 4])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in values.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, count = float_dynamic(proto)
    assert count == 1 and [n.op_type for n in out.graph.node] == ["Gather"]
    assert out.graph.initializer[0].name == "table"  # the float table takes the quantized one's base name
    ids = np.array([[0, 9, 4], [3, 3, 1]], np.int64)
    np.testing.assert_array_equal(_run(out, {"ids": ids})[0], _run(proto, {"ids": ids})[0])
