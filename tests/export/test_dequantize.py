"""export.dequantize: the float twin of a QDQ model computes (q - z) * s for every constant
DQ (per tensor, per axis, blocked INT4) and keeps the saturation of every unsigned activation
Q, checked against numpy on hand-built graphs (onnxruntime, rtol 1e-5)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.export import dequantize

RNG = np.random.default_rng(0)


def _init(name, value, dtype=None):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes, inits, x_shape, y_shape, opset=21):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv(x, w, b):
    """NCHW conv, 1x1 kernel: (N, C, H, W) x (M, C, 1, 1) + (M,)."""
    return np.einsum("nchw,mc->nmhw", x, w[:, :, 0, 0]) + b.reshape(1, -1, 1, 1)


def test_per_channel_weight_int32_bias_and_unsigned_saturation():
    """x -> Q(uint8) -> DQ -> Conv(DQ(int8 W, axis 0), DQ(int32 b)) -> Q(uint8, top 6) -> DQ -> y.
    The twin: the same conv with the dequantized weight and bias, its input clipped to the
    first grid [0, 255 s] and its output to [0, 6] (the Relu6 the export let the Q absorb)."""
    w_int = RNG.integers(-127, 128, size=(4, 3, 1, 1)).astype(np.int8)
    w_scale = np.array([0.01, 0.02, 0.03, 0.04], np.float32)
    b_int = RNG.integers(-1000, 1000, size=4).astype(np.int32)
    s_x, s_y = np.float32(0.02), np.float32(6 / 255)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"])]
    inits = [_init("sx", s_x), _init("zx", 0, np.uint8), _init("w", w_int), _init("sw", w_scale),
             _init("zw", np.zeros(4), np.int8), _init("b", b_int), _init("sb", s_x * w_scale),
             _init("zb", np.zeros(4), np.int32), _init("sy", s_y), _init("zy", 0, np.uint8)]
    qdq = _model(nodes, inits, [2, 3, 5, 5], [2, 4, 5, 5])
    twin = dequantize(qdq)
    onnx.checker.check_model(twin, full_check=True)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in twin.graph.node}
    x = RNG.normal(0, 3, size=(2, 3, 5, 5)).astype(np.float32)
    w = w_int.astype(np.float64) * w_scale.reshape(-1, 1, 1, 1)
    b = b_int * (s_x * w_scale).astype(np.float64)
    want = np.clip(_conv(np.clip(x, 0, 255 * s_x), w, b), 0, 255 * s_y)
    got = run_onnxruntime(twin, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got == np.float32(255 * s_y)).any() and (got == 0).any()  # both bounds bind in this draw


def test_signed_activation_is_not_clipped_and_relu_needs_no_clip():
    """A signed (zero point 128) Q/DQ becomes a plain pass-through (an outlier saturation the
    twin lets go, for speed); an unsigned one after a Relu needs no Clip (Relu is 0 already
    and the top is open) -- no Clip is added on either."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z128"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z128"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["r"]),
             helper.make_node("Clip", ["r", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z0"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z0"], ["y"])]
    inits = [_init("s", np.float32(0.1)), _init("z128", 128, np.uint8), _init("z0", 0, np.uint8),
             _init("lo", np.float32(0)), _init("hi", np.float32(20))]  # the Clip's range holds the grid [0, 25.5]
    twin = dequantize(_model(nodes, inits, [64], [64]))
    assert [n.op_type for n in twin.graph.node].count("Clip") == 1  # the model's own Clip only
    x = RNG.normal(0, 30, size=64).astype(np.float32)
    np.testing.assert_allclose(run_onnxruntime(twin, {"x": x})[0], np.clip(x, 0, 20), rtol=1e-6)


def test_blocked_int4_matmul_weight():
    """DQ(INT4 [K, N], scale [ceil(K / 32), N], axis 0, block_size 32) -> MatMul: every
    block of K rows takes its own scale; K = 40 leaves a short last block."""
    k, n = 40, 3
    ints = RNG.integers(-7, 8, size=(k, n)).astype(np.int8)
    scale = RNG.uniform(0.01, 0.1, size=(2, n)).astype(np.float32)
    w = helper.make_tensor("w", TensorProto.INT4, [k, n], ints.flatten().tolist())
    z = helper.make_tensor("z", TensorProto.INT4, [2, n], [0] * 2 * n)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], axis=0, block_size=32),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    twin = dequantize(_model(nodes, [w, _init("s", scale), z], [2, k], [2, n]))
    x = RNG.normal(size=(2, k)).astype(np.float32)
    dense = ints.astype(np.float64) * np.repeat(scale, 32, axis=0)[:k]
    np.testing.assert_allclose(run_onnxruntime(twin, {"x": x})[0], x @ dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [13, 17])
def test_signature_and_graph_outputs_kept(opset):
    """A DQ whose output is the graph output becomes the node that writes it: the twin's
    inputs and outputs are the QDQ model's, name for name."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    qdq = _model(nodes, [_init("s", np.float32(0.5)), _init("z", 0, np.uint8)], ["batch", 4], ["batch", 4], opset)
    twin = dequantize(qdq)
    assert [i.name for i in twin.graph.input] == ["x"] and [o.name for o in twin.graph.output] == ["y"]
    assert twin.graph.input[0].type == qdq.graph.input[0].type
    x = np.array([[-1, 0.3, 100, 127.4]], np.float32)
    np.testing.assert_allclose(run_onnxruntime(twin, {"x": x})[0], np.clip(x, 0, 127.5))


def test_relu_before_an_unsigned_q_merges_into_its_clip():
    """x -> Relu -> Q(uint8, top 6) -> DQ -> y: the twin is one Clip(x, 0, 6) (a Conv before it
    would fuse with it in onnxruntime), and computes clip(relu(x), 0, 6)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    twin = dequantize(_model(nodes, [_init("s", np.float32(6 / 255)), _init("z", 0, np.uint8)], [32], [32]))
    assert [n.op_type for n in twin.graph.node] == ["Clip"] and twin.graph.node[0].input[0] == "x"
    x = RNG.normal(0, 5, size=32).astype(np.float32)
    np.testing.assert_allclose(run_onnxruntime(twin, {"x": x})[0], np.clip(x, 0, 6), rtol=1e-6)
