"""Reduce* ops against onnxruntime (tolerance: the helpers' default, atol 1e-5 + rtol 1e-4
of the largest reference value; float16 rtol 2e-3; integer outputs must be exact).

Axes move from an attribute to an input at ReduceSum-13 / Reduce*-18: every op runs at
an opset on each side of its change, with keepdims, negative / repeated-order axes, no
axes (= all), and noop_with_empty_axes."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from geta_onnx.errors import ConversionError
from tests.helpers import assert_gradcheck, assert_parity, bridge_outputs, make_model, rng

OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
       "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"]



def _axes_input_since(op):
    return 13 if op == "ReduceSum" else 18


def _positive(op, x):
    """LogSum needs a positive sum; Prod gets values near 1 to stay well scaled."""
    if op == "ReduceLogSum":
        return np.abs(x) + 0.5
    if op == "ReduceProd":
        return (1.0 + 0.3 * x).astype(x.dtype)
    return x


def _model(op, x, opset, axes=None, **attrs):
    """axes as an attribute or as an int64 initializer, whichever `opset` wants."""
    inputs, inits = ["x"], {}
    if axes is not None:
        if opset >= _axes_input_since(op):
            inputs.append("axes")
            inits["axes"] = np.array(axes, dtype=np.int64)
        else:
            attrs["axes"] = axes
    return make_model([helper.make_node(op, inputs, ["y"], **attrs)], {"x": x}, ["y"], inits, opset=opset)


def assert_reduce_parity(op, x, opset, axes=None, gradcheck=False, exact=False, **attrs):
    model = _model(op, x, opset, axes, **attrs)
    tol = dict(atol=0, rtol=0) if exact else dict(rtol=2e-3) if x.dtype == np.float16 else {}
    module = assert_parity(model, {"x": x}, grad=x.dtype.kind == "f", **tol)
    if gradcheck:
        assert_gradcheck(module, {"x": x})
    return module


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("opset", [11, 13, 18, 21])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([-1, 0], 0), ([2, -3], 1), (None, 0), (None, 1)])
def test_reduce(op, opset, axes, keepdims):
    x = _positive(op, rng().standard_normal((3, 4, 5)).astype(np.float32))
    assert_reduce_parity(op, x, opset, axes, keepdims=keepdims)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("noop", [0, 1])
def test_empty_axes(op, noop):
    """An empty axes input reduces everything, or (noop_with_empty_axes) applies the op
    to each element alone: |x| for L1 / L2, x*x for SumSquare, log(x) for LogSum."""
    x = rng(1).standard_normal((2, 3)).astype(np.float32)
    if op == "ReduceLogSum":
        x = np.abs(x) + 0.5
    model = make_model([helper.make_node(op, ["x", "axes"], ["y"], noop_with_empty_axes=noop)], {"x": x}, ["y"],
                       {"axes": np.zeros(0, dtype=np.int64)}, opset=_axes_input_since(op))
    assert_parity(model, {"x": x})


@pytest.mark.parametrize("op", OPS)
def test_noop_without_axes_input(op):
    x = np.abs(rng(2).standard_normal((2, 3)).astype(np.float32)) + 0.5
    model = make_model([helper.make_node(op, ["x"], ["y"], noop_with_empty_axes=1)], {"x": x}, ["y"], opset=18)
    assert_parity(model, {"x": x})


@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op):  # float64 finite differences on a tiny tensor
    x = _positive(op, rng(3).standard_normal((2, 3, 2)))
    assert_reduce_parity(op, x, 18, [0, 2], gradcheck=True, keepdims=0)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_float_dtypes(op, dtype):
    x = _positive(op, rng(4).standard_normal((3, 4)).astype(dtype))
    assert_reduce_parity(op, x, 13, [1], keepdims=0)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("op", OPS)
def test_integers(op, dtype):
    """onnxruntime keeps the integer dtype: Mean truncates toward zero, L2 / LogSum /
    LogSumExp truncate their float result."""
    x = rng(5).integers(-9, 10, (3, 4)).astype(dtype)
    if op == "ReduceLogSum":
        x = np.abs(x) + 1
    if op == "ReduceProd":
        x = np.clip(x, -3, 3)
    assert_reduce_parity(op, x, 13, [1], keepdims=1, exact=True)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.bool_])
def test_max_min_small_types(op, dtype):  # int8 / uint8 since 12, bool since 20
    x = rng(6).integers(0, 100, (3, 4)).astype(dtype) if dtype != np.bool_ else rng(6).random((3, 4)) > 0.6
    assert_reduce_parity(op, x, 20, [1], keepdims=0, exact=True)


def test_axes_must_be_constant():
    x = rng().standard_normal((2, 3)).astype(np.float32)
    axes = np.array([1], dtype=np.int64)
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x", "axes"], ["y"])], "dynamic_axes",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                               helper.make_tensor_value_info("axes", TensorProto.INT64, axes.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    with pytest.raises(ConversionError, match="axes input must be a constant"):
        bridge_outputs(model, {"x": x, "axes": axes})


def test_axes_input_is_a_constant_buffer():
    x = rng().standard_normal((2, 3)).astype(np.float32)
    module = assert_reduce_parity("ReduceSum", x, 13, [1])
    assert module.tensor_of["axes"].startswith("consts.")
    assert not list(module.parameters())
