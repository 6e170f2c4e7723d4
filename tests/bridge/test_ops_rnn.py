"""LSTM and GRU: differential tests against onnxruntime, hand-built and exported models.

Tolerance: atol 1e-5 + rtol 1e-4 of the largest reference value (float32, different
summation order and onnxruntime's approximated sigmoid / tanh), the harness default.
Gradients are checked on every test; float64 gradcheck on tiny sizes for both the fused
(torch kernel) and the explicit-loop path.
"""
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import registry, run_bridge, run_onnxruntime, to_torch
from geta_onnx.errors import ConversionError
from geta_onnx.graph import from_proto
from tests.helpers import assert_gradcheck, assert_parity, make_model, rng

T, B, I, H = 4, 3, 5, 6  # sequence, batch, input, hidden
DIRECTIONS = ["forward", "reverse", "bidirectional"]


def _rnn_model(op, *, direction="forward", opset=14, bias=True, h0=False, c0=False, peepholes=False,
               lens=None, outputs=("y", "yh", "yc"), sizes=(T, B, I, H), seed=0, layout=0, **attrs):
    """One LSTM / GRU node. X, initial_h/c and sequence_lens are graph inputs (so gradients
    reach X and the states); W, R, B, P are initializers (parameters)."""
    t, b, i, h = sizes
    gates = 4 if op == "LSTM" else 3
    nd = 2 if direction == "bidirectional" else 1
    r = rng(seed)
    x_shape = (b, t, i) if layout else (t, b, i)
    s_shape = (b, nd, h) if layout else (nd, b, h)
    feeds = {"x": r.standard_normal(x_shape).astype(np.float32)}
    inits = {"W": (0.5 * r.standard_normal((nd, gates * h, i))).astype(np.float32),
             "R": (0.5 * r.standard_normal((nd, gates * h, h))).astype(np.float32)}
    names = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits["B"] = (0.5 * r.standard_normal((nd, 2 * gates * h))).astype(np.float32)
        names[3] = "B"
    if lens is not None:
        feeds["sl"] = np.asarray(lens, dtype=np.int32)
        names[4] = "sl"
    if h0:
        feeds["h0"] = r.standard_normal(s_shape).astype(np.float32)
        names[5] = "h0"
    if c0:
        feeds["c0"] = r.standard_normal(s_shape).astype(np.float32)
        names[6] = "c0"
    if peepholes:
        inits["P"] = (0.5 * r.standard_normal((nd, 3 * h))).astype(np.float32)
        names[7] = "P"
    while not names[-1]:
        names.pop()
    if op == "GRU":
        outputs = [o for o in outputs if o != "yc"]
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, names, list(outputs), hidden_size=h, direction=direction, **attrs)
    return make_model([node], feeds, [o for o in outputs if o], inits, opset=opset), feeds



def _rnn_of(module):
    """The converter module of the single LSTM / GRU node."""
    (qual,) = module.node_modules.values()
    return module.get_submodule(qual)


# ---- LSTM ------------------------------------------------------------------------------
LSTM_VARIANTS = {
    "plain": dict(bias=False),
    "bias_states": dict(h0=True, c0=True),
    "peepholes": dict(peepholes=True, h0=True, c0=True),
    "clip": dict(clip=0.7, h0=True),
    "input_forget": dict(input_forget=1),
    "lens": dict(lens=[4, 1, 3], h0=True, c0=True),
    "lens_empty": dict(lens=[0, 4, 2], h0=True, c0=True, peepholes=True),
    "lens_full": dict(lens=[4, 4, 4], h0=True),  # all full length: the fused path still runs
    "activations": dict(activations=["HardSigmoid", "Relu", "ScaledTanh"], activation_alpha=[0.3, 0.8],
                        activation_beta=[0.4, 1.2]),
}


@pytest.mark.parametrize("variant", sorted(LSTM_VARIANTS))
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_parity(direction, variant):
    kw = dict(LSTM_VARIANTS[variant])
    if "activations" in kw and direction == "bidirectional":
        kw["activations"] = ["Sigmoid", "Tanh", "Tanh", "Softsign", "LeakyRelu", "Elu"]
    model, feeds = _rnn_model("LSTM", direction=direction, **kw)
    assert_parity(model, feeds)


@pytest.mark.parametrize("opset", [11, 13, 14, 21])  # since_version 7 and 14
def test_lstm_opsets(opset):
    model, feeds = _rnn_model("LSTM", direction="bidirectional", opset=opset, h0=True, c0=True)
    assert_parity(model, feeds)


@pytest.mark.parametrize("outputs", [("y",), ("", "yh"), ("", "", "yc"), ("y", "", "yc")])
def test_lstm_output_subsets(outputs):
    model, feeds = _rnn_model("LSTM", outputs=outputs, h0=True)
    assert_parity(model, feeds)


# ---- GRU -------------------------------------------------------------------------------
GRU_VARIANTS = {
    "plain": dict(bias=False),
    "bias_state": dict(h0=True),
    "clip": dict(clip=0.5, h0=True),
    "lens": dict(lens=[2, 4, 1], h0=True),
    "lens_empty": dict(lens=[3, 0, 4], h0=True),
    "activations": dict(activations=["HardSigmoid", "Softsign"], activation_alpha=[0.25], activation_beta=[0.45]),
}


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("variant", sorted(GRU_VARIANTS))
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_parity(direction, variant, lbr):
    kw = dict(GRU_VARIANTS[variant])
    if "activations" in kw and direction == "bidirectional":
        kw["activations"] = kw["activations"] + ["Affine", "Tanh"]
    model, feeds = _rnn_model("GRU", direction=direction, linear_before_reset=lbr, **kw)
    assert_parity(model, feeds)


@pytest.mark.parametrize("opset", [11, 13, 14, 21])  # since_version 7 and 14
def test_gru_opsets(opset):
    model, feeds = _rnn_model("GRU", direction="bidirectional", opset=opset, h0=True, linear_before_reset=1)
    assert_parity(model, feeds)


# ---- layout 1 (batch first) ----------------------------------------------------------------
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_batch_first(op, direction):
    """onnxruntime rejects layout=1, so its layout-0 twin (same weights, transposed input
    and states) is the reference: Y [B, T, D, H] and Y_h [B, D, H] are transposes of it."""
    extra = dict(linear_before_reset=1) if op == "GRU" else dict(c0=True)
    bf, bf_feeds = _rnn_model(op, direction=direction, layout=1, h0=True, **extra)
    tf, _ = _rnn_model(op, direction=direction, layout=0, h0=True, **extra)
    tf_feeds = {k: np.ascontiguousarray(v.transpose(1, 0, 2)) for k, v in bf_feeds.items()}
    want = run_onnxruntime(tf, tf_feeds)
    module = to_torch(from_proto(bf)).eval()
    got = run_bridge(module, bf_feeds)
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), atol=1e-5, rtol=1e-4)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), atol=1e-5, rtol=1e-4)


# ---- fused kernel vs explicit loop -------------------------------------------------------------
def _outputs_and_grads(module, feeds):
    module.zero_grad()
    args = [torch.from_numpy(feeds[n].copy()) for n in module.input_names]
    for a in args:
        if a.is_floating_point():
            a.requires_grad_(True)
    outs = module(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(0)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    grads = [a.grad.clone() for a in args if a.is_floating_point()]
    grads += [p.grad.clone() for p in module.parameters()]
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_fused_matches_loop(op, direction):
    extra = dict(linear_before_reset=1) if op == "GRU" else dict(c0=True)
    model, feeds = _rnn_model(op, direction=direction, h0=True, **extra)
    module = to_torch(from_proto(model)).eval()
    rnn = _rnn_of(module)
    assert rnn.fused, "default attributes should take torch's fused kernel"
    fused_out, fused_grads = _outputs_and_grads(module, feeds)
    rnn.fused = False
    loop_out, loop_grads = _outputs_and_grads(module, feeds)
    for a, b in zip(fused_out + fused_grads, loop_out + loop_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("op,kw", [
    ("LSTM", dict(clip=1.0)), ("LSTM", dict(peepholes=True)), ("LSTM", dict(input_forget=1)),
    ("LSTM", dict(activations=["Sigmoid", "Tanh", "Relu"])), ("GRU", dict(linear_before_reset=0)),
])
def test_loop_path_chosen(op, kw):
    model, _ = _rnn_model(op, **kw)
    assert not _rnn_of(to_torch(from_proto(model))).fused


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_gradcheck_float64(op, fused):
    extra = dict(linear_before_reset=1) if op == "GRU" else dict(c0=True)
    model, feeds = _rnn_model(op, direction="bidirectional", sizes=(3, 2, 2, 2), h0=True, **extra)
    module = to_torch(from_proto(model))
    _rnn_of(module).fused = fused  # the loop path is checked on the same node
    assert_gradcheck(module, feeds)


def test_gradcheck_masked_lengths():
    model, feeds = _rnn_model("GRU", direction="bidirectional", sizes=(3, 3, 2, 2), lens=[3, 1, 2], h0=True)
    assert_gradcheck(to_torch(from_proto(model)), feeds)


# ---- models exported from torch.nn ---------------------------------------------------------------
def _export(net, x, names):
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=names)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
def test_exported_torch_rnn(cls):
    """nn.LSTM / nn.GRU (2 layers, bidirectional, batch_first) exported with the legacy
    exporter: parity with onnxruntime, with the torch module itself, and every ONNX weight
    is a trainable parameter."""
    torch.manual_seed(0)
    net = cls(input_size=I, hidden_size=H, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.from_numpy(rng().standard_normal((B, T, I)).astype(np.float32))
    model = _export(net, x, ["y", "hn"] + (["cn"] if cls is torch.nn.LSTM else []))
    assert sum(n.op_type == cls.__name__ for n in model.graph.node) == 2
    registry._ensure_loaded()
    others = sorted({n.op_type for n in from_proto(model).nodes if registry.lookup(n.domain, n.op_type, 17) is None})
    if others:  # the exporter's shape plumbing (Shape, Expand, Transpose ...) lives in other modules
        pytest.skip(f"converters of {others} are not registered yet")
    feeds = {"x": x.numpy()}
    module = assert_parity(model, feeds)
    with torch.no_grad():
        want = net(x)
    got = run_bridge(module, feeds)
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5, rtol=1e-4)
    assert len(list(module.parameters())) >= 2 * 2 * 2  # W and R (+ B) of each layer


# ---- rejected attributes -------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,match", [
    (dict(activations=["Sigmoid", "Gelu", "Tanh"]), "not ONNX RNN activations"),
    (dict(activations=["Sigmoid", "Tanh"]), "expected 3 per direction"),
])
def test_rejected_attributes(attrs, match):
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "W"),
                               onnx.numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(ConversionError, match=match):
        to_torch(from_proto(model, check=False))
