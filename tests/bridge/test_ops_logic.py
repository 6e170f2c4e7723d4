"""Differential tests (onnxruntime vs bridge) for comparisons, boolean logic and Where.

Comparison and logic outputs are bool and must match exactly (dtype included); Where's
float output uses assert_parity's default tolerance and checks gradients to both branches.
"""
import numpy as np
import pytest

from tests.bridge.test_ops_math import check
from tests.helpers import rng

COMPARE = {"Equal": [11, 13, 19], "Less": [11, 13], "LessOrEqual": [12, 16], "Greater": [11, 13],
           "GreaterOrEqual": [12, 16]}


def small_ints(seed, shape, dtype):
    """Values in 0..3: many equal pairs, so Equal / LessOrEqual see both outcomes."""
    return rng(seed).integers(0, 4, shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.float64, np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare(op, dtype):
    for opset in COMPARE[op]:
        check(op, {"a": small_ints(0, (2, 3, 4), dtype), "b": small_ints(1, (3, 1), dtype)}, opset=opset)


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare_scalar_constant(op):
    # x > 0.5 with the threshold an initializer (a constant scalar), as in masking code
    x = rng(2).standard_normal((2, 5)).astype(np.float32)
    check(op, {"x": x}, inits={"t": np.array(0.5, np.float32)}, opset=COMPARE[op][-1])


def test_equal_bool():
    a = np.array([[True, False, True]])
    check("Equal", {"a": a, "b": np.array([[True], [False]])}, opset=11)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op, opset):
    a = np.array([[True, False, True, False]])
    b = np.array([[True], [False]])  # broadcast to (2, 4): every truth-table row
    check(op, {"a": a, "b": b}, opset=opset)


def test_not():
    check("Not", {"x": np.array([[True, False], [False, False]])}, opset=11)


@pytest.mark.parametrize("opset", [11, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint32])
def test_where(dtype, opset):
    r = rng(3)
    cond = r.integers(0, 2, (2, 1, 4)).astype(bool)
    x = np.abs(r.standard_normal((3, 4)) * 5).astype(dtype)
    y = np.abs(r.standard_normal((2, 3, 1)) * 5).astype(dtype)
    check("Where", {"c": cond, "x": x, "y": y}, opset=opset, gradcheck=dtype == np.float32)


def test_where_with_constant_branch():
    # masked_fill style: where(mask, -inf-ish constant, x)
    r = rng(4)
    feeds = {"m": r.integers(0, 2, (2, 3)).astype(bool), "x": r.standard_normal((2, 3)).astype(np.float32)}
    check("Where", feeds, inits={"fill": np.array(-1e4, np.float32)}, inputs=["m", "fill", "x"], opset=16)
