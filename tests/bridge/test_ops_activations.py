"""Differential tests (onnxruntime vs bridge) for the activations and the Softmax family.

Tolerance: assert_parity's default (atol 1e-5 + rtol 1e-4 of the largest reference
value); float16 cases state 1e-3. Gradients: every case checks finite gradients reach
the inputs and parameters; the smooth ops also run a float64 gradcheck.
"""
import numpy as np
import pytest
from onnx import helper

from geta_onnx.bridge import to_torch
from geta_onnx.errors import ConversionError
from geta_onnx.graph import from_proto
from tests.bridge.test_ops_math import assert_model_parity, check
from tests.helpers import make_model, rng

SHAPE = (2, 3, 4)


def normal(seed=0, shape=SHAPE, scale=2.0):
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("op, opsets", [
    ("Relu", [11, 13, 14]), ("Sigmoid", [11, 13]), ("Tanh", [11, 13]), ("Softplus", [11]),
    ("Softsign", [11]), ("HardSwish", [14])])
def test_plain(op, opsets):
    for opset in opsets:
        check(op, {"x": normal()}, opset=opset, gradcheck=True)


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "HardSwish"])
def test_plain_half(op):
    check(op, {"x": normal().astype(np.float16)}, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("op, attrs, opsets", [
    ("LeakyRelu", {}, [11, 16]), ("LeakyRelu", {"alpha": 0.2}, [11, 16]), ("LeakyRelu", {"alpha": -1.5}, [16]),
    ("Elu", {}, [11]), ("Elu", {"alpha": 0.5}, [11]),
    ("Selu", {}, [11]), ("Selu", {"alpha": 2.0, "gamma": 0.5}, [11]),
    ("HardSigmoid", {}, [11]), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [11])])
def test_attributes(op, attrs, opsets):
    for opset in opsets:
        check(op, {"x": normal(1)}, attrs=attrs, opset=opset, gradcheck=True)


# ---- PRelu --------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 16])
@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (5,), (1,), (), (1, 3, 1, 1), (3, 4, 5)])
def test_prelu_slope_weight(slope_shape, opset):
    # the slope broadcasts unidirectionally to x (2, 3, 4, 5): (3, 1, 1) is per channel
    r = rng(2)
    x = r.standard_normal((2, 3, 4, 5)).astype(np.float32)
    slope = np.asarray(r.uniform(0.05, 0.5, slope_shape), dtype=np.float32)
    m = check("PRelu", {"x": x}, inits={"slope": slope}, opset=opset, gradcheck=True)
    assert m.parameter("slope").grad is not None  # a weight slot: trainable even when scalar


def test_prelu_slope_input_and_integers():
    r = rng(3)
    check("PRelu", {"x": normal(3), "slope": r.uniform(0.1, 0.3, (4,)).astype(np.float32)}, opset=16)
    x = np.array([[-4, 3, -1], [0, -7, 2]], np.int64)
    check("PRelu", {"x": x}, inits={"slope": np.array([2, 3, 1], np.int64)}, opset=16)
    x = np.array([[4, 3, 1], [0, 7, 2]], np.uint32)  # computed in int64, cast back
    check("PRelu", {"x": x}, inits={"slope": np.array([2, 3, 1], np.uint32)}, opset=16)


# ---- Gelu ---------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [20, 21])
@pytest.mark.parametrize("approximate", [None, "none", "tanh"])
def test_gelu(approximate, opset):
    attrs = {} if approximate is None else {"approximate": approximate}
    check("Gelu", {"x": normal(4)}, attrs=attrs, opset=opset, gradcheck=True)


def test_gelu_rejects_unknown_approximation():
    x = normal(4)
    proto = make_model([helper.make_node("Gelu", ["x"], ["y"], approximate="erf")], {"x": x}, ["y"], opset=20)
    with pytest.raises(ConversionError, match="approximate='erf'"):
        to_torch(from_proto(proto, check=False))


# ---- Softmax LogSoftmax Hardmax ----------------------------------------------------------------
# opset < 13: normalise over the input coerced to 2-D at `axis` (default 1), i.e. over all
# dims from axis on; opset >= 13: over the single axis (default -1)
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -2])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op, axis, opset):
    attrs = {} if axis is None else {"axis": axis}
    check(op, {"x": normal(5)}, attrs=attrs, opset=opset, gradcheck=True)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_hardmax(axis, opset):
    attrs = {} if axis is None else {"axis": axis}
    x = rng(6).integers(0, 3, SHAPE).astype(np.float32)  # many ties: the first maximum wins
    check("Hardmax", {"x": x}, attrs=attrs, opset=opset)


def test_softmax_chain_gradients():
    # Softmax -> LogSoftmax -> Sigmoid on a 4-D input, one float64 gradcheck through all
    x = normal(7, (2, 2, 3, 2))
    nodes = [helper.make_node("Softmax", ["x"], ["a"], axis=1), helper.make_node("LogSoftmax", ["a"], ["b"], axis=2),
             helper.make_node("Sigmoid", ["b"], ["y"])]
    assert_model_parity(make_model(nodes, {"x": x}, ["y"], opset=12), {"x": x}, gradcheck=True)
