"""Differential tests, onnxruntime vs bridge, of ops/indexing.py: Gather, GatherElements,
Slice, TopK, ArgMax, ArgMin, CumSum, Trilu.

Indexing moves values, so outputs must match exactly (atol 0); CumSum adds in another
order than onnxruntime may, so it gets atol 1e-5 + rtol 1e-4 of the largest magnitude
(the helpers' default). Index-like inputs are tested as constants and as runtime tensors.
"""
import numpy as np
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import run_onnxruntime
from tests.bridge.test_ops_shape import assert_legacy_parity, typed_model
from tests.helpers import assert_parity, bridge_outputs, make_model, rng

EXACT = dict(atol=0.0, rtol=0.0)
I64 = np.int64
INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def rand(*shape, seed=0):
    return rng(seed).standard_normal(shape).astype(np.float32)


def distinct(*shape, seed=0):
    """Distinct values (a shuffled range) so that TopK / ArgMax have no ties."""
    return (rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.5 - 3).astype(np.float32)


def ints(*values):
    return np.array(values, dtype=I64)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


# ---- Gather / GatherElements -------------------------------------------------------------------

GATHER_INDICES = [np.array(1, I64), ints(0, 2, -1), np.array([[0, -3], [1, 1]], I64), np.array([2, 0], np.int32)]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", GATHER_INDICES, ids=["scalar", "neg", "2d", "int32"])
def test_gather_constant_indices(opset, axis, indices):
    x = rand(3, 4, 3)
    m = make_model([node("Gather", ["x", "i"], ["y"], axis=axis)], {"x": x}, ["y"], {"i": indices}, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


def test_gather_embedding_table_is_a_parameter():
    # token ids at run time into a learned table: the table gets gradients (gradcheck too)
    table, ids = rand(6, 3), np.array([[1, 5, -1], [0, 0, 2]], I64)
    m = make_model([node("Gather", ["table", "ids"], ["y"])], {"ids": ids}, ["y"], {"table": table})
    module = assert_parity(m, {"ids": ids}, **EXACT)
    assert list(dict(module.named_parameters())) == ["params.table"]


def test_gather_runtime_indices_gradcheck():
    x, i = rand(4, 3).astype(np.float64), ints(3, -4, 1)
    m = make_model([node("Gather", ["x", "i"], ["y"], axis=0)], {"x": x, "i": i}, ["y"])
    assert_parity(m, {"x": x, "i": i}, gradcheck=True, **EXACT)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(opset, axis):
    x = rand(3, 4)
    r = rng(1)
    shape = [3, 4]
    shape[axis] = 2
    idx = r.integers(-x.shape[axis], x.shape[axis], size=shape).astype(I64)
    m = make_model([node("GatherElements", ["x", "i"], ["y"], axis=axis)], {"x": x}, ["y"], {"i": idx}, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)
    m = make_model([node("GatherElements", ["x", "i"], ["y"], axis=axis)], {"x": x, "i": idx}, ["y"], opset=opset)
    assert_parity(m, {"x": x, "i": idx}, **EXACT)


# ---- Slice ------------------------------------------------------------------------------------

SLICES = {  # starts, ends, axes, steps
    "simple": ([1], [3], [1], None),
    "two_axes_default_axes": ([0, 1], [-1, 1000], None, None),
    "step2": ([0, 3], [4, 0], [1, 2], [2, -1]),
    "reverse_all": ([-1], [INT64_MIN], [0], [-1]),
    "reverse_clamped": ([10], [-10], [2], [-2]),
    "to_int_max": ([2], [INT64_MAX], [-1], [1]),
    "negative_axes": ([-3, 1], [-1, 100], [-2, 0], [1, 3]),
    "empty": ([2], [1], [0], [1]),
    "neg_step_empty": ([0], [3], [1], [-1]),
}


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("case", list(SLICES))
def test_slice_constant(opset, case):
    starts, ends, axes, steps = SLICES[case]
    x = rand(4, 5, 3)
    names = ["x", "starts", "ends"] + (["axes"] if axes is not None or steps is not None else [])
    inits = {"starts": ints(*starts), "ends": ints(*ends)}
    if axes is not None or steps is not None:
        inits["axes"] = ints(*(axes if axes is not None else range(len(starts))))
    if steps is not None:
        names.append("steps")
        inits["steps"] = ints(*steps)
    m = make_model([node("Slice", names, ["y"])], {"x": x}, ["y"], inits, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


@pytest.mark.parametrize("case", ["step2", "reverse_all", "negative_axes"])
def test_slice_runtime_inputs(case):
    starts, ends, axes, steps = SLICES[case]
    x = rand(4, 5, 3)
    feeds = {"x": x, "starts": ints(*starts), "ends": ints(*ends), "axes": ints(*axes), "steps": ints(*steps)}
    m = typed_model([node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], feeds, {"y": (np.float32, 3)})
    assert_parity(m, feeds, **EXACT)


def test_slice_bounds_from_shape():
    # x[:, x.shape[0]:] and x[x.shape[0] - 1 :: -1] with bounds read by Shape at run time
    x = rand(2, 6)
    nodes = [node("Shape", ["x"], ["n"], start=0, end=1), node("Slice", ["x", "n", "big", "one"], ["y"]),
             node("Shape", ["x"], ["m"], start=-1), node("Slice", ["x", "m", "small", "one", "minus1"], ["z"])]
    inits = {"big": ints(INT64_MAX), "small": ints(INT64_MIN), "one": ints(1), "minus1": ints(-1)}
    m = make_model(nodes, {"x": x}, ["y", "z"], inits, opset=15)
    assert_parity(m, {"x": x}, **EXACT)


def test_slice_gradcheck_negative_step():
    x = rand(5, 4).astype(np.float64)
    inits = {"s": ints(4, 0), "e": ints(0, 4), "a": ints(0, 1), "st": ints(-2, 3)}
    m = make_model([node("Slice", ["x", "s", "e", "a", "st"], ["y"])], {"x": x}, ["y"], inits)
    assert_parity(m, {"x": x}, gradcheck=True, **EXACT)


def test_slice_legacy_attributes():
    x = rand(4, 5)
    nodes = [node("Slice", ["x"], ["y"], starts=[1, -2], ends=[100, -1], axes=[0, 1]),
             node("Slice", ["x"], ["z"], starts=[1], ends=[3])]
    assert_legacy_parity(make_model(nodes, {"x": x}, ["y", "z"], opset=9), {"x": x})


# ---- TopK -------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("k", [1, 3])
def test_topk(axis, largest, k):
    x = distinct(4, 5)
    m = make_model([node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest)], {"x": x}, ["v", "i"], {"k": ints(k)},
                   opset=11)
    assert_parity(m, {"x": x}, **EXACT)


def test_topk_runtime_k_and_unsorted():
    # sorted=0 leaves the order to the implementation: compare as sets along the axis
    x, k = distinct(3, 6), ints(4)
    m = make_model([node("TopK", ["x", "k"], ["v", "i"], sorted=0)], {"x": x, "k": k}, ["v", "i"])
    want_v, want_i = run_onnxruntime(m, {"x": x, "k": k})
    _, (got_v, got_i) = bridge_outputs(m, {"x": x, "k": k})
    assert got_i.dtype == np.int64 and got_v.shape == want_v.shape
    np.testing.assert_array_equal(np.sort(got_v, axis=-1), np.sort(want_v, axis=-1))
    np.testing.assert_array_equal(np.sort(got_i, axis=-1), np.sort(want_i, axis=-1))
    np.testing.assert_array_equal(np.take_along_axis(x, got_i, -1), got_v)


def test_topk_legacy_opsets():
    x = distinct(3, 5)
    assert_legacy_parity(make_model([node("TopK", ["x"], ["v", "i"], k=2)], {"x": x}, ["v", "i"], opset=9), {"x": x})
    assert_legacy_parity(make_model([node("TopK", ["x", "k"], ["v", "i"], axis=0)], {"x": x}, ["v", "i"], {"k": ints(2)}, opset=10),
                  {"x": x})


# ---- ArgMax / ArgMin ----------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("opset,last", [(11, 0), (12, 0), (12, 1), (13, 0), (13, 1)])  # select_last_index: opset >= 12
@pytest.mark.parametrize("axis,keepdims", [(0, 1), (1, 0), (-1, 1)])
def test_arg_extreme_with_ties(op, opset, axis, keepdims, last):
    # small integers: many ties, so the first / last index rule is exercised
    x = rng(2).integers(0, 3, size=(3, 4, 5)).astype(np.float32)
    attrs = dict(axis=axis, keepdims=keepdims)
    if opset >= 12:
        attrs["select_last_index"] = last
    m = make_model([node(op, ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


# ---- CumSum -----------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 14])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(opset, axis, exclusive, reverse):
    x = rand(3, 4, 2)
    m = make_model([node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)], {"x": x}, ["y"],
                   {"axis": np.array(axis, I64)}, opset=opset)
    assert_parity(m, {"x": x})


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64])
def test_cumsum_runtime_axis_and_dtypes(dtype):
    x = rng(3).integers(-5, 5, size=(3, 4)).astype(dtype)
    feeds = {"x": x, "axis": np.array([1], np.int32)}
    m = make_model([node("CumSum", ["x", "axis"], ["y"], exclusive=1)], feeds, ["y"])
    assert_parity(m, feeds, gradcheck=dtype == np.float64, **EXACT)


# ---- Trilu ------------------------------------------------------------------------------------

@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, -1, 2, 10])
def test_trilu(upper, k):
    x = rand(2, 4, 5)
    names, inits = (["x"], {}) if k is None else (["x", "k"], {"k": np.array(k, I64)})
    m = make_model([node("Trilu", names, ["y"], upper=upper)], {"x": x}, ["y"], inits, opset=14)
    assert_parity(m, {"x": x}, **EXACT)


def test_trilu_runtime_k():
    feeds = {"x": rand(3, 3), "k": np.array(-1, I64)}
    assert_parity(make_model([node("Trilu", ["x", "k"], ["y"], upper=0)], feeds, ["y"], opset=14), feeds, **EXACT)


def test_index_modules_have_no_tensors():
    m = make_model([node("Gather", ["x", "i"], ["y"])], {"x": rand(3, 2)}, ["y"], {"i": ints(0)})
    module, _ = bridge_outputs(m, {"x": rand(3, 2)})
    assert not any(True for _ in module.ops.parameters()) and not any(True for _ in module.ops.buffers())
    assert torch.is_tensor(module.consts.i)
