"""Differential tests (onnxruntime vs bridge) for the arithmetic and math ops:
Add Sub Mul Div Pow, the unary math ops, Clip, Min Max Mean Sum, Cast, CastLike.

Tolerance: assert_parity's default (atol 1e-5 + rtol 1e-4 of the largest reference value)
unless a case states otherwise; integer and bool outputs must match exactly (the
tolerance is far below 1). Opsets are the schema versions that changed in 11..21.

`check` / `assert_model_parity` are shared with test_ops_activations, test_ops_logic, test_ops_matmul.
"""
import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper
from torch import nn

from geta_onnx.bridge import run_bridge, run_onnxruntime, to_torch
from geta_onnx.errors import ConversionError
from geta_onnx.graph import OnnxModel, from_proto
from tests import helpers
from tests.helpers import make_model, rng


class _KeepNames(nn.Module):
    """Wraps a bridged module for helpers.assert_gradcheck, which deep-copies it: a
    deep-copied fx.GraphModule loses OnnxModule's input_names (torch rebuilds it from
    its __dict__ and graph only), so the wrapper carries them."""

    def __init__(self, module):
        super().__init__()
        self.module, self.input_names = module, list(module.input_names)

    def forward(self, *args):
        return self.module(*args)


def assert_model_parity(proto, feeds, *, gradcheck=False, **kw):
    """helpers.assert_parity, with its float64 gradcheck run through _KeepNames."""
    module = helpers.assert_parity(proto, feeds, gradcheck=False, **kw)
    if gradcheck:
        helpers.assert_gradcheck(_KeepNames(module), feeds)
    return module


def check(op, feeds, *, inits=None, inputs=None, opset=17, attrs=None, **kw):
    """One `op` node reading `inputs` (default: the feeds, then the initializers) -> out."""
    inits = inits or {}
    inputs = list(feeds) + list(inits) if inputs is None else inputs
    node = helper.make_node(op, inputs, ["out"], **(attrs or {}))
    return assert_model_parity(make_model([node], feeds, ["out"], inits, opset=opset), feeds, **kw)


def nonzero(r, shape, dtype=np.float32):
    """Values in +-[0.5, 2): safe denominators and well-conditioned gradients."""
    return np.asarray(r.uniform(0.5, 2.0, shape) * r.choice([-1, 1], shape), dtype=dtype)


# ---- Add Sub Mul Div ----------------------------------------------------------------------
BINARY = ["Add", "Sub", "Mul", "Div"]


@pytest.mark.parametrize("opset", [11, 13, 14])
@pytest.mark.parametrize("op", BINARY)
def test_binary_opsets(op, opset):
    r = rng()
    feeds = {"a": r.standard_normal((2, 3, 4)).astype(np.float32), "b": nonzero(r, (3, 1))}
    check(op, feeds, opset=opset, gradcheck=True)


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 3), ())])
@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcasting(op, shapes):
    r = rng(1)
    feeds = {"a": r.standard_normal(shapes[0]).astype(np.float32), "b": nonzero(r, shapes[1])}
    check(op, feeds)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("op", BINARY)
def test_binary_integers(op, dtype):
    # signed Div includes every sign pair: onnxruntime truncates toward zero (7 / -2 = -3)
    a = np.array([7, -7, 7, -7, 5, 0, 9], dtype=np.int64)
    b = np.array([2, 2, -2, -2, 3, 4, 1], dtype=np.int64)
    if dtype == np.uint8:
        a, b = np.abs(a), np.abs(b)
    check(op, {"a": a.astype(dtype), "b": b.astype(dtype)}, opset=14)


def test_binary_double_and_half():
    r = rng(2)
    check("Mul", {"a": r.standard_normal(5), "b": r.standard_normal(5)}, gradcheck=True)  # float64
    half = {"a": r.standard_normal(5).astype(np.float16), "b": r.standard_normal(5).astype(np.float16)}
    check("Add", half, atol=1e-3, rtol=1e-3)


def test_added_bias_is_a_parameter_and_scalar_a_constant():
    r = rng(3)
    x = r.standard_normal((2, 4)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "bias"], ["t"]), helper.make_node("Mul", ["t", "scale"], ["y"])]
    inits = {"bias": r.standard_normal(4).astype(np.float32), "scale": np.array(0.5, np.float32)}
    m = assert_model_parity(make_model(nodes, {"x": x}, ["y"], inits), {"x": x})
    assert m.parameter("bias").shape == (4,)
    assert m.tensor_of["scale"].startswith("consts.")


# ---- Pow ----------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 12, 13, 15])
def test_pow_float(opset):
    r = rng(4)
    feeds = {"x": r.uniform(0.5, 2.0, (2, 3)).astype(np.float32), "e": r.uniform(-2, 2, (3,)).astype(np.float32)}
    check("Pow", feeds, opset=opset, gradcheck=True)


@pytest.mark.parametrize("opset", [12, 15])
@pytest.mark.parametrize("base, exponent", [
    (np.float32, np.int64), (np.float32, np.int32), (np.float32, np.float64),
    (np.int64, np.int64), (np.int32, np.float32), (np.int64, np.float64)])
def test_pow_mixed_dtypes(base, exponent, opset):
    # the result has the base's dtype; integer bases truncate the float result
    # (2 ** -1 = 0, 3 ** 1.5 = 5), as onnxruntime does
    x = np.array([2, 3, -2, 1, 4, -3], dtype=base)
    e = np.array([-1, 1.5, 3, -3, 0.5, 2], dtype=np.float64)
    if np.issubdtype(exponent, np.integer) or np.issubdtype(base, np.floating):
        e = np.array([-1, 2, 3, -3, 0, 2])  # negative base with non-integer exponent: NaN
    feeds = {"x": x, "e": e.astype(exponent)}
    check("Pow", feeds, opset=opset, grad=False)


@pytest.mark.parametrize("value", [np.float32(2.0), np.float32(0.5), np.int64(3), np.float32(-1.5)])
def test_pow_constant_exponent_is_baked(value):
    r = rng(5)
    x = r.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
    m = check("Pow", {"x": x}, inits={"e": np.array(value)}, gradcheck=True)
    assert "exponent=" in repr(m)


def test_pow_exponent_that_broadcasts_is_not_baked():
    # a one-element exponent of higher rank than x changes the output shape: (3,) -> (1, 1, 3)
    x = np.array([0.5, 1.0, 2.0], np.float32)
    m = check("Pow", {"x": x}, inits={"e": np.full((1, 1, 1), 2, np.int64)})
    assert "exponent=" not in repr(m)


def test_pow_exponent_initializer_is_trainable():
    r = rng(6)
    x = r.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
    m = check("Pow", {"x": x}, inits={"e": r.uniform(1, 2, (3,)).astype(np.float32)})
    assert m.parameter("e").grad is not None


# ---- unary math ---------------------------------------------------------------------------
UNARY_DOMAIN = {  # op -> input sampler keeping values where the op and its gradient are finite
    "Sqrt": lambda r, s: r.uniform(0.2, 3.0, s), "Log": lambda r, s: r.uniform(0.2, 3.0, s),
    "Reciprocal": nonzero, "Exp": lambda r, s: r.standard_normal(s), "Neg": lambda r, s: r.standard_normal(s),
    "Abs": nonzero, "Floor": lambda r, s: r.uniform(-3, 3, s), "Ceil": lambda r, s: r.uniform(-3, 3, s),
    "Erf": lambda r, s: r.standard_normal(s),
}


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", sorted(UNARY_DOMAIN))
def test_unary(op, opset):
    x = UNARY_DOMAIN[op](rng(7), (2, 3, 4)).astype(np.float32)
    check(op, {"x": x}, opset=opset, gradcheck=op not in ("Floor", "Ceil"))


@pytest.mark.parametrize("op", ["Neg", "Abs"])
def test_unary_integers(op):
    check(op, {"x": np.array([-3, 0, 5, -128], np.int64)})
    check(op, {"x": np.array([-3, 0, 5, 100], np.int8)})


def test_unary_half():
    check("Sqrt", {"x": rng(8).uniform(0.2, 3, (6,)).astype(np.float16)}, atol=1e-3, rtol=1e-3)


# ---- Clip ---------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 12, 13])
@pytest.mark.parametrize("bounds", [(-0.5, 0.5), (-0.5, None), (None, 0.5), (None, None), (0.5, -0.5)])
def test_clip_constant_bounds(bounds, opset):
    x = rng(9).uniform(-1, 1, (2, 3, 4)).astype(np.float32)
    inits = {n: np.array(v, np.float32) for n, v in zip(("lo", "hi"), bounds) if v is not None}
    inputs = ["x"] + [n if v is not None else "" for n, v in zip(("lo", "hi"), bounds)]
    m = check("Clip", {"x": x}, inits=inits, inputs=inputs, opset=opset)
    for name in inits:  # static slots: constants, never trained
        assert m.tensor_of[name].startswith("consts.")


@pytest.mark.parametrize("opset", [12, 13])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_clip_integers(dtype, opset):
    x = np.array([0, 3, 7, 10, 250 if dtype == np.uint8 else -5], dtype=dtype)
    check("Clip", {"x": x}, inits={"lo": np.array(2, dtype), "hi": np.array(8, dtype)}, opset=opset)


def test_clip_runtime_bounds():
    # bounds computed in the graph (here: graph inputs) are read at runtime
    r = rng(10)
    feeds = {"x": r.uniform(-1, 1, (3, 4)).astype(np.float32), "lo": np.array(-0.3, np.float32)}
    check("Clip", feeds, inits={"hi": np.array(0.4, np.float32)}, inputs=["x", "lo", "hi"], opset=13)
    check("Clip", feeds, inputs=["x", "lo"], opset=13)


def test_clip_with_two_bounds_trains_as_relu6():
    """Two constant bounds run as F.hardtanh (one pass each way): bitwise the values of two
    clamps, and the gradient of PyTorch's ReLU6, 1 strictly inside the bounds, 0 at and
    beyond them; the elementwise op's gradient tests elsewhere check the rest."""
    import torch

    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    x = np.array([-1.0, 0.0, 0.5, 6.0, 7.0], np.float32)
    proto = make_model([node], {"x": x}, ["y"], {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, opset=13)
    module = to_torch(from_proto(proto))
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    y = y[0] if isinstance(y, (tuple, list)) else y
    assert torch.equal(y, torch.clamp(torch.tensor(x), 0, 6))
    y.sum().backward()
    relu6 = torch.tensor(x, requires_grad=True)
    nn.ReLU6()(relu6).sum().backward()
    assert xt.grad.tolist() == relu6.grad.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def assert_exact(proto, feeds, *, legacy=False):
    """Outputs equal to onnxruntime's bit for bit, NaN where it has NaN (assert_parity's
    tolerance scales with the largest reference value, which is NaN then). `legacy`:
    opsets < 11 are refused by the loader, but the converters are registered for every
    since_version, so build the OnnxModel directly to check the old forms anyway."""
    want = run_onnxruntime(proto, feeds)
    model = OnnxModel(proto) if legacy else from_proto(proto)
    got = run_bridge(to_torch(model), feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("attrs", [{"min": -0.5, "max": 0.25}, {"min": 0.0}, {"max": 0.1}, {}])
def test_clip_opset6_attributes(attrs):
    x = rng(11).uniform(-1, 1, (2, 5)).astype(np.float32)
    node = helper.make_node("Clip", ["x"], ["y"], name="clip", **attrs)
    assert_exact(make_model([node], {"x": x}, ["y"], opset=10), {"x": x}, legacy=True)


def test_clip_rejects_non_scalar_bounds():
    x = np.zeros((2, 2), np.float32)
    node = helper.make_node("Clip", ["x", "lo"], ["y"])
    proto = make_model([node], {"x": x}, ["y"], {"lo": np.zeros(2, np.float32)}, opset=13)
    with pytest.raises(ConversionError, match="scalar"):
        to_torch(from_proto(proto, check=False))


# ---- Min Max Mean Sum ----------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 12, 13])
@pytest.mark.parametrize("arity", [1, 2, 3])
@pytest.mark.parametrize("op", ["Min", "Max", "Mean", "Sum"])
def test_variadic(op, arity, opset):
    r = rng(12)
    shapes = [(2, 3, 4), (3, 1), (4,)][:arity]  # broadcasting to (2, 3, 4)
    feeds = {f"x{i}": r.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    check(op, feeds, opset=opset, gradcheck=True)


@pytest.mark.parametrize("op", ["Min", "Max"])
def test_min_max_integers_and_nan(op):
    a, b = np.array([1, -5, 7], np.int64), np.array([[0], [9]], np.int64)
    check(op, {"a": a, "b": b}, opset=13)
    nan = {"a": np.array([1.0, np.nan, 2.0], np.float32), "b": np.array([np.nan, 1.0, 3.0], np.float32)}
    assert_exact(make_model([helper.make_node(op, ["a", "b"], ["y"])], nan, ["y"], opset=13), nan)  # NaN from either side


# ---- Cast / CastLike ----------------------------------------------------------------------
FLOAT_VALUES = np.array([-2.7, -0.5, 0.0, 0.5, 2.5, 99.9, -100.2], np.float32)
CASTS = [  # (source values, target): out-of-range float -> int casts are undefined, not tested
    (FLOAT_VALUES, T.INT64), (FLOAT_VALUES, T.INT32), (FLOAT_VALUES, T.INT16), (FLOAT_VALUES, T.INT8),
    (np.abs(FLOAT_VALUES), T.UINT8), (np.abs(FLOAT_VALUES), T.UINT16), (np.abs(FLOAT_VALUES), T.UINT32),
    (np.abs(FLOAT_VALUES), T.UINT64), (FLOAT_VALUES, T.BOOL), (FLOAT_VALUES, T.FLOAT16), (FLOAT_VALUES, T.DOUBLE),
    (FLOAT_VALUES, T.FLOAT), (np.array([-3, 0, 7, 1 << 40]), T.FLOAT), (np.array([-3, 0, 7, 300]), T.INT32),
    (np.array([-3, 0, 7]), T.BOOL), (np.array([True, False]), T.FLOAT), (np.array([True, False]), T.INT64),
    (FLOAT_VALUES.astype(np.float64), T.FLOAT), (FLOAT_VALUES.astype(np.float16), T.FLOAT),
    (np.array([0, 7, 255], np.uint8), T.FLOAT), (np.array([-7, 100], np.int8), T.INT64),
]


@pytest.mark.parametrize("values, to", CASTS, ids=lambda v: T.DataType.Name(v) if isinstance(v, int) else str(v.dtype))
def test_cast(values, to):
    check("Cast", {"x": values}, attrs={"to": to}, opset=13)


@pytest.mark.parametrize("opset", [11, 13, 19, 21])
def test_cast_opsets_float_is_differentiable(opset):
    x = rng(13).standard_normal((2, 3)).astype(np.float32)
    check("Cast", {"x": x}, attrs={"to": T.DOUBLE}, opset=opset, gradcheck=True)


@pytest.mark.parametrize("to, saturate", [
    (T.BFLOAT16, 1), (T.FLOAT8E4M3FN, 1), (T.FLOAT8E4M3FNUZ, 1), (T.FLOAT8E4M3FNUZ, 0),
    (T.FLOAT8E5M2, 1), (T.FLOAT8E5M2, 0), (T.FLOAT8E5M2FNUZ, 1), (T.FLOAT8E5M2FNUZ, 0)])
def test_cast_low_precision_round_trip(to, saturate):
    # numpy holds neither bfloat16 nor float8: cast there and back to float32 in the graph.
    # Out-of-range and infinite values saturate to +-max, or become inf / NaN without saturate.
    x = np.array([0.1, 1.7, 300, -500, 1e6, -np.inf, np.inf, np.nan, 3.3e-3, -0.02], np.float32)
    attrs = {"to": to} if to == T.BFLOAT16 else {"to": to, "saturate": saturate}
    nodes = [helper.make_node("Cast", ["x"], ["c"], **attrs), helper.make_node("Cast", ["c"], ["y"], to=T.FLOAT)]
    assert_exact(make_model(nodes, {"x": x}, ["y"], opset=19), {"x": x})


@pytest.mark.parametrize("opset, to", [(19, None), (21, T.INT4), (21, T.UINT4), (13, T.STRING)])
def test_cast_unsupported(opset, to):
    x = np.ones(3, np.float32)
    attrs = {"to": T.FLOAT8E4M3FN, "saturate": 0} if to is None else {"to": to}
    proto = make_model([helper.make_node("Cast", ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=opset)
    with pytest.raises(ConversionError, match="saturate=0|no torch dtype"):
        to_torch(from_proto(proto))


@pytest.mark.parametrize("opset", [15, 19, 21])
def test_cast_like(opset):
    r = rng(14)
    x = (r.standard_normal((2, 3)) * 10).astype(np.float32)
    check("CastLike", {"x": x}, inits={"like": np.zeros(1, np.float64)}, opset=opset, gradcheck=True)  # a constant
    check("CastLike", {"x": x, "like": np.zeros(2, np.int64)}, opset=opset)  # a graph input
    check("CastLike", {"x": np.array([1, 0, 3], np.int32), "like": np.zeros(1, np.bool_)}, opset=opset)


def test_cast_like_float8_saturates():
    # the float8 target comes from a Cast in the graph (numpy holds no float8 initializer)
    x = np.array([1.0, 500.0, -1e5, np.nan, 0.3], np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["f8"], to=T.FLOAT8E4M3FN),
             helper.make_node("CastLike", ["x", "f8"], ["c"]), helper.make_node("Cast", ["c"], ["y"], to=T.FLOAT)]
    assert_exact(make_model(nodes, {"x": x}, ["y"], opset=19), {"x": x})


# ---- uint16 / uint32 / uint64 (torch implements little beyond casts for them) ---------------------
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Abs", "Clip"])
def test_wide_unsigned_is_computed_in_int64(op, dtype):
    if op in ("Max", "Min", "Clip") and dtype == np.uint16:
        pytest.skip("onnxruntime has no uint16 kernel for this op")
    a = np.array([7, 3, 0, np.iinfo(dtype).max], dtype)
    b = np.array([2, 9, 1, 3], dtype)  # 3 - 9 wraps around, max * 3 overflows
    if op == "Abs":
        check(op, {"a": a})
    elif op == "Clip":
        check(op, {"a": a}, inits={"lo": np.array(2, dtype), "hi": np.array(8, dtype)})
    else:
        check(op, {"a": a, "b": b})


def test_uint64_is_refused():
    a = np.array([1, 2], np.uint64)
    proto = make_model([helper.make_node("Add", ["a", "b"], ["y"])], {"a": a, "b": a}, ["y"])
    with pytest.raises(ConversionError, match="uint64"):
        to_torch(from_proto(proto))
