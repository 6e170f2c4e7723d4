"""Conv, ConvTranspose and Gemm against onnxruntime (tolerance: atol 1e-4 + rtol 1e-4 of
the largest reference value: float32 sums of up to ~100 products in another order).

Weights and biases are initializers, so every case also checks that they became
parameters with finite gradients. Both opsets of Conv / ConvTranspose (1 and 11 are the
since_versions; only 11 is loadable) and Gemm's 11 and 13 are covered."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from geta_onnx.errors import ConversionError
from tests.helpers import assert_gradcheck, assert_parity, bridge_outputs, make_model, rng

TOL = dict(atol=1e-4, rtol=1e-4)



def _conv_model(op, x, w, b=None, opset=11, **attrs):
    inits = {"w": w} if b is None else {"w": w, "b": b}
    node = helper.make_node(op, ["x", "w"] + (["b"] if b is not None else []), ["y"], **attrs)
    return make_model([node], {"x": x}, ["y"], inits, opset=opset)


def assert_conv_parity(op, x, w, b=None, opset=11, gradcheck=False, **attrs):
    model = _conv_model(op, x, w, b, opset, **attrs)
    module = assert_parity(model, {"x": x}, **TOL)
    assert sorted(module.initializer_of[q] for q, _ in module.named_parameters()) == (["b", "w"] if b is not None else ["w"])
    if gradcheck:
        assert_gradcheck(module, {"x": x})
    return module


def _arrays(x_shape, w_shape, bias, dtype=np.float32, seed=0):
    r = rng(seed)
    x = r.standard_normal(x_shape).astype(dtype)
    w = (r.standard_normal(w_shape) * 0.5).astype(dtype)
    return x, w, (r.standard_normal(bias).astype(dtype) if bias else None)


# (x shape, w shape, bias channels or 0, attributes)
CONV = {
    "3x3_pad1": ((2, 3, 8, 8), (4, 3, 3, 3), 4, dict(pads=[1, 1, 1, 1])),
    "no_bias_stride2": ((1, 3, 9, 8), (4, 3, 3, 3), 0, dict(strides=[2, 2])),
    "asym_pads": ((1, 2, 7, 6), (3, 2, 3, 2), 3, dict(pads=[0, 1, 2, 0], strides=[2, 1])),
    "dilated": ((1, 2, 9, 9), (3, 2, 3, 3), 3, dict(dilations=[2, 1], pads=[2, 1, 2, 1])),
    "grouped": ((1, 4, 6, 6), (6, 2, 3, 3), 6, dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ((1, 4, 6, 6), (4, 1, 3, 3), 4, dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),
    "same_upper_s2": ((1, 2, 7, 8), (3, 2, 3, 2), 3, dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower_s2": ((1, 2, 7, 8), (3, 2, 3, 2), 3, dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    "same_upper_even_k": ((1, 2, 6, 6), (3, 2, 4, 4), 3, dict(auto_pad="SAME_UPPER")),
    "valid": ((1, 2, 7, 8), (3, 2, 3, 2), 3, dict(auto_pad="VALID", strides=[2, 2])),
    "kernel_shape_attr": ((1, 2, 5, 5), (3, 2, 3, 3), 0, dict(kernel_shape=[3, 3])),
    "1d": ((2, 3, 11), (4, 3, 3), 4, dict(pads=[2, 1], strides=[2])),
    "3d": ((1, 2, 5, 6, 4), (3, 2, 3, 2, 2), 3, dict(pads=[1, 0, 1, 1, 1, 0], strides=[1, 2, 1])),
}


@pytest.mark.parametrize("case", list(CONV))
def test_conv(case):
    x_shape, w_shape, bias, attrs = CONV[case]
    assert_conv_parity("Conv", *_arrays(x_shape, w_shape, bias), **attrs)


@pytest.mark.parametrize("opset", [11, 21])
def test_conv_opsets(opset):
    assert_conv_parity("Conv", *_arrays((1, 2, 6, 5), (3, 2, 3, 3), 3), opset=opset, pads=[1, 0, 0, 1])


def test_conv_gradcheck():  # in float64 (onnxruntime has no float64 Conv: parity in float32)
    assert_conv_parity("Conv", *_arrays((1, 2, 5, 4), (2, 2, 2, 3), 2), gradcheck=True, pads=[1, 0, 0, 2], strides=[2, 1])


def test_conv_same_with_dilation_follows_the_spec():
    """onnxruntime refuses SAME with dilations; the bridge follows the ONNX spec (pads for
    the dilated kernel), checked against onnx's reference evaluator."""
    x, w, b = _arrays((1, 2, 9, 8), (3, 2, 3, 2), 3)
    model = _conv_model("Conv", x, w, b, auto_pad="SAME_LOWER", strides=[2, 1], dilations=[2, 3])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = bridge_outputs(model, {"x": x})[1][0]
    assert got.shape == want.shape == (1, 3, 5, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# ConvTranspose weight layout: (C_in, C_out / group, k...)
CONV_T = {
    "plain": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict()),
    "stride2_pad1": ((2, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "output_padding": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 3], pads=[1, 1, 1, 1], output_padding=[1, 2])),
    "output_padding_over_pads": ((1, 2, 4, 4), (2, 3, 3, 3), 3, dict(strides=[3, 2], output_padding=[2, 1])),
    "asym_pads": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], pads=[0, 1, 2, 0])),
    "asym_pads_output_padding": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], pads=[0, 1, 2, 0], output_padding=[1, 1])),
    "dilated": ((1, 3, 4, 5), (3, 2, 2, 3), 2, dict(strides=[2, 1], dilations=[2, 2], pads=[1, 0, 1, 0])),
    "grouped": ((1, 4, 3, 4), (4, 3, 3, 3), 6, dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0])),
    "depthwise": ((1, 4, 3, 4), (4, 1, 2, 2), 4, dict(group=4, strides=[2, 2])),
    "output_shape": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], output_shape=[8, 10])),
    "output_shape_odd": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], output_shape=[7, 9])),
    "output_shape_same_upper": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], output_shape=[7, 9], auto_pad="SAME_UPPER")),
    "output_shape_output_padding": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], output_shape=[10, 11], output_padding=[1, 1])),
    "same_upper": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "same_upper_output_padding": ((1, 3, 4, 5), (3, 2, 3, 3), 2, dict(strides=[2, 2], auto_pad="SAME_UPPER", output_padding=[1, 1])),
    "same_lower_k1": ((1, 3, 4, 5), (3, 2, 1, 1), 2, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "valid": ((1, 3, 4, 5), (3, 2, 3, 3), 0, dict(strides=[2, 2], auto_pad="VALID")),
    "1d": ((2, 3, 6), (3, 2, 3), 2, dict(strides=[2], pads=[1, 0], output_padding=[1])),
    "3d": ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), 2, dict(strides=[2, 1, 2], pads=[0, 1, 1, 0, 1, 0])),
}


@pytest.mark.parametrize("case", list(CONV_T))
def test_conv_transpose(case):
    x_shape, w_shape, bias, attrs = CONV_T[case]
    assert_conv_parity("ConvTranspose", *_arrays(x_shape, w_shape, bias), **attrs)


@pytest.mark.parametrize("opset", [11, 21])
def test_conv_transpose_opsets(opset):
    assert_conv_parity("ConvTranspose", *_arrays((1, 3, 4, 5), (3, 2, 3, 3), 2), opset=opset, strides=[2, 2], pads=[0, 1, 1, 0])


@pytest.mark.parametrize("attrs", [dict(strides=[2, 1], pads=[1, 0, 0, 1], output_padding=[1, 0]),
                                   dict(strides=[2, 2], pads=[1, 1, 1, 1])])
def test_conv_transpose_gradcheck(attrs):  # in float64, as test_conv_gradcheck
    assert_conv_parity("ConvTranspose", *_arrays((1, 2, 3, 3), (2, 2, 2, 3), 2), gradcheck=True, **attrs)


def test_conv_transpose_full_output_shape():
    """output_shape given as (N, C, spatial...) is read from its spatial tail (not
    type-inferable by onnx, so the output type is declared by hand)."""
    x, w, b = _arrays((1, 3, 4, 5), (3, 2, 3, 3), 2)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], output_shape=[1, 2, 8, 10])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 10])],
                              [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in (("w", w), ("b", b))])
    full = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=10)
    want = bridge_outputs(_conv_model("ConvTranspose", x, w, b, strides=[2, 2], output_shape=[8, 10]), {"x": x})[1][0]
    got = bridge_outputs(full, {"x": x})[1][0]
    np.testing.assert_array_equal(got, want)


def test_conv_rejects_4d_kernels():
    x, w, _ = _arrays((1, 1, 3, 3, 3, 3), (1, 1, 2, 2, 2, 2), 0)
    with pytest.raises(ConversionError, match="4-d windows"):
        bridge_outputs(_conv_model("Conv", x, w), {"x": x})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1,), (), (1, 5), (3, 1), (3, 5)])
def test_gemm(opset, trans_a, trans_b, c_shape):
    r = rng(1)
    a = r.standard_normal((4, 3) if trans_a else (3, 4)).astype(np.float32)
    inits = {"b": r.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)}
    inputs = ["a", "b"]
    if c_shape is not None:
        inits["c"] = np.asarray(r.standard_normal(c_shape), dtype=np.float32)
        inputs.append("c")
    for alpha, beta in [(1.0, 1.0), (0.5, -2.0)]:
        node = helper.make_node("Gemm", inputs, ["y"], alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)
        assert_parity(make_model([node], {"a": a}, ["y"], inits, opset=opset), {"a": a}, **TOL)


def test_gemm_both_inputs_and_gradcheck():
    r = rng(2)
    feeds = {"a": r.standard_normal((3, 4)), "b": r.standard_normal((5, 4)), "c": r.standard_normal((3, 5))}
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.7, beta=1.5, transB=1)
    module = assert_parity(make_model([node], feeds, ["y"], opset=13), feeds, **TOL)
    assert_gradcheck(module, feeds)
