"""Differential tests, onnxruntime vs bridge, of the shape / layout ops (ops/shape.py) and
the tensor sources (ops/tensor.py).

These ops only move or create values, so float outputs must match exactly (atol 0);
gradients are checked by assert_parity wherever the output is float. Shape-like inputs are
tested both as constants (baked at build time) and as runtime tensors (graph inputs, or
computed by Shape -> Gather / Slice -> Concat), which the normaliser cannot fold.
Opsets below 11 (which load_model refuses) are run through `assert_legacy_parity`, which builds
the bridge from the raw proto without normalisation.
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import compare_outputs, run_bridge, run_onnxruntime, to_torch
from geta_onnx.graph import OnnxModel
from geta_onnx.graph.normalize import name_nodes
from tests.helpers import assert_parity, bridge_outputs, make_model, rng

EXACT = dict(atol=0.0, rtol=0.0)
I64 = np.int64


def rand(*shape, seed=0):
    return rng(seed).standard_normal(shape).astype(np.float32)


def ints(*values):
    return np.array(values, dtype=I64)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def assert_legacy_parity(proto, feeds, atol=0.0):
    """onnxruntime vs bridge for opsets < 11: no checker / normaliser on the bridge side."""
    want = run_onnxruntime(proto, feeds)
    module = to_torch(OnnxModel(name_nodes(proto))).eval()
    got = run_bridge(module, feeds)
    for d, g, w in zip(compare_outputs([o.name for o in proto.graph.output], got, want), got, want):
        assert d.shape_ok and np.asarray(g).dtype == np.asarray(w).dtype, (d.output, np.shape(g), np.shape(w))
        assert d.max_abs <= atol, (d.output, d.max_abs)


def typed_model(nodes, inputs, outputs, initializers=None, opset=17):
    """Like make_model, for graphs whose output shapes onnx inference cannot work out
    (a Reshape to a shape computed at run time before opset 15): `outputs` maps each name to
    (numpy dtype, rank)."""
    inits = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    g_in = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()]
    g_out = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.dtype(t)), [None] * r)
             for k, (t, r) in outputs.items()]
    model = helper.make_model(helper.make_graph(nodes, "test", g_in, g_out, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(onnx.IR_VERSION, 10)
    onnx.checker.check_model(model)
    return model


# ---- Reshape / Flatten -----------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 14, 19, 21])
@pytest.mark.parametrize("shape", [[0, -1], [-1], [4, 0, 2, 1], [2, 3, 4]])
def test_reshape_constant_shape(opset, shape):
    x = rand(2, 3, 4)
    m = make_model([node("Reshape", ["x", "shape"], ["y"])], {"x": x}, ["y"], {"shape": ints(*shape)}, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


@pytest.mark.parametrize("allowzero", [0, 1])
def test_reshape_allowzero(allowzero):
    # with allowzero=1 a 0 is a real zero-size dim; with 0 it copies the input dim
    x = rand(2, 0, 3) if allowzero else rand(2, 1, 3)
    shape = ints(0, 3) if allowzero else ints(0, 3, 1)
    m = make_model([node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)], {"x": x}, ["y"], {"shape": shape}, opset=14)
    assert_parity(m, {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [13, 21])
def test_reshape_runtime_shape_from_shape_ops(opset):
    # (batch, -1) with batch read from the input: Shape -> Gather -> Unsqueeze -> Concat
    x = rand(3, 2, 4)
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["b"], axis=0),
             node("Unsqueeze", ["b", "ax0"], ["b1"]), node("Concat", ["b1", "minus1"], ["target"], axis=0),
             node("Reshape", ["x", "target"], ["y"])]
    inits = {"zero": np.array(0, I64), "ax0": ints(0), "minus1": ints(-1)}
    assert_parity(typed_model(nodes, {"x": x}, {"y": (np.float32, 2)}, inits, opset=opset), {"x": x}, **EXACT)


def test_reshape_shape_as_graph_input():
    x, shape = rand(3, 4), ints(0, 2, -1)
    m = make_model([node("Reshape", ["x", "shape"], ["y"])], {"x": x, "shape": shape}, ["y"])
    assert_parity(m, {"x": x, "shape": shape}, **EXACT)


def test_reshape_legacy_opset():
    x = rand(2, 6)
    assert_legacy_parity(make_model([node("Reshape", ["x", "s"], ["y"])], {"x": x}, ["y"], {"s": ints(4, -1)}, opset=9), {"x": x})


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(opset, axis):
    x = rand(2, 3, 4)
    assert_parity(make_model([node("Flatten", ["x"], ["y"], axis=axis)], {"x": x}, ["y"], opset=opset), {"x": x}, **EXACT)


# ---- Transpose / Squeeze / Unsqueeze --------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("perm", [None, [0, 2, 1, 3], [3, 1, 0, 2]])
def test_transpose(opset, perm):
    x = rand(2, 3, 4, 5)
    attrs = {} if perm is None else {"perm": perm}
    assert_parity(make_model([node("Transpose", ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=opset), {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axes", [None, [1], [-1, 1]])
def test_squeeze(opset, axes):
    x = rand(2, 1, 3, 1)
    if axes is None:
        n = node("Squeeze", ["x"], ["y"])
        inits = {}
    elif opset < 13:
        n, inits = node("Squeeze", ["x"], ["y"], axes=axes), {}
    else:
        n, inits = node("Squeeze", ["x", "axes"], ["y"]), {"axes": ints(*axes)}
    assert_parity(make_model([n], {"x": x}, ["y"], inits, opset=opset), {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axes", [[0], [1, 3], [-1, 0], [-2]])
def test_unsqueeze(opset, axes):
    x = rand(2, 3)
    if opset < 13:
        n, inits = node("Unsqueeze", ["x"], ["y"], axes=axes), {}
    else:
        n, inits = node("Unsqueeze", ["x", "axes"], ["y"]), {"axes": ints(*axes)}
    assert_parity(make_model([n], {"x": x}, ["y"], inits, opset=opset), {"x": x}, **EXACT)


def test_squeeze_unsqueeze_runtime_axes():
    x, axes = rand(2, 3), ints(0, 3)
    nodes = [node("Unsqueeze", ["x", "axes"], ["u"]), node("Squeeze", ["u", "axes"], ["y"]), node("Identity", ["u"], ["z"])]
    m = typed_model(nodes, {"x": x, "axes": axes}, {"y": (np.float32, 2), "z": (np.float32, 4)}, opset=13)
    assert_parity(m, {"x": x, "axes": axes}, **EXACT)


def test_squeeze_unsqueeze_legacy_opset():
    x = rand(2, 1, 3)
    nodes = [node("Squeeze", ["x"], ["s"], axes=[1]), node("Unsqueeze", ["s"], ["y"], axes=[0, 2])]
    assert_legacy_parity(make_model(nodes, {"x": x}, ["y"], opset=9), {"x": x})


# ---- Concat / Split -----------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_with_learned_token(opset, axis):
    # the initializer is data (a learned token): it becomes a parameter and gets a gradient
    x = rand(2, 3, 4)
    shape = [2, 3, 4]
    shape[axis] = 1
    tok = rand(*shape, seed=1)
    m = assert_parity(make_model([node("Concat", ["x", "tok", "x"], ["y"], axis=axis)], {"x": x}, ["y"], {"tok": tok},
                                 opset=opset), {"x": x}, **EXACT)
    assert [n for n, _ in m.named_parameters()] == ["params.tok"]


@pytest.mark.parametrize("opset,split", [(11, None), (11, [1, 3]), (13, None), (13, [2, 2]), (18, [3, 1])])
def test_split_sizes_or_equal(opset, split):
    x = rand(3, 4)
    n_out = 2
    outs = [f"y{i}" for i in range(n_out)]
    if split is None:
        n, inits = node("Split", ["x"], outs, axis=1), {}
    elif opset < 13:
        n, inits = node("Split", ["x"], outs, axis=1, split=split), {}
    else:
        n, inits = node("Split", ["x", "split"], outs, axis=-1), {"split": ints(*split)}
    assert_parity(make_model([n], {"x": x}, outs, inits, opset=opset), {"x": x}, **EXACT)


@pytest.mark.parametrize("n_out,size", [(3, 7), (2, 6), (4, 10)])
def test_split_num_outputs(n_out, size):
    # Split-18 num_outputs: ceil(size / n) per chunk, the last one smaller
    x = rand(2, size)
    outs = [f"y{i}" for i in range(n_out)]
    m = make_model([node("Split", ["x"], outs, axis=1, num_outputs=n_out)], {"x": x}, outs, opset=18)
    assert_parity(m, {"x": x}, **EXACT)


def test_split_runtime_sizes_and_single_output():
    x, split = rand(5, 2), ints(2, 3)
    nodes = [node("Split", ["x", "split"], ["a", "b"]), node("Split", ["a"], ["c"], axis=1)]
    m = typed_model(nodes, {"x": x, "split": split}, {"b": (np.float32, 2), "c": (np.float32, 2)}, opset=13)
    assert_parity(m, {"x": x, "split": split}, **EXACT)


def test_split_legacy_opset():
    x = rand(6, 2)
    assert_legacy_parity(make_model([node("Split", ["x"], ["a", "b"], split=[2, 4])], {"x": x}, ["a", "b"], opset=9), {"x": x})


# ---- Expand / Tile ----------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("xshape,shape", [((3, 1), [2, 1, 4]), ((2, 3, 1), [3, 5]), ((3, 4), [1]), ((1,), [2, 3])])
def test_expand(opset, xshape, shape):
    x = rand(*xshape)
    m = make_model([node("Expand", ["x", "shape"], ["y"])], {"x": x}, ["y"], {"shape": ints(*shape)}, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


def test_expand_runtime_shape_and_learned_data():
    # a learned (1, 4) row broadcast to the batch of x, the shape read from x at run time
    x, row = rand(3, 4), rand(1, 4, seed=1)
    nodes = [node("Shape", ["x"], ["s"]), node("Expand", ["row", "s"], ["e"]), node("Concat", ["x", "e"], ["y"], axis=1)]
    m = assert_parity(make_model(nodes, {"x": x}, ["y"], {"row": row}), {"x": x}, **EXACT)
    assert "params.row" in dict(m.named_parameters())


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("repeats", [[1, 1], [2, 3], [3, 1]])
def test_tile(opset, repeats):
    x = rand(2, 3)
    m = make_model([node("Tile", ["x", "r"], ["y"])], {"x": x}, ["y"], {"r": ints(*repeats)}, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


def test_tile_runtime_repeats():
    x, r = rand(2, 3), ints(2, 2)
    assert_parity(make_model([node("Tile", ["x", "r"], ["y"])], {"x": x, "r": r}, ["y"]), {"x": x, "r": r}, **EXACT)


# ---- Shape / Size / ConstantOfShape / Range / Constant / Identity -----------------------------------

@pytest.mark.parametrize("opset,start,end", [(13, None, None), (15, 1, None), (15, -2, None), (15, 0, -1), (15, -10, 10),
                                              (19, 2, 1), (21, None, 2)])
def test_shape(opset, start, end):
    x = rand(2, 3, 4)
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    assert_parity(make_model([node("Shape", ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=opset), {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [13, 19, 21])
def test_size(opset):
    x = rand(2, 3, 4)
    assert_parity(make_model([node("Size", ["x"], ["y"])], {"x": x}, ["y"], opset=opset), {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [11, 20, 21])
@pytest.mark.parametrize("value", [None, np.array([2.5], np.float32), np.array([7], I64), np.array([3], np.int32),
                                   np.array([True])])
def test_constant_of_shape(opset, value):
    attrs = {} if value is None else {"value": onnx.numpy_helper.from_array(value)}
    nodes = [node("ConstantOfShape", ["shape"], ["y"], **attrs),  # constant shape
             node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"], ["z"], **attrs)]  # runtime shape
    x = rand(2, 3)
    m = make_model(nodes, {"x": x}, ["y", "z"], {"shape": ints(3, 1, 2)}, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


def test_constant_of_shape_scalar_output():
    m = make_model([node("ConstantOfShape", ["shape"], ["y"])], {"x": rand(1)}, ["y"], {"shape": np.zeros(0, I64)})
    assert_parity(m, {"x": rand(1)}, **EXACT)


@pytest.mark.parametrize("dtype,bounds", [(np.float32, (0.5, 3.2, 0.3)), (np.float32, (4.0, -1.0, -1.5)),
                                          (np.int64, (1, 9, 2)), (np.int32, (10, 2, -3)), (np.float64, (0.0, 1.0, 0.1))])
def test_range_constant_bounds(dtype, bounds):
    inits = {k: np.array(v, dtype) for k, v in zip(("start", "limit", "delta"), bounds)}
    m = make_model([node("Range", ["start", "limit", "delta"], ["y"])], {"x": rand(1)}, ["y"], inits)
    assert_parity(m, {"x": rand(1)}, atol=1e-6)  # onnxruntime accumulates start + delta + ... in float


def test_range_runtime_bounds():
    # arange(x.shape[1]) from the graph (positions of a sequence) and float graph inputs
    x = rand(2, 5)
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "one"], ["n"], axis=0),
             node("Range", ["zero", "n", "step"], ["pos"]), node("Range", ["a", "b", "c"], ["f"])]
    feeds = {"x": x, "a": np.array(1.0, np.float32), "b": np.array(-2.0, np.float32), "c": np.array(-0.75, np.float32)}
    inits = {"one": np.array(1, I64), "zero": np.array(0, I64), "step": np.array(2, I64)}
    assert_parity(make_model(nodes, feeds, ["pos", "f"], inits), feeds, **EXACT)


_CONSTANT_VALUES = [("value", onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))),
                    ("value", onnx.numpy_helper.from_array(np.array(4, I64))),
                    ("value_float", 1.5), ("value_floats", [1.0, -2.0]), ("value_int", 3), ("value_ints", [4, 5, 6])]


@pytest.mark.parametrize("opset,attr,value", [(o, a, v) for o in (11, 13, 21) for a, v in _CONSTANT_VALUES
                                              if a == "value" or o >= 12])  # value_float ... exist from Constant-12
def test_constant_graph_output(opset, attr, value):
    # a Constant that is a graph output stays a node (the normaliser folds the others)
    x = rand(2)
    nodes = [node("Constant", [], ["c"], **{attr: value}), node("Identity", ["x"], ["y"])]
    assert_parity(make_model(nodes, {"x": x}, ["c", "y"], opset=opset), {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [13, 14, 16, 19, 21])
def test_identity(opset):
    x = rand(2, 3)
    assert_parity(make_model([node("Identity", ["x"], ["y"])], {"x": x}, ["y"], opset=opset), {"x": x}, **EXACT)


# ---- Dropout ------------------------------------------------------------------------------------

def _dropout_model(opset, with_mask, ratio=0.3):
    x = rand(4, 50)
    outs = ["y", "mask"] if with_mask else ["y"]
    if opset < 12:
        n, inits = node("Dropout", ["x"], outs, ratio=ratio), {}
    else:
        n = node("Dropout", ["x", "ratio", "training_mode"], outs)
        inits = {"ratio": np.array(ratio, np.float32), "training_mode": np.array(False)}
    return make_model([n], {"x": x}, outs, inits, opset=opset), {"x": x}


@pytest.mark.parametrize("opset", [11, 12, 13])
@pytest.mark.parametrize("with_mask", [False, True])
def test_dropout_eval_is_identity(opset, with_mask):
    assert_parity(*_dropout_model(opset, with_mask), **EXACT)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("with_mask", [False, True])
def test_dropout_train_mode_drops(opset, with_mask):
    proto, feeds = _dropout_model(opset, with_mask, ratio=0.3)
    torch.manual_seed(0)
    _, outs = bridge_outputs(proto, feeds, train=True)
    x, y = feeds["x"], outs[0]
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    assert 0.5 < kept.mean() < 0.9  # ~70% kept of 200 elements
    if with_mask:
        assert outs[1].dtype == np.bool_ and (outs[1] == kept).all()


def test_dropout_legacy_mask_dtype():
    # Dropout-7 (opset 9): the mask has the input's dtype, not bool
    x = rand(2, 3)
    m = typed_model([node("Dropout", ["x"], ["y", "m"], ratio=0.2)], {"x": x}, {"y": (np.float32, 2), "m": (np.float32, 2)},
                    opset=9)
    assert_legacy_parity(m, {"x": x})


# ---- forms older than onnxruntime's opset 7 ----------------------------------------------------------

def _run_unchecked(nodes, feeds, outputs, initializers, opset):
    """The bridge on a hand-built proto of an opset onnxruntime no longer runs (numpy is the reference)."""
    inits = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    g_in = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()]
    g_out = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs]
    proto = helper.make_model(helper.make_graph(nodes, "old", g_in, g_out, inits), opset_imports=[helper.make_opsetid("", opset)])
    return run_bridge(to_torch(OnnxModel(name_nodes(proto))).eval(), feeds)


def test_opset_1_to_6_forms():
    x = rand(2, 6)
    out = _run_unchecked([node("Reshape", ["x"], ["r"], shape=[0, 3, -1]),  # Reshape-1: shape attribute
                          node("Concat", ["x", "x"], ["c"]),  # Concat-1: axis defaults to 1
                          node("Tile", ["x", "tiles", "axis"], ["t"]),  # Tile-1: one axis, `tiles` times
                          node("Split", ["x", "sizes"], ["s0", "s1"], axis=1),  # Split-1: sizes as an input
                          node("Dropout", ["x"], ["d"], is_test=1)],
                         {"x": x}, ["r", "c", "t", "s0", "s1", "d"],
                         {"tiles": np.array(3, I64), "axis": np.array(0, I64), "sizes": ints(4, 2)}, opset=1)
    want = [x.reshape(2, 3, 2), np.concatenate([x, x], 1), np.tile(x, (3, 1)), x[:, :4], x[:, 4:], x]
    for got, ref in zip(out, want):
        np.testing.assert_array_equal(got, ref)
