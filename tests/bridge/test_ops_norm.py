"""Normalisation ops against onnxruntime (tolerance: atol 1e-4 + rtol 1e-4 of the largest
reference value: float32 statistics summed in another order; float16 rtol 5e-3), and
BatchNormalization's training behaviour against torch.nn.BatchNorm2d."""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from geta_onnx.bridge import run_bridge, run_onnxruntime, to_torch
from geta_onnx.errors import ConversionError
from geta_onnx.graph import from_proto
from tests.helpers import assert_gradcheck, assert_gradients, assert_parity, bridge_outputs, make_model, rng

TOL = dict(atol=1e-4, rtol=1e-4)



def _typed_model(node, x, outputs, inits, opset, check=True):
    """A one-node model whose output types are declared by hand: onnx shape inference
    gives none for GroupNormalization (a function op) or BatchNormalization's optional
    training outputs. outputs: name -> (numpy dtype, shape)."""
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.dtype(t)), s) for k, (t, s) in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    if check:
        onnx.checker.check_model(model)
    return model


def assert_bn_parity(model, x, gradcheck=False, tol=TOL):
    module = assert_parity(model, {"x": x}, **tol)
    if gradcheck:
        assert_gradcheck(module, {"x": x})
    return module


def _bn_arrays(c, dtype=np.float32, seed=0):
    r = rng(seed)
    return {"s": r.standard_normal(c).astype(dtype), "b": r.standard_normal(c).astype(dtype),
            "m": r.standard_normal(c).astype(dtype), "v": (r.random(c) + 0.5).astype(dtype)}


# ---- BatchNormalization -------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 14, 15, 21])  # since_versions 9, 14, 15 in range
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 3, 2)])
def test_batch_norm_inference(opset, shape):
    x = rng().standard_normal(shape).astype(np.float32)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3, momentum=0.8)
    module = assert_bn_parity(make_model([node], {"x": x}, ["y"], _bn_arrays(3), opset=opset), x, gradcheck=shape == (2, 3, 5))
    assert sorted(module.initializer_of[q] for q, _ in module.named_parameters()) == ["b", "s"]
    assert sorted(module.initializer_of[q] for q, _ in module.named_buffers() if q.startswith("state.")) == ["m", "v"]


def test_batch_norm_float64():
    x = rng().standard_normal((2, 3, 4)).astype(np.float64)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    assert_bn_parity(make_model([node], {"x": x}, ["y"], _bn_arrays(3, np.float64), opset=15), x)


@pytest.mark.parametrize("opset", [14, 15])
def test_batch_norm_training_mode_outputs(opset):
    """training_mode=1: Y with batch statistics, updated running stats (biased variance)
    as outputs, exactly as onnxruntime; the module's buffers are left alone in eval."""
    x = rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1, momentum=0.7)
    inits = _bn_arrays(3)
    module = assert_bn_parity(make_model([node], {"x": x}, ["y", "rm", "rv"], inits, opset=opset), x)
    np.testing.assert_array_equal(module.initializer_values()["m"], inits["m"])
    # in train mode the same outputs (from the statistics before the update), and the
    # buffers move as torch's would: momentum 1 - 0.7, unbiased variance
    with torch.no_grad():
        y_eval, rm_eval, _ = module(torch.from_numpy(x))
        module.train()
        y, rm, _ = module(torch.from_numpy(x))
    torch.testing.assert_close(y, y_eval)
    torch.testing.assert_close(rm, rm_eval)
    var = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(module.initializer_values()["v"], inits["v"] * 0.7 + var * 0.3, rtol=1e-5)


def test_batch_norm_saved_statistics_outputs():
    """Before opset 14 the optional outputs (running mean / var, saved mean / var) make
    it a training node; onnxruntime's saved_var is 1 / sqrt(batch_var + eps)."""
    x = rng(2).standard_normal((4, 3, 5)).astype(np.float32)
    outs = ["y", "rm", "rv", "sm", "sv"]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], outs, momentum=0.6)
    types = {"y": (np.float32, x.shape), **{k: (np.float32, (3,)) for k in outs[1:]}}
    assert_bn_parity(_typed_model(node, x, types, _bn_arrays(3), opset=12), x)


def test_batch_norm_stat_outputs_need_training_mode():
    x = rng().standard_normal((4, 3, 2)).astype(np.float32)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=0)
    types = {"y": (np.float32, x.shape), "rm": (np.float32, (3,)), "rv": (np.float32, (3,))}
    with pytest.raises(ConversionError, match="training_mode=1"):
        bridge_outputs(_typed_model(node, x, types, _bn_arrays(3), opset=15), {"x": x})


@pytest.mark.parametrize("opset,momentum", [(11, 0.9), (15, 0.75)])
def test_batch_norm_train_mode_matches_torch(opset, momentum):
    """module.train(): batch statistics, running buffers updated in place like
    torch.nn.BatchNorm2d(momentum = 1 - ONNX momentum), unbiased variance; then eval()
    matches onnxruntime run with the updated statistics written back."""
    r = rng(3)
    x1, x2 = (r.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1 for _ in range(2))
    inits = _bn_arrays(3)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-4, momentum=momentum)
    proto = make_model([node], {"x": x1}, ["y"], inits, opset=opset)
    module, _ = bridge_outputs(proto, {"x": x1})

    ref = nn.BatchNorm2d(3, eps=1e-4, momentum=1 - momentum)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(inits["s"]))
        ref.bias.copy_(torch.from_numpy(inits["b"]))
        ref.running_mean.copy_(torch.from_numpy(inits["m"]))
        ref.running_var.copy_(torch.from_numpy(inits["v"]))
    module.train()
    ref.train()
    for x in (x1, x2):
        xt = torch.from_numpy(x)
        got, want = module(xt), ref(xt)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        got.sum().backward()  # the batch-statistics graph is differentiable
    state = module.initializer_values()
    np.testing.assert_allclose(state["m"], ref.running_mean.numpy(), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(state["v"], ref.running_var.numpy(), atol=1e-6, rtol=1e-6)
    assert not np.allclose(state["m"], inits["m"])  # they did move

    module.eval()
    trained = onnx.ModelProto()
    trained.CopyFrom(proto)
    for t in trained.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(state[t.name], t.name))
    want = run_onnxruntime(trained, {"x": x2})[0]
    with torch.no_grad():
        got = module(torch.from_numpy(x2)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(got, ref.eval()(torch.from_numpy(x2)).numpy(), atol=1e-5, rtol=1e-5)


# ---- InstanceNormalization ------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 21])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 3, 4)])
def test_instance_norm(opset, shape):
    r = rng(4)
    x = r.standard_normal(shape).astype(np.float32)
    inits = {"s": r.standard_normal(3).astype(np.float32), "b": r.standard_normal(3).astype(np.float32)}
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)
    assert_bn_parity(make_model([node], {"x": x}, ["y"], inits, opset=opset), x, gradcheck=shape == (2, 3, 5))


# ---- LayerNormalization ---------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("outputs", [1, 3])
def test_layer_norm(axis, bias, outputs):
    r = rng(5)
    x = r.standard_normal((2, 3, 4)).astype(np.float32)
    norm_shape = x.shape[axis:]
    inits = {"s": r.standard_normal(norm_shape).astype(np.float32)}
    if bias:
        inits["b"] = r.standard_normal(norm_shape).astype(np.float32)
    names = ["y", "mean", "inv_std"][:outputs]
    node = helper.make_node("LayerNormalization", ["x", "s"] + (["b"] if bias else []), names, axis=axis, epsilon=1e-3)
    assert_bn_parity(make_model([node], {"x": x}, names, inits, opset=17), x, gradcheck=axis == -2 and outputs == 1)


@pytest.mark.parametrize("opset", [17, 21])
def test_layer_norm_broadcast_scale(opset):  # scale / bias broadcast against X.shape[axis:]
    r = rng(6)
    x = r.standard_normal((2, 3, 4)).astype(np.float32)
    inits = {"s": r.standard_normal(4).astype(np.float32), "b": r.standard_normal((1, 4)).astype(np.float32)}
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=1)
    assert_bn_parity(make_model([node], {"x": x}, ["y"], inits, opset=opset), x)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_layer_norm_dtypes(dtype):
    """Statistics in float32 for float16 inputs, float64 for float64; Mean / InvStdDev
    are float32 (stash_type 1) in both, as in onnxruntime."""
    r = rng(7)
    x = (r.standard_normal((2, 3, 8)) * 3 + 5).astype(dtype)
    inits = {"s": r.standard_normal(8).astype(dtype), "b": r.standard_normal(8).astype(dtype)}
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv_std"])
    tol = dict(atol=1e-3, rtol=5e-3) if dtype == np.float16 else TOL
    assert_bn_parity(make_model([node], {"x": x}, ["y", "mean", "inv_std"], inits, opset=17), x, tol=tol)


# ---- GroupNormalization -----------------------------------------------------------------

@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 3, 4)])
def test_group_norm(opset, groups, shape):
    """Opset 18: scale / bias per GROUP; opset 21: per CHANNEL. The onnx checker rejects
    the deprecated GroupNormalization-18, so the model is built unchecked and compared
    here rather than through assert_parity."""
    r = rng(8)
    x = r.standard_normal(shape).astype(np.float32)
    n = groups if opset < 21 else shape[1]
    inits = {"s": r.standard_normal(n).astype(np.float32), "b": r.standard_normal(n).astype(np.float32)}
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=groups, epsilon=1e-3)
    model = _typed_model(node, x, {"y": (np.float32, shape)}, inits, opset, check=opset >= 21)
    want = run_onnxruntime(model, {"x": x})[0]
    module = to_torch(from_proto(model, check=False)).eval()
    got = run_bridge(module, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, **TOL)
    assert_gradients(module, {"x": x})
    if shape == (2, 6, 5) and groups == 2:
        assert_gradcheck(module, {"x": x})


def test_group_norm_channels_must_split():
    x = rng().standard_normal((1, 5, 3)).astype(np.float32)
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)
    inits = {"s": np.ones(5, np.float32), "b": np.zeros(5, np.float32)}
    with pytest.raises(ConversionError, match="do not split"):
        bridge_outputs(_typed_model(node, x, {"y": (np.float32, x.shape)}, inits, 21), {"x": x})


def test_group_norm_18_is_refused_by_the_onnx_checker():
    """Worth knowing: a GroupNormalization-18 model only reaches the bridge unchecked."""
    x = np.zeros((1, 4, 3), np.float32)
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)
    model = _typed_model(node, x, {"y": (np.float32, x.shape)}, {"s": np.ones(2, np.float32), "b": np.zeros(2, np.float32)},
                         18, check=False)
    with pytest.raises(onnx.checker.ValidationError, match="deprecated"):
        onnx.checker.check_model(model)


# ---- LRN ----------------------------------------------------------------------------------

def _lrn_spec(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """The ONNX formula in numpy: channels c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    sq, out = x.astype(np.float64) ** 2, np.empty(x.shape, np.float64)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    for c in range(x.shape[1]):
        window = sq[:, max(0, c - lo): c + hi + 1].sum(axis=1)
        out[:, c] = x[:, c] / (bias + alpha / size * window) ** beta
    return out.astype(x.dtype)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(opset, size):
    x = rng(9).standard_normal((2, 6, 3, 3)).astype(np.float32)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.3, beta=0.6, bias=1.5)
    assert_bn_parity(make_model([node], {"x": x}, ["y"], opset=opset), x, gradcheck=size == 3)


@pytest.mark.parametrize("size,shape", [(2, (2, 6, 3, 3)), (4, (2, 6, 3, 3)), (3, (2, 5, 7)), (4, (1, 4, 2, 2, 3))])
def test_lrn_even_sizes_and_other_ranks(size, shape):
    """onnxruntime runs only odd sizes on 4-d inputs (and onnx's reference LRN loops over
    the batch instead of the channels): these are checked against the spec formula, with
    even windows one channel longer at the end, unlike torch's local_response_norm."""
    x = rng(10).standard_normal(shape).astype(np.float32)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.3, beta=0.6, bias=1.5)
    module, (got,) = bridge_outputs(make_model([node], {"x": x}, ["y"], opset=13), {"x": x})
    np.testing.assert_allclose(got, _lrn_spec(x, size, 0.3, 0.6, 1.5), atol=1e-5, rtol=1e-5)
    assert_gradients(module, {"x": x})


@pytest.mark.parametrize("axis,p", [(1, 2), (-1, 1), (0, 2)])
def test_lp_normalization(axis, p):
    x = rng().standard_normal((2, 3, 4)).astype(np.float32)
    node = helper.make_node("LpNormalization", ["x"], ["y"], axis=axis, p=p)
    assert_parity(make_model([node], {"x": x}, ["y"]), {"x": x}, gradcheck=True)
