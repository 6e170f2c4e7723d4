"""QuantizeLinear / DequantizeLinear: differential tests against onnxruntime and the
straight-through estimator of Q -> DQ pairs.

Tolerance: integer outputs must match exactly (atol 0: same rounding, same saturation);
float outputs atol 1e-6 + rtol 1e-6 of the largest value (one multiply in float32);
float16 outputs exactly.
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

from geta_onnx.bridge import run_bridge, to_torch
from geta_onnx.errors import ConversionError
from geta_onnx.graph import from_proto
from tests.helpers import assert_parity, make_model, rng

EXACT = dict(atol=0.0, rtol=0.0)
FLOAT = dict(atol=1e-6, rtol=1e-6)
NP_OF = {TP.UINT8: np.uint8, TP.INT8: np.int8, TP.UINT16: np.uint16, TP.INT16: np.int16}
OPSETS = [11, 13, 19, 21]  # since_version 10 (the loader's minimum opset is 11), 13, 19, 21


def _x(shape=(2, 3, 4), scale=3.0, seed=0):
    """Normal values, wide enough that some saturate."""
    return (scale * rng(seed).standard_normal(shape)).astype(np.float32)


def _scale(shape=(), seed=1):
    return (0.02 + 0.05 * np.abs(rng(seed).standard_normal(shape))).astype(np.float32)


def _zero_point(elem, shape=(), seed=2):
    lo, hi = {TP.UINT8: (100, 150), TP.INT8: (-20, 20), TP.UINT16: (30000, 35000), TP.INT16: (-99, 99)}[elem]
    return rng(seed).integers(lo, hi, size=shape).astype(NP_OF[elem])


def _q_module(module):
    (qual,) = [q for n, q in module.node_modules.items() if "Quantize" in n and "Dequantize" not in n]
    return module.get_submodule(qual)


# ---- QuantizeLinear alone: integer output --------------------------------------------------------
# (opset, granularity): QuantizeLinear-10 / DequantizeLinear-10 are per tensor only
GRANULARITIES = [(o, g) for o in OPSETS for g in ("tensor", "axis", "axis_negative") if o >= 13 or g == "tensor"]


@pytest.mark.parametrize("zp", [None, TP.UINT8, TP.INT8])
@pytest.mark.parametrize("opset,granularity", GRANULARITIES)
def test_quantize_parity(opset, granularity, zp):
    attrs, shape = {}, ()
    if granularity == "axis":
        attrs, shape = dict(axis=1), (3,)
    elif granularity == "axis_negative":
        attrs, shape = dict(axis=-1), (4,)
    inits = {"s": _scale(shape)}
    names = ["x", "s"]
    if zp is not None:
        inits["zp"] = _zero_point(zp, shape)
        names.append("zp")
    x = _x()
    model = make_model([helper.make_node("QuantizeLinear", names, ["y"], **attrs)], {"x": x}, ["y"], inits, opset=opset)
    m = assert_parity(model, {"x": x}, **EXACT)
    assert not _q_module(m).carrier  # a graph output keeps the ONNX integer dtype


def test_quantize_rounds_half_to_even_and_saturates():
    s = np.float32(0.5)  # x / s is exact: the .5 ties below are real ties
    x = np.array([-0.75, -0.25, 0.25, 0.75, 1.25, 1.75, 63.25, 63.75, 64.25, 200.0, -70.0], np.float32)
    for elem in (TP.UINT8, TP.INT8):
        zp = np.array(0 if elem == TP.INT8 else 2, NP_OF[elem])
        model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])], {"x": x}, ["y"],
                           {"s": np.array(s), "zp": zp}, opset=13)
        assert_parity(model, {"x": x}, **EXACT)


@pytest.mark.parametrize("elem", [TP.INT16, TP.UINT16])
def test_quantize_16_bit(elem):
    x = _x(scale=200.0)
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], axis=2)], {"x": x}, ["y"],
                       {"s": _scale((4,)) / 50, "zp": _zero_point(elem, (4,))}, opset=21)
    assert_parity(model, {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [19, 21])
def test_quantize_float16(opset):
    x = _x().astype(np.float16)
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])], {"x": x}, ["y"],
                       {"s": np.array(0.03, np.float16), "zp": np.array(7, np.int8)}, opset=opset)
    assert_parity(model, {"x": x}, **EXACT)


@pytest.mark.parametrize("block_size,axis", [(2, 1), (3, 1), (4, -1), (3, 0)])
def test_quantize_blocked(block_size, axis):
    x = _x((5, 7))
    s_shape = [5, 7]
    s_shape[axis] = -(-s_shape[axis] // block_size)  # ceil: the last block may be short
    inits = {"s": _scale(tuple(s_shape)), "zp": _zero_point(TP.INT8, tuple(s_shape))}
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], axis=axis, block_size=block_size)
    assert_parity(make_model([node], {"x": x}, ["y"], inits, opset=21), {"x": x}, **EXACT)


# ---- DequantizeLinear alone ------------------------------------------------------------------------
@pytest.mark.parametrize("elem", [TP.INT8, TP.UINT8])
@pytest.mark.parametrize("opset,granularity", [(o, g) for o, g in GRANULARITIES if g != "axis_negative"])
def test_dequantize_weight_initializer(opset, granularity, elem):
    """The weight-only pattern: an int8 initializer -> DQ -> float (output of a graph
    that also takes an input, so the model is not all-constant)."""
    r = rng(3)
    info = np.iinfo(NP_OF[elem])
    w = r.integers(info.min, info.max + 1, size=(4, 3)).astype(NP_OF[elem])
    shape, attrs = ((4,), dict(axis=0)) if granularity == "axis" else ((), {})
    inits = {"w": w, "s": _scale(shape), "zp": _zero_point(elem, shape)}
    x = _x((2, 4))
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wf"], **attrs),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    assert_parity(make_model(nodes, {"x": x}, ["wf", "y"], inits, opset=opset), {"x": x}, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("elem", [TP.INT8, TP.UINT8, TP.INT16, TP.UINT16, TP.INT32])
def test_dequantize_input(elem):
    """x as a graph input; int32 (bias) has no zero point."""
    np_t = {**NP_OF, TP.INT32: np.int32}[elem]
    info = np.iinfo(np_t)
    lo, hi = (-100000, 100000) if elem == TP.INT32 else (info.min, info.max + 1)
    q = rng(4).integers(lo, hi, size=(3, 5)).astype(np_t)
    inits = {"s": _scale((5,))}
    names = ["q", "s"]
    if elem != TP.INT32:
        inits["zp"] = _zero_point(elem, (5,))
        names.append("zp")
    model = make_model([helper.make_node("DequantizeLinear", names, ["y"], axis=1)], {"q": q}, ["y"], inits,
                       opset=21 if elem in (TP.INT16, TP.UINT16) else 13)
    assert_parity(model, {"q": q}, **FLOAT)


@pytest.mark.parametrize("opset", [19, 21])
def test_dequantize_float16(opset):
    q = rng(5).integers(-128, 128, size=(3, 4)).astype(np.int8)
    model = make_model([helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], {"q": q}, ["y"],
                       {"s": np.array(0.3, np.float16), "zp": np.array(-3, np.int8)}, opset=opset)
    assert_parity(model, {"q": q}, **EXACT)  # computed in float32, rounded once to float16


@pytest.mark.parametrize("block_size,axis", [(2, 0), (3, 1)])
def test_dequantize_blocked(block_size, axis):
    q = rng(6).integers(-128, 128, size=(4, 7)).astype(np.int8)
    s_shape = [4, 7]
    s_shape[axis] = -(-s_shape[axis] // block_size)
    inits = {"s": _scale(tuple(s_shape)), "zp": _zero_point(TP.INT8, tuple(s_shape))}
    node = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=axis, block_size=block_size)
    assert_parity(make_model([node], {"q": q}, ["y"], inits, opset=21), {"q": q}, **FLOAT)


def test_dequantize_int4_weight_initializer():
    x = _x((3, 2))
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [3, 2])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [3, 4])],
                              [helper.make_tensor("w", TP.INT4, [2, 4], [-8, -1, 0, 7, 3, 2, 1, -5]),
                               onnx.numpy_helper.from_array(np.array(0.5, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    assert_parity(model, {"x": x}, **FLOAT)


# ---- Q -> DQ chains: parity and the straight-through estimator ----------------------------------------
QDQ_CASES = {
    "uint8_tensor": (13, {}, (), TP.UINT8),
    "int8_axis": (13, dict(axis=1), (3,), TP.INT8),
    "uint8_no_zp_v10": (11, {}, (), None),
    "int8_v19": (19, dict(axis=-1), (4,), TP.INT8),
    "int16_v21": (21, dict(axis=1), (3,), TP.INT16),
    "uint16_v21": (21, {}, (), TP.UINT16),
    "int4_v21": (21, dict(output_dtype=TP.INT4), (), None),
    "uint4_v21": (21, dict(output_dtype=TP.UINT4), (), None),
    "int8_blocked_v21": (21, dict(axis=2, block_size=3), (2, 3, 2), TP.INT8),
}


@pytest.mark.parametrize("case", sorted(QDQ_CASES))
def test_qdq_chain(case):
    """x -> Q -> DQ -> Mul(w): parity with onnxruntime, Q in carrier mode, and the STE
    gradient reaches the graph input x and the float parameter after the pair."""
    opset, attrs, shape, zp = QDQ_CASES[case]
    x = _x(scale=0.5 if attrs.get("output_dtype") in (TP.INT4, TP.UINT4) else 3.0)
    s = _scale(shape) * (50 if zp in (TP.INT16, TP.UINT16) else 1) / (10 if "output_dtype" in attrs else 1)
    inits = {"s": s, "w": rng(7).standard_normal((2, 3, 4)).astype(np.float32)}
    names = ["q_in", "s"]
    if zp is not None:
        inits["zp"] = _zero_point(zp, shape)
        names.append("zp")
    dq_attrs = {k: v for k, v in attrs.items() if k != "output_dtype"}
    nodes = [helper.make_node("QuantizeLinear", ["x"] + names[1:], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q"] + names[1:], ["d"], **dq_attrs),
             helper.make_node("Mul", ["d", "w"], ["y"])]
    model = make_model(nodes, {"x": x}, ["y"], inits, opset=opset)
    m = assert_parity(model, {"x": x}, atol=1e-6, rtol=1e-6)
    assert _q_module(m).carrier


def test_qdq_straight_through_estimator():
    """d DQ(Q(x)) / dx is 1 where x / s + zp rounds into [0, 255] and 0 outside."""
    s, zp = np.float32(0.1), np.uint8(20)
    x = np.linspace(-4.0, 26.0, 61, dtype=np.float32)  # quantized range is [-2.0, 23.5]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    model = make_model(nodes, {"x": x}, ["y"], {"s": np.array(s), "zp": np.array(zp)}, opset=13)
    module = assert_parity(model, {"x": x}, **FLOAT)
    xt = torch.from_numpy(x).requires_grad_(True)
    module(xt).sum().backward()
    inside = (np.round(x / s) + 20 >= 0) & (np.round(x / s) + 20 <= 255)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(xt.grad.numpy(), inside.astype(np.float32), atol=1e-6)


def test_qdq_with_weight_dq_into_conv():
    """A QDQ Conv: int8 weight -> DQ, activation x -> Q -> DQ, Conv with a float bias."""
    r = rng(8)
    x = r.standard_normal((1, 2, 5, 5)).astype(np.float32)
    inits = {"w": r.integers(-127, 128, size=(3, 2, 3, 3)).astype(np.int8), "ws": _scale((3,)),
             "wzp": np.zeros(3, np.int8), "xs": np.array(0.02, np.float32), "xzp": np.array(128, np.uint8),
             "b": r.standard_normal(3).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], pads=[1, 1, 1, 1])]
    m = assert_parity(make_model(nodes, {"x": x}, ["y"], inits, opset=13), {"x": x}, atol=1e-5, rtol=1e-5)
    assert sorted(m.initializer_of[q] for q, _ in m.named_parameters()) == ["b"]  # scales stay constants


def test_quantized_tensor_also_a_graph_output_stays_integer():
    """Q's output is read by DQ and is a graph output: integer mode (ONNX dtype), so the
    pair gets no gradient — the documented limit of the carrier design."""
    x = _x()
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    model = make_model(nodes, {"x": x}, ["q", "y"], {"s": _scale(), "zp": np.array(3, np.int8)}, opset=13)
    m = assert_parity(model, {"x": x}, grad=False, **FLOAT)
    assert not _q_module(m).carrier
    assert run_bridge(m, {"x": x})[0].dtype == np.int8


# ---- rejected inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["QuantizeLinear", "DequantizeLinear"])
def test_float8_rejected(op):
    """Q to float8 (via output_dtype: a float8 zero-point initializer would already stop the
    builder) and DQ of a float8 input fail with a clear reason."""
    x = _x()
    if op == "QuantizeLinear":
        node = helper.make_node(op, ["x", "s"], ["y"], output_dtype=TP.FLOAT8E4M3FN)
        x_type, y_type = TP.FLOAT, TP.FLOAT8E4M3FN
    else:
        node = helper.make_node(op, ["x", "s"], ["y"])
        x_type, y_type = TP.FLOAT8E4M3FN, TP.FLOAT
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, list(x.shape))],
                              [helper.make_tensor_value_info("y", y_type, list(x.shape))],
                              [onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    with pytest.raises(ConversionError, match="float8"):
        to_torch(from_proto(model))
