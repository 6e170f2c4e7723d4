"""attach_quantizers on small models built in code: where quantizers go, signedness,
sharing, per-channel axes (Transpose'd legacy weights included), skip / exclude, and
that the rewrite keeps the fp32 function (bitwise) and the gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig
from geta_onnx.errors import GetaError
from geta_onnx.graph import from_proto
from geta_onnx.quant import attach_quantizers
from geta_onnx.quant.calibrate import calibrate
from geta_onnx.quant.nonneg import nonnegative_tensors
from tests.helpers import make_model, rng


def _w(*shape, seed=0):
    return (rng(seed).standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _cnn():
    """c1..c6 Conv and a Gemm; c3 and c4 share weight w3. Activation inputs:
    c1 x (graph input: signed), c2 Relu (unsigned), c3 Clip[0, 6] (unsigned), c4 Clip[-1, 1]
    (signed), c5 MaxPool(Concat(Relu, Clip[0, 6])) (unsigned), c6 Concat(Relu, Conv) (signed),
    gemm Flatten(GlobalAveragePool(Sigmoid)) (unsigned)."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["a1"], name="c1", pads=[1, 1, 1, 1]),
        n("Relu", ["a1"], ["a2"], name="relu"),
        n("Conv", ["a2", "w2"], ["a3"], name="c2"),
        n("Clip", ["a3", "zero", "six"], ["a4"], name="clip06"),
        n("Conv", ["a4", "w3"], ["a5"], name="c3"),
        n("Clip", ["a3", "minus1", "one"], ["a6"], name="clip11"),
        n("Conv", ["a6", "w3"], ["a7"], name="c4"),
        n("Concat", ["a2", "a4"], ["a8"], name="cat", axis=1),
        n("MaxPool", ["a8"], ["a9"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["a9", "w5"], ["a10"], name="c5"),
        n("Concat", ["a2", "a7"], ["a11"], name="cat2", axis=1),
        n("Conv", ["a11", "w6"], ["a12"], name="c6"),
        n("Sigmoid", ["a12"], ["a13"], name="sig"),
        n("GlobalAveragePool", ["a13"], ["a14"], name="gap"),
        n("Flatten", ["a14"], ["a15"], name="flat"),
        n("Gemm", ["a15", "wg", "bg"], ["y"], name="gemm", transB=1),
    ]
    inits = {"w1": _w(4, 3, 3, 3, seed=1), "w2": _w(4, 4, 1, 1, seed=2), "w3": _w(4, 4, 1, 1, seed=3),
             "w5": _w(4, 8, 1, 1, seed=5), "w6": _w(2, 8, 1, 1, seed=6), "wg": _w(3, 2, seed=7),
             "bg": np.full(3, 0.1, np.float32), "zero": np.float32(0), "six": np.float32(6),
             "minus1": np.float32(-1), "one": np.float32(1)}
    x = rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y", "a5", "a10"], inits, opset=13), x


def _attention_like():
    """Legacy-exporter style: q and k read Transpose(W) (W: (out, in)); v reads W (in, out)
    directly; all three read x, as does a residual Neg. Two Gemm (transB 1 and 0) read o."""
    n = helper.make_node
    nodes = [
        n("Transpose", ["wq"], ["wqT"], name="q/Transpose", perm=[1, 0]),
        n("MatMul", ["x", "wqT"], ["q"], name="q/MatMul"),
        n("Transpose", ["wk"], ["wkT"], name="k/Transpose", perm=[1, 0]),
        n("MatMul", ["x", "wkT"], ["k"], name="k/MatMul"),
        n("MatMul", ["x", "wv"], ["v"], name="v/MatMul"),
        n("Add", ["q", "k"], ["s"], name="add1"),
        n("Add", ["s", "v"], ["o3"], name="add2"),
        n("Reshape", ["o3", "shape"], ["o"], name="flat"),
        n("Gemm", ["o", "wg"], ["y"], name="g1", transB=1),
        n("Gemm", ["o", "wh"], ["y2"], name="g2"),
        n("Neg", ["x"], ["r"], name="residual"),
    ]
    inits = {"wq": _w(4, 6, seed=1), "wk": _w(4, 6, seed=2), "wv": _w(6, 4, seed=3), "wg": _w(3, 4, seed=4),
             "wh": _w(4, 5, seed=5), "shape": np.array([-1, 4], np.int64)}
    x = rng(9).standard_normal((2, 5, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y", "y2", "r"], inits, opset=13), x


def _attach(proto, **cfg):
    model = from_proto(proto)
    module = to_torch(model).eval()
    cfg.setdefault("float_thin_convs", False)  # the small convs here are thin stems: quantize them
    return model, module, attach_quantizers(module, model, QuantConfig(**cfg))


def test_cnn_sites_and_signedness():
    _, module, plan = _attach(_cnn()[0])
    assert [la.node for la in plan.layers] == ["c1", "c2", "c3", "c4", "c5", "c6", "gemm"]
    assert len(plan.weight_sites()) == 7 and len(plan.weight_quantizers()) == 6  # c3, c4 share w3
    assert plan.sites_of("c3")[0].quantizer == plan.sites_of("c4")[0].quantizer == "quantizers.w_w3"
    signed = {s.node: s.signed for s in plan.act_sites()}
    assert signed == {"c1": True, "c2": False, "c3": False, "c4": True, "c5": False, "c6": True, "gemm": False}
    for s in plan.act_sites():
        assert plan.quantizer(s.quantizer).signed == s.signed and plan.quantizer(s.quantizer).kind == "act"
    assert all(s.signed for s in plan.weight_sites())
    assert plan.sites_of("c2")[1].tensor == "a2" and plan.sites_of("gemm")[1].input_index == 0
    assert plan.layer("c5").macs == 4 * 8 * 3 * 3  # (C_out, H, W) x C_in x 1x1 per sample
    assert not plan.layer("c1").skipped and plan.layer("gemm").act_quantizer == "quantizers.a_a15"


def _outputs(module, x):
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("build", [_cnn, _attention_like])
@pytest.mark.parametrize("per_channel", [False, True])
def test_disabled_is_bitwise_fp32_and_gradients_flow(build, per_channel):
    proto, x = build()
    ref = to_torch(from_proto(proto)).eval()
    _, module, plan = _attach(proto, per_channel=per_channel)
    for q in plan.quantizers().values():
        q.enabled = False
    for a, b in zip(_outputs(ref, x), _outputs(module, x)):
        assert torch.equal(a, b)
    for q in plan.quantizers().values():
        q.enabled = True
    # data ranges: uncalibrated placeholders (q_m = 1 everywhere) would give an output quantizer
    # and the activation quantizer after it the same grid, where d gets no gradient
    calibrate(module, plan, [(torch.from_numpy(x),)], QuantConfig())
    module.train()
    outs = module(torch.from_numpy(x))
    gen = torch.Generator().manual_seed(0)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs).backward()
    names = dict(module.named_parameters())
    assert any(n.startswith("params.") for n in names) and any(n.endswith(".q_m") for n in names)
    for name, p in names.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith(".d") or (name.endswith(".q_m") and ".w_" in name):
            assert bool((p.grad != 0).all()), name  # max|W| sits on the boundary: q_m gets its gradient


def test_attention_sharing_axes_and_readers():
    _, module, plan = _attach(_attention_like()[0], per_channel=True)
    acts = plan.act_quantizers()
    assert list(acts) == ["quantizers.a_x", "quantizers.a_o"]  # q, k, v share one; g1, g2 share one
    assert {s.node for s in plan.act_sites() if s.quantizer == "quantizers.a_x"} == {"q/MatMul", "k/MatMul", "v/MatMul"}
    w = {s.node: s for s in plan.weight_sites()}
    la = {layer.node: layer for layer in plan.layers}
    q, v = la["q/MatMul"], la["v/MatMul"]
    assert (q.axis, q.out_axis, q.transpose, q.perm) == (1, 0, "q/Transpose", (1, 0))
    assert w["q/MatMul"].tensor == "wq" and w["q/MatMul"].per_channel
    assert (v.axis, v.out_axis, v.transpose, v.perm) == (1, 1, None, None)
    assert (la["g1"].axis, la["g2"].axis) == (0, 1)  # Gemm: transB=1 -> 0, transB=0 -> 1
    wq = module.parameter("wq").detach()
    q = plan.quantizer(w["q/MatMul"].quantizer)
    assert q.d.shape == (4,) and torch.equal(q.q_m.detach(), wq.abs().amax(dim=1))  # per output row of W
    assert torch.allclose(q.bits(), torch.full((4,), 16.0), atol=1e-3)  # d = d(weight_bits_start)
    neg = next(n for n in module.graph.nodes if n.op == "call_module" and n.target == module.node_modules["residual"])
    assert neg.args[0].target == "quantizers.a_x"  # every reader sees the quantized x, as in the QDQ export
    assert not plan.output_sites()  # no conv: no output quantizers


def test_conv_transpose_per_channel_axis():
    n = helper.make_node
    nodes = [n("ConvTranspose", ["x", "wt"], ["a"], name="up", strides=[2, 2]),
             n("Conv", ["a", "wc"], ["y"], name="conv")]
    proto = make_model(nodes, {"x": rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)}, ["y"],
                       {"wt": _w(3, 2, 2, 2, seed=1), "wc": _w(5, 2, 1, 1, seed=2)})
    _, module, plan = _attach(proto, per_channel=True)
    w = {s.node: s for s in plan.weight_sites()}
    assert (plan.layer("up").axis, plan.layer("conv").axis) == (1, 0)
    assert plan.quantizer(w["up"].quantizer).d.shape == (2,)  # ConvTranspose W (C_in, C_out, k, k)
    assert plan.quantizer(w["conv"].quantizer).d.shape == (5,)
    module(torch.randn(1, 3, 4, 4))  # shapes line up


def test_skip_first_last_and_exclude():
    proto, x = _cnn()
    _, module, plan = _attach(proto, skip_first=True, skip_last=True, exclude=("c[45]",))
    skipped = {la.node: la.skipped for la in plan.layers if la.skipped}
    assert skipped == {"c1": "skip_first", "gemm": "skip_last", "c4": "exclude", "c5": "exclude"}
    assert {s.node for s in plan.sites} == {"c2", "c3", "c6"}
    for name in skipped:
        call = next(n for n in module.graph.nodes if n.op == "call_module" and n.target == module.node_modules[name])
        assert not any(getattr(a, "target", "").startswith("quantizers.") for a in call.args if a is not None)
        assert plan.layer(name).weight_quantizer is None and plan.layer(name).act_quantizer is None
    # c3 and c4 share w3, but the excluded c4 reads the float weight
    c4 = next(n for n in module.graph.nodes if n.op == "call_module" and n.target == module.node_modules["c4"])
    assert c4.args[1].op == "get_attr"


def _thin_case():
    """Convs on either side of the thin-stem rule (quant.sites.is_thin_conv: group 1, fewer
    than 8 input channels and a reduction depth below 256, or one input channel): s1 1 -> 8 3x3
    (depth 9), s2 3 -> 8 k9 (depth 243) and the 1-D a1 1 -> 8 k300x1 (depth 300, one channel: an
    audio front end) are thin; w8 8 -> 8 3x3 (8 channels), p3 3 -> 8 k10 (depth 300) and the
    depthwise dw 8 -> 8 (group 8) are not."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "ws1"], ["a"], name="s1", pads=[1, 1, 1, 1]),
             n("Conv", ["a", "w8"], ["b"], name="w8", pads=[1, 1, 1, 1]),
             n("Conv", ["b", "wdw"], ["c"], name="dw", pads=[1, 1, 1, 1], group=8),
             n("Conv", ["x3", "ws2"], ["d"], name="s2"),
             n("Conv", ["x3", "wp3"], ["e"], name="p3"),
             n("Conv", ["x1d", "wa1"], ["f"], name="a1", strides=[4, 1])]
    inits = {"ws1": _w(8, 1, 3, 3, seed=1), "w8": _w(8, 8, 3, 3, seed=2), "wdw": _w(8, 1, 3, 3, seed=3),
             "ws2": _w(8, 3, 9, 9, seed=4), "wp3": _w(8, 3, 10, 10, seed=5),
             "wa1": _w(8, 1, 300, 1, seed=8)}
    feeds = {"x": rng(6).standard_normal((1, 1, 6, 6)).astype(np.float32),
             "x3": rng(7).standard_normal((1, 3, 10, 10)).astype(np.float32),
             "x1d": rng(9).standard_normal((1, 1, 400, 1)).astype(np.float32)}
    return make_model(nodes, feeds, ["c", "d", "e", "f"], inits, opset=13)


def test_thin_stems_stay_float_by_default():
    _, _, plan = _attach(_thin_case(), float_thin_convs=True)
    assert {la.node: la.skipped for la in plan.layers} == {"s1": "thin", "w8": "", "dw": "", "s2": "thin", "p3": "",
                                                               "a1": "thin"}
    assert {s.node for s in plan.weight_sites()} == {"w8", "dw", "p3"}
    assert QuantConfig().float_thin_convs  # the default
    _, _, every = _attach(_thin_case(), float_thin_convs=False)
    assert [la.skipped for la in every.layers] == [""] * 6 and len(every.weight_sites()) == 6


def test_weights_only_and_attach_twice():
    model, module, plan = _attach(_cnn()[0], quantize_activations=False)
    assert plan.act_sites() == [] and len(plan.weight_sites()) == 7
    with pytest.raises(GetaError, match="already has quantizers"):
        attach_quantizers(module, model, QuantConfig())


def test_deepcopy_keeps_the_rewrite_and_bind():
    import copy

    proto, x = _cnn()
    _, module, plan = _attach(proto)
    twin = copy.deepcopy(module)
    bound = plan.bind(twin)
    assert bound.sites == plan.sites and bound.quantizer("quantizers.a_x") is not plan.quantizer("quantizers.a_x")
    for a, b in zip(_outputs(module, x), _outputs(twin, x)):
        assert torch.equal(a, b)
    bound.quantizer("quantizers.w_w1").set_bits(3)  # the copy's quantizers are its own
    assert float(plan.quantizer("quantizers.w_w1").bits()) == pytest.approx(16.0, abs=1e-3)


def test_nonnegative_analysis():
    n = helper.make_node
    nodes = [n("Softmax", ["x"], ["sm"], name="softmax", axis=-1),
             n("Reshape", ["sm", "shape"], ["smr"], name="reshape"),
             n("HardSigmoid", ["x"], ["hs"], name="hsig"),
             n("Mul", ["hs", "half"], ["hs2"], name="scale_pos"),
             n("Mul", ["hs", "minus"], ["neg"], name="scale_neg"),
             n("Relu", ["x"], ["r"], name="relu"),
             n("Add", ["r", "x"], ["res"], name="residual"),
             n("Max", ["x", "r"], ["mx"], name="max"),
             n("Mul", ["r", "w"], ["rw"], name="times_param")]
    inits = {"shape": np.array([-1, 6], np.int64), "half": np.float32(0.5), "minus": np.float32(-1),
             "w": rng(1).standard_normal(6).astype(np.float32)}
    proto = make_model(nodes, {"x": rng(0).standard_normal((2, 6)).astype(np.float32)},
                       ["smr", "hs2", "neg", "res", "mx", "rw"], inits)
    model = from_proto(proto)
    known = nonnegative_tensors(model, trainable={"w"})
    outs = {"sm", "smr", "hs", "hs2", "neg", "r", "res", "mx", "rw", "x"}
    assert known & outs == {"sm", "smr", "hs", "hs2", "r", "mx"}  # a trainable factor may turn negative


def test_output_quantizers_on_conv_outputs_no_layer_reads():
    """_cnn: c2's output a3 fans out to two Clips and c4's output a7 goes into a Concat: both
    get an output quantizer read by every reader; c6's output runs through a Sigmoid (not
    absorbed into QLinearConv) so a12 is quantized; c3's a5 and c5's a10 are graph outputs:
    none. quantize_outputs=False: no output sites at all."""
    _, module, plan = _attach(_cnn()[0])
    outs = {s.tensor: s for s in plan.output_sites()}
    assert set(outs) == {"a3", "a7", "a12"}
    assert (outs["a7"].node, outs["a7"].input_index, outs["a7"].signed) == ("c4", -1, True)
    assert set(plan.act_quantizers()) >= {s.quantizer for s in outs.values()}
    readers = [n for n in module.graph.nodes if n.op == "call_module" and n.target in
               (module.node_modules["clip06"], module.node_modules["clip11"])]
    assert [r.args[0].target for r in readers] == ["quantizers.o_a3"] * 2
    _, _, plan = _attach(_cnn()[0], quantize_outputs=False)
    assert not plan.output_sites()


def _residual_tail():
    """Conv -> BN -> Relu -> Conv -> BN, plus a 1x1 shortcut Conv -> BN, Add, Relu, then the
    global pooling and a Gemm: a ResNet's last block, whose Add output no layer reads."""
    n = helper.make_node
    c = 8
    bn = {f"{p}_{k}": v for p in ("bn1", "bn2", "bn3") for k, v in
          (("s", np.full(c, 1.1, np.float32)), ("b", np.full(c, 0.05, np.float32)),
           ("m", np.zeros(c, np.float32)), ("v", np.ones(c, np.float32)))}
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["b1"], name="bn1"),
        n("Relu", ["b1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["b2"], name="bn2"),
        n("Conv", ["x", "w3"], ["c3"], name="short"),
        n("BatchNormalization", ["c3", "bn3_s", "bn3_b", "bn3_m", "bn3_v"], ["b3"], name="bn3"),
        n("Add", ["b2", "b3"], ["s"], name="add"),
        n("Relu", ["s"], ["r"], name="relu"),
        n("GlobalAveragePool", ["r"], ["g"], name="gap"),
        n("Flatten", ["g"], ["f"], name="flat"),
        n("Gemm", ["f", "wg"], ["y"], name="gemm", transB=1),
    ]
    inits = {"w1": _w(c, c, 3, 3, seed=1), "w2": _w(c, c, 3, 3, seed=2), "w3": _w(c, c, 1, 1, seed=3),
             "wg": _w(4, c, seed=4), **bn}
    x = rng(9).standard_normal((2, c, 6, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], inits, opset=13), x


def test_a_residual_add_of_quantized_tensors_gets_an_output_quantizer(tmp_path):
    """Both Add inputs are quantized conv outputs and the Relu after it feeds the pooling: the
    Relu output gets an (unsigned) output quantizer, so onnxruntime fuses a QLinearAdd and no
    float Add or layout Transpose is left between the int8 convs and the pooling."""
    import onnx
    import onnxruntime as ort

    from geta_onnx.latency.reference import int8_export
    from geta_onnx.qadg import analyze

    proto, x = _residual_tail()
    model, module, plan = _attach(proto)
    outs = {s.tensor: s for s in plan.output_sites()}
    assert set(outs) == {"b2", "b3", "r"} and (outs["r"].node, outs["r"].signed) == ("add", False)
    calibrate(module, plan, [(torch.from_numpy(x),)], QuantConfig())
    exported = int8_export(module, plan, analyze(model), model)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(exported.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "QLinearAdd" in ops and "Add" not in ops, ops
    # the pooling reads the quantized Relu and its Flatten feeds the Gemm's input quantizer: its
    # output gets the Gemm input's scale (export.qdq._quantize_pool_before_reshape), so it runs
    # in uint8 too, and the file computes what it did without that pair
    assert "QLinearGlobalAveragePool" in ops and "GlobalAveragePool" not in ops, " ".join(ops)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in exported.graph.initializer}
    q = {n.input[0]: [consts[k] for k in n.input[1:]] for n in exported.graph.node if n.op_type == "QuantizeLinear"}
    assert set(q) >= {"g", "f"} and all(np.array_equal(a, b) for a, b in zip(q["g"], q["f"]))
