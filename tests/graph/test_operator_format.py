"""Operator-format quantized files (graph/operator_format.py): onnxruntime's
`quantize_static(..., quant_format=QuantFormat.QOperator)` output is read back as the same
float model as its QDQ-format output of the same calibration (bitwise: every QLinear op is its
float op between the DQ / Q of the same parameters), and compress runs on it.

Two models: the digits CNN of the e2e tests, and a graph made to reach every QLinear op the
quantizer writes for CNNs and attention heads (QLinearConv, QLinearMatMul, QGemm, QLinearAdd,
QLinearMul, QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax,
QLinearAveragePool, QLinearGlobalAveragePool) and the element movers between them (MaxPool,
Split, Resize, Reshape, Transpose, Flatten).
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.errors import UnsupportedOpError
from geta_onnx.graph import OnnxModel, load_model
from geta_onnx.graph.operator_format import qdq_from_operators
from geta_onnx.graph.quantized import as_float
from tests.e2e.digits import write_problem
from tests.graph.test_quantized import compress_quantized

QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear")


def _quantize(fp32, out_stem, batches: list[dict]) -> dict:
    """{format: path} of onnxruntime's static quantization of `fp32` in both formats, one
    calibration (per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice goes to the root logger
    paths = {}
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        paths[fmt.name] = out_stem.with_name(f"{out_stem.name}_{fmt.name}.onnx")
        quantize_static(str(fp32), str(paths[fmt.name]), Calibration(), quant_format=fmt, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False})
    return paths


def _run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _same_float_model(paths: dict, feeds: dict, bitwise: int) -> OnnxModel:
    """as_float of both formats: no quantized op left, the same weights, and the first
    `bitwise` outputs equal bitwise."""
    qop, qdq = (as_float(load_model(paths[f])) for f in ("QOperator", "QDQ"))
    ops = Counter(n.op_type for n in onnx.load(str(paths["QOperator"])).graph.node)
    assert any(op.startswith("QLinear") for op in ops) and "already quantized" in qop[1] and "QLinear ops" in qop[1]
    floated = qop[0].proto
    assert not any(n.op_type.startswith("QLinear") or n.op_type in ("QGemm", *QUANTIZED_OPS) for n in floated.graph.node)
    weights = lambda proto: sorted(numpy_helper.to_array(t).tobytes() for t in proto.graph.initializer  # noqa: E731
                                   if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 1)
    assert weights(floated) == weights(qdq[0].proto)
    for a, b in list(zip(_run(floated, feeds), _run(qdq[0].proto, feeds)))[:bitwise]:
        assert np.array_equal(a, b)
    return qop[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qop")
    fp32, npz, _ = write_problem(folder)
    x = np.load(npz)["x"]
    return _quantize(fp32, folder / "digits", [{"image": x[i:i + 32]} for i in range(0, 128, 32)]), npz


def test_digits_qoperator_reads_back_and_compresses(digits, tmp_path):
    """The digits CNN keeps its BatchNormalization nodes, which the QDQ format quantizes and the
    operator format leaves float: the two files differ, so this compares with the file as given."""
    paths, npz = digits
    x = np.load(npz)["eval_x"]
    floated, note = as_float(load_model(paths["QOperator"]))
    assert "4 QLinear ops of onnxruntime's operator format" in note
    assert not any(n.op_type.startswith("QLinear") or n.op_type in ("QGemm", *QUANTIZED_OPS)
                   for n in floated.proto.graph.node)
    agree = (_run(floated.proto, {"image": x})[0].argmax(1) ==
             _run(onnx.load(str(paths["QOperator"])), {"image": x})[0].argmax(1)).mean()
    assert agree >= 0.95, agree  # the float model the file computes, less its activations' rounding
    compress_quantized(paths["QOperator"], npz, tmp_path / "small.onnx", "QLinear ops of onnxruntime's operator format")


def _every_op_model(path) -> None:
    """x [B, 3, 16, 16] -> Conv -> MaxPool -> (Sigmoid, LeakyRelu) -> Mul / Add -> Split(2) ->
    Concat -> Resize(x2, nearest) -> AveragePool -> GlobalAveragePool -> Flatten -> Gemm -> and
    an attention-like head: Reshape -> MatMul -> (Transpose) -> MatMul -> Softmax -> MatMul."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
             "w2": rng.standard_normal((8, 8, 1, 1)) * 0.3, "wg": rng.standard_normal((8, 6)) * 0.3,
             "bg": rng.standard_normal(6) * 0.1, "wm": rng.standard_normal((64, 16)) * 0.03,
             "scales": np.array([1, 1, 2, 2]), "split": np.array([4, 4]), "flat": np.array([0, 8, 64])}
    inits = {k: v.astype(np.int64 if k in ("split", "flat") else np.float32) for k, v in inits.items()}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Sigmoid", ["p1"], ["s1"], name="sigmoid"),
             helper.make_node("LeakyRelu", ["p1"], ["l1"], name="leaky", alpha=0.1),
             helper.make_node("Mul", ["p1", "s1"], ["m1"], name="swish"),
             helper.make_node("Add", ["m1", "l1"], ["a1"], name="add"),
             helper.make_node("Split", ["a1", "split"], ["h1", "h2"], name="split", axis=1),
             helper.make_node("Concat", ["h2", "h1"], ["cat"], name="concat", axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["c2"], name="conv2"),
             helper.make_node("Resize", ["c2", "", "scales"], ["up"], name="up", mode="nearest"),
             helper.make_node("AveragePool", ["up"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["ap"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], name="head"),
             helper.make_node("Reshape", ["ap", "flat"], ["seq"], name="tokens"),
             helper.make_node("MatMul", ["seq", "wm"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["qt"], name="qt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "qt"], ["scores"], name="scores"),
             helper.make_node("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["attn", "q"], ["context"], name="context")]
    # the quantizer takes Resize's scales as a float input: give them as float
    inits["scales"] = inits["scales"].astype(np.float32)
    graph = helper.make_graph(nodes, "every_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 6]),
                               helper.make_tensor_value_info("context", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_every_qlinear_op_reads_back_as_its_qdq_twin(tmp_path):
    fp32 = tmp_path / "every_op.onnx"
    _every_op_model(fp32)
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((4, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    paths = _quantize(fp32, tmp_path / "every_op", batches)
    ops = Counter(n.op_type for n in onnx.load(str(paths["QOperator"])).graph.node)
    for op in ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
               "QLinearLeakyRelu", "QLinearSoftmax", "QLinearAveragePool", "QLinearGlobalAveragePool"):
        assert ops[op], (op, dict(ops))  # the quantizer wrote each op this test is about
    feeds = {"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
    # logits bitwise; the attention head's output not: the QDQ format puts a Softmax output on
    # the grid 1/255, QLinearSoftmax on 1/256, whose top the float model keeps as its clamp
    floated = _same_float_model(paths, feeds, bitwise=1)
    softmax = next(n for n in floated.proto.graph.node if n.op_type == "Softmax")
    clip = next(n for n in floated.proto.graph.node if n.op_type == "Clip" and n.input[0] == softmax.output[0])
    assert floated.array(clip.input[2]) == np.float32(255 / 256)
    # near the fp32 model it was quantized from (8-bit weights and clamps, no rounding of the
    # activations; not compared with the file as given: onnxruntime's u8s8 kernels saturate on
    # x86 CPUs without VNNI, docs/deployment.md, so what the file computes depends on the host)
    for ours, fp32_out in zip(_run(floated.proto, feeds), _run(onnx.load(str(fp32)), feeds)):
        a, b = ours.ravel().astype(np.float64), fp32_out.ravel().astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.99


def test_a_qlinear_op_with_computed_scales_is_left_and_named(tmp_path):
    """A QLinear op whose scale is computed in the graph is not read back: the file is
    refused with the op named, as before."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (4, 3, 1, 1)).astype(np.int8)
    nodes = [helper.make_node("Mul", ["s_in", "one"], ["xs"], name="scale"),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], name="qconv")]
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.float32(1.0), "one"), (np.uint8(0), "xz"), (w, "w"), (np.float32(0.01), "ws"), (np.int8(0), "wz"),
        (np.float32(0.1), "ys"), (np.uint8(0), "yz"))]
    graph = helper.make_graph(nodes, "computed", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 3, 4, 4]),
                                                  helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4, 4, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert qdq_from_operators(proto) == (proto, 0)
    path = tmp_path / "computed.onnx"
    onnx.save(proto, path)
    from geta_onnx.bridge import to_torch

    with pytest.raises(UnsupportedOpError, match="QLinearConv"):
        to_torch(as_float(load_model(path))[0])
