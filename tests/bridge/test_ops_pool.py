"""Pooling ops against onnxruntime (tolerance: the helpers' default, atol 1e-5 + rtol 1e-4
of the largest reference value; float16 cases rtol 2e-3).

The window geometry cases cover the torch/ONNX differences: asymmetric pads, pads over
half the window, ceil_mode windows that start in (or past) the end padding, and how
count_include_pad counts pads versus the cells ceil_mode adds past them."""
import numpy as np
import pytest
from onnx import helper

from geta_onnx.errors import ConversionError
from tests.helpers import assert_gradcheck, assert_parity, bridge_outputs, make_model, rng



def _x(shape, dtype=np.float32, seed=0):
    return rng(seed).standard_normal(shape).astype(dtype)


def assert_pool_parity(op, x, opset=19, outputs=("y",), gradcheck=False, **attrs):
    model = make_model([helper.make_node(op, ["x"], list(outputs), **attrs)], {"x": x}, list(outputs), opset=opset)
    tol = dict(rtol=2e-3) if x.dtype == np.float16 else {}
    module = assert_parity(model, {"x": x}, **tol)
    if gradcheck:
        assert_gradcheck(module, {"x": x})
    return module


# (input shape, attributes): every case runs for MaxPool and AveragePool
WINDOWS = {
    "k3s2p1": ((2, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "no_pads": ((1, 2, 7, 6), dict(kernel_shape=[2, 3])),
    "asym_pads": ((1, 2, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 1], pads=[0, 1, 2, 0])),
    "pad_over_half": ((1, 2, 7, 6), dict(kernel_shape=[3, 3], pads=[2, 2, 2, 2])),
    "ceil_sym": ((1, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "ceil_sym_partial": ((1, 2, 7, 8), dict(kernel_shape=[4, 3], strides=[3, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "ceil_asym": ((1, 2, 6, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1)),
    "ceil_start_in_pad": ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[3, 3], pads=[2, 2, 2, 2], ceil_mode=1)),
    "ceil_no_pads": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "same_upper": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    "valid": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID")),
    "valid_ceil": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID", ceil_mode=1)),
    "1d": ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 0])),
    "3d": ((1, 2, 5, 4, 6), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[1, 1, 0, 0, 1, 1])),
}
DILATED = {
    "dilated": ((1, 2, 9, 8), dict(kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 2, 1, 2])),
    "dilated_ceil": ((1, 2, 9, 8), dict(kernel_shape=[2, 2], strides=[2, 3], dilations=[3, 2], pads=[1, 0, 1, 1], ceil_mode=1)),
    "dilated_same": ((1, 2, 9, 8), dict(kernel_shape=[3, 2], strides=[2, 2], dilations=[2, 3], auto_pad="SAME_LOWER")),
}


@pytest.mark.parametrize("case", list(WINDOWS) + list(DILATED))
def test_max_pool(case):
    shape, attrs = {**WINDOWS, **DILATED}[case]
    assert_pool_parity("MaxPool", _x(shape), **attrs)


@pytest.mark.parametrize("case", list(WINDOWS) + list(DILATED))
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(case, count_include_pad):
    shape, attrs = {**WINDOWS, **DILATED}[case]
    assert_pool_parity("AveragePool", _x(shape), count_include_pad=count_include_pad, **attrs)


@pytest.mark.parametrize("opset", [11, 12, 18, 21])
def test_max_pool_opsets(opset):  # since_versions 11 and 12 (int8 / uint8) in range
    assert_pool_parity("MaxPool", _x((1, 2, 7, 7)), opset=opset, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1)


@pytest.mark.parametrize("opset", [11, 18, 19, 21])
def test_average_pool_opsets(opset):  # since_versions 11 and 19 (dilations) in range
    assert_pool_parity("AveragePool", _x((1, 2, 7, 7)), opset=opset, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0],
           ceil_mode=1, count_include_pad=1)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_max_pool_int8(dtype):
    x = rng().integers(0, 100, (1, 2, 6, 7)).astype(dtype)
    assert_pool_parity("MaxPool", x, opset=12, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 2, 1, 0])


@pytest.mark.parametrize("op,dtype", [("MaxPool", np.float64), ("MaxPool", np.float16), ("AveragePool", np.float16)])
def test_pool_dtypes(op, dtype):  # onnxruntime has no float64 AveragePool
    assert_pool_parity(op, _x((1, 2, 6, 7), dtype), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 2, 1, 0], ceil_mode=1)


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("case", ["k3s2p1", "asym_pads", "ceil_asym", "1d", "3d"])
def test_max_pool_indices(case, storage_order):
    shape, attrs = WINDOWS[case]
    assert_pool_parity("MaxPool", _x(shape), opset=12, outputs=("y", "i"), storage_order=storage_order, **attrs)


def test_max_pool_indices_dilated():
    shape, attrs = DILATED["dilated_ceil"]
    assert_pool_parity("MaxPool", _x(shape), opset=12, outputs=("y", "i"), **attrs)


def test_pool_gradcheck():  # float64 finite differences through the explicit-padding paths
    x = _x((1, 2, 5, 4), seed=1)
    attrs = dict(kernel_shape=[2, 3], strides=[2, 1], pads=[1, 0, 0, 2], ceil_mode=1)
    assert_pool_parity("MaxPool", x, gradcheck=True, **attrs)
    assert_pool_parity("AveragePool", x, gradcheck=True, count_include_pad=1, **attrs)
    assert_pool_parity("AveragePool", x, gradcheck=True, kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 1, 0, 1])
    assert_pool_parity("LpPool", x, opset=18, gradcheck=True, kernel_shape=[2, 2], strides=[2, 1], pads=[1, 0, 0, 1])


@pytest.mark.parametrize("opset,attrs", [
    (11, dict(kernel_shape=[3, 2], p=2)),
    (11, dict(kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 1, 2], p=3)),
    (18, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, p=1)),
    (18, dict(kernel_shape=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER")),
])
def test_lp_pool(opset, attrs):
    assert_pool_parity("LpPool", _x((1, 2, 7, 6)), opset=opset, **attrs)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_global_pools(op, shape):
    assert_pool_parity(op, _x(shape), opset=11, gradcheck=shape == (2, 3, 5))


def test_global_lp_pool_p3():
    assert_pool_parity("GlobalLpPool", _x((2, 3, 4, 5)), opset=11, p=3)


def test_five_d_window_is_refused():
    x = _x((1, 1, 3, 3, 3, 3))
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2, 2])], {"x": x}, ["y"], opset=12)
    with pytest.raises(ConversionError, match="4-d windows"):
        bridge_outputs(model, {"x": x})
