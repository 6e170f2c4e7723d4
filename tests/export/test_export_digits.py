"""export_onnx on a trained GETA result: the digits CNN (Conv + BN + Relu x 3, Gemm head),
120 QASSO steps at 25 % group sparsity, weight bits in [4, 8], activations 8 bits (the default:
below 8 bits the export adds a Clip that keeps onnxruntime from fusing, so which convs fuse
would depend on the bits a run happens to learn; tests/export/test_export_act_bits.py covers
sub-8-bit activations).

Checks: full_check; onnxruntime loads it; every quantized activation equals the fake-quant
one within one level and the logits within one input step of the head pushed through its
weights (helpers.output_tolerance); the int8 weights are the fake-quant integers (times the
sign of the folded BN factor) with scale |a_c| d; int32 biases with scale = input scale x
weight scale; zero points per profile; the TensorRT structural rules; what onnxruntime
fuses; the input file is never modified and `save` refuses to overwrite it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch

from geta_onnx.bridge.parity import ort_session, run_onnxruntime
from geta_onnx.config import DataConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig
from geta_onnx.errors import GetaError
from geta_onnx.export import export_onnx, fusion_report, save
from geta_onnx.export.params import act_q, pruning_cuts
from geta_onnx.export.qdq import VALUE_MOVES
from geta_onnx.geta import run_geta
from geta_onnx.graph import load_model
from geta_onnx.train import load_data
from tests.e2e.digits import write_problem
from tests.export.helpers import check_tensorrt_rules, dq_input, fake_quant, initializer, output_tolerance, producers

HEAD = "/head/Gemm"


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    onnx_path, npz, _ = write_problem(tmp_path_factory.mktemp("digits"))
    digest = _sha(onnx_path)
    model = load_model(onnx_path)
    data = load_data(f"npz:{npz}", DataConfig(batch_size=32), model=model, seed=0)
    result = run_geta(model, data, quant=QuantConfig(weight_bits=(4, 8), act_bits=(8, 8)),
                      prune=PruneConfig(target_sparsity=0.25, group_divisible=1), schedule=ScheduleConfig(steps=120),
                      train_config=TrainConfig(progress=False))
    x = np.load(npz)["eval_x"][:64]
    exported = {p: export_onnx(result, model, p) for p in ("ort", "tensorrt")}
    return result, model, onnx_path, digest, x, exported


def test_checker_and_onnxruntime_load(trained):
    result, _, _, _, x, exported = trained
    assert result.removed_groups
    for proto in exported.values():
        onnx.checker.check_model(proto, full_check=True)
        assert ort_session(proto).run(None, {"image": x})[0].shape == (64, 10)


def _kept(result, tensor: str, dim: int) -> np.ndarray:
    """Kept channel indices of activation `tensor` on axis 1 (pruned channels are zero in the module)."""
    t = result.qadg.tracked.get(tensor)
    if t is None or 1 not in t.axes:
        return np.arange(dim)
    ids = t.ids if t.ids.ndim == 1 else t.ids.reshape(t.ids.shape[0], -1)[:, 0]
    return np.nonzero(~np.isin(ids, sorted(result.removed_groups)))[0]


def test_activations_stay_within_a_level_and_logits_within_tolerance(trained):
    result, _, _, _, x, exported = trained
    proto = exported["ort"]
    seen = {}
    hooks = [q.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().numpy()))
             for n, q in result.plan.act_quantizers().items()]
    want = fake_quant(result.module, {"image": x})
    for h in hooks:
        h.remove()
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    sites = {s.quantizer: s for s in result.plan.act_sites() + result.plan.output_sites()}
    dq_of = {n.input[0][: -len("_QuantizeLinear_out")]: n.output[0] for n in proto.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0].endswith("_QuantizeLinear_out")}
    names = [dq_of[sites[n].tensor] for n in seen]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(d, onnx.TensorProto.FLOAT, None) for d in names)
    got = run_onnxruntime(probe, {"image": x})
    worst = 1.0  # the largest activation deviation seen, in steps
    for (name, ref), value in zip(seen.items(), got[1:]):
        if ref.ndim == 4:
            ref = ref[:, _kept(result, sites[name].tensor, ref.shape[1])]
        if ref.shape != value.shape:  # Flatten of pruned channels: zero columns in the module
            ref = ref[:, np.abs(ref).sum(0) > 0] if ref.shape[1] > value.shape[1] else ref
        step = act_q(result.plan, sites[name]).scale
        assert ref.shape == value.shape, name
        # one-level differences come from the int32 bias rounding onnxruntime needs for fusion and
        # can compound by a level per layer downstream: nearly all elements stay within one step.
        # An output quantizer sits on a conv OUTPUT (after BN scaling), where one-level input
        # differences summed over the 3x3xC receptive field show up as a few output levels
        # (measured on the last conv: 2 % of elements beyond one level, at most 4)
        levels = np.abs(ref - value) / step
        share, most = (0.01, 3) if sites[name].kind == "act" else (0.04, 6)
        assert float((levels > 1 + 1e-4).mean()) <= share and float(levels.max()) <= most + 1e-4, (name, levels.max())
        worst = max(worst, float(levels.max()))
    # the tolerance is one input step of the last layer through its weights; k steps -> k times it
    diff = float(np.abs(got[0] - want).max())
    assert diff <= worst * output_tolerance(result, HEAD), (diff, worst, output_tolerance(result, HEAD))


def test_weights_are_the_fake_quant_integers(trained):
    result, model, _, _, _, exported = trained
    proto = exported["ort"]
    nodes = {n.name: n for n in proto.graph.node}
    values = result.module.initializer_values()
    cuts = pruning_cuts(result.qadg, result.removed_groups)
    for site in result.plan.weight_sites():
        conv = result.plan.layer(site.node).op_type == "Conv"
        q = result.plan.quantizer(site.quantizer)
        w = result.module.parameter(site.tensor).detach()
        with torch.no_grad():
            fq, d = q(w), q.effective_d()
        k = torch.round(fq / d).numpy().astype(np.int64)
        d = np.broadcast_to(d.numpy(), (k.shape[0],)) if conv else d.numpy()
        for axis, idx in cuts.get(site.tensor, {}).items():
            k = np.delete(k, idx, axis=axis)
            d = np.delete(d, idx) if axis == 0 and conv else d
        dq = dq_input(proto, nodes[site.node], 1)
        ints, scale = initializer(proto, dq.input[0]), initializer(proto, dq.input[1])
        assert ints.dtype == np.int8
        if conv:  # BN folded: ints = sign(a) k, scale = |a| d
            bn = next(n for n in model.nodes if n.op_type == "BatchNormalization" and n.input[0] == site.node.replace(
                "/Conv", "/Conv_output_0"))
            gamma, _, _, var = (values[bn.input[i]] for i in range(1, 5))
            keep = _kept_out(cuts, bn.input[1], gamma.shape[0])
            a = (gamma / np.sqrt(var + 1e-5))[keep].astype(np.float64)
            np.testing.assert_array_equal(ints.astype(np.int64) * np.sign(a).reshape(-1, 1, 1, 1), k)
            np.testing.assert_allclose(scale, np.abs(a) * d, rtol=1e-6)
        else:
            np.testing.assert_array_equal(ints.astype(np.int64), k)
            assert scale == pytest.approx(float(d))


def _kept_out(cuts, tensor: str, n: int) -> np.ndarray:
    return np.setdiff1d(np.arange(n), cuts.get(tensor, {}).get(0, []))


def test_int32_bias_with_product_scale(trained):
    result, _, _, _, _, exported = trained
    proto = exported["ort"]
    prod = producers(proto)
    checked = 0
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm") or dq_input(proto, n, 1) is None:  # the float stem
            continue
        bias, x, w = dq_input(proto, n, 2), dq_input(proto, n, 0), dq_input(proto, n, 1)
        assert bias is not None, n.name
        ints, scale, zp = (initializer(proto, bias.input[i]) for i in range(3))
        assert ints.dtype == np.int32 and zp.dtype == np.int32 and not zp.any()
        x_scale, w_scale = initializer(proto, x.input[1]), initializer(proto, w.input[1])
        np.testing.assert_array_equal(scale, (x_scale * w_scale).astype(np.float32))
        assert prod[x.input[0]].op_type == "QuantizeLinear"
        checked += 1
    assert checked == 3


def test_zero_points_per_profile(trained):
    result, _, _, _, _, exported = trained
    signed = {s.tensor: s.signed for s in result.plan.act_sites() + result.plan.output_sites()}
    # a pool's output quantized with the parameters of the Flatten output it feeds (qdq.VALUE_MOVES)
    signed.update({n.input[0].removesuffix("_DequantizeLinear_out"): signed[n.output[0]]
                   for n in exported["ort"].graph.node if n.op_type in VALUE_MOVES and n.output[0] in signed})
    for n in exported["ort"].graph.node:
        if n.op_type == "QuantizeLinear":  # it reads the tensor, a Clip of it, or the input of a Relu it made redundant
            zp = initializer(exported["ort"], n.input[2])
            tensor = n.input[1].removesuffix("_scale")  # qdq._quantize_tensor names the scale after the tensor
            assert zp.dtype == np.uint8 and int(zp) == (128 if signed[tensor] else 0), n.name
        if n.op_type == "DequantizeLinear" and initializer(exported["ort"], n.input[0]) is not None:
            zp = initializer(exported["ort"], n.input[2])
            assert zp.dtype in (np.int8, np.int32) and not zp.any()
    quantized = {s.node for s in result.plan.weight_sites()}
    check_tensorrt_rules(exported["tensorrt"], quantized)


def test_fusion_ort_profile(trained):
    """Every quantized layer fuses: conv 2 (its Relu output feeds the next layer's Q), conv 3
    through its output quantizer (Relu -> Q before GlobalAveragePool) and the head. Conv 1
    reads the 1-channel image: a thin stem, kept float (quant.sites.is_thin_conv)."""
    report = fusion_report(trained[5]["ort"])
    assert report["fused"] == {"QLinearConv": 2, "QGemm": 1}
    assert [la.skipped for la in trained[0].plan.layers] == ["thin", "", "", ""]
    assert len(report["float_nodes"]) == 1 and report["float"] == {"Conv": 1}


def test_input_model_never_modified(trained, tmp_path):
    result, model, onnx_path, digest, _, exported = trained
    assert _sha(onnx_path) == digest
    with pytest.raises(GetaError, match="refusing to overwrite"):
        save(exported["ort"], onnx_path, source=model)
    out = tmp_path / "digits.geta.onnx"
    save(exported["ort"], out, source=model)
    assert onnx.load(str(out)) == exported["ort"] and _sha(onnx_path) == digest
