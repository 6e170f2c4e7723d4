"""Shared checks for the export tests: GetaResult-like objects without training, the
output tolerance, the structural rules of both profiles."""
from __future__ import annotations

import types

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig
from geta_onnx.export.params import act_q
from geta_onnx.qadg import analyze
from geta_onnx.quant import attach_quantizers, calibrate


def untrained_result(model, entry, bits=(8, 6, 4), per_channel=False, batches=3):
    """bridge + quantizers + calibration (8-bit), then weight bits cycling through `bits`:
    what run_geta returns, minus the training (no group removed)."""
    module = to_torch(model).eval()
    cfg = QuantConfig(weight_bits_start=8, act_bits_start=8, per_channel=per_channel)
    plan = attach_quantizers(module, model, cfg)
    calibrate(module, plan, [tuple(entry.example_inputs(8, seed=s).values()) for s in range(1, 1 + batches)], cfg)
    for i, q in enumerate(plan.weight_quantizers().values()):
        q.set_bits(bits[i % len(bits)])
    return types.SimpleNamespace(module=module, plan=plan, qadg=analyze(model), removed_groups=set())


def random_input_entry(name: str, shape: tuple[int, ...], scale: float = 1.0):
    """A zoo-entry stand-in for untrained_result: example_inputs(batch, seed) gives
    {name: scale * randn(batch, *shape)}, seeded."""
    def example_inputs(batch=2, seed=0):
        return {name: scale * torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))}
    return types.SimpleNamespace(example_inputs=example_inputs)


def fake_quant(module, feeds: dict) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        return module(*[torch.as_tensor(v) for v in feeds.values()]).numpy()


def output_tolerance(result, layer_node: str) -> float:
    """One step of the last layer's input quantizer pushed through its weights:
    d_in * max over outputs of sum |W_q| (the largest output change when every input element
    moves by one step), plus one bias step. The exported and fake-quant models compute the
    same integers except where a float-rounding difference or the int32 bias rounding
    (|error| <= s_x s_w / 2) flips an activation by one level; the tests check separately
    that every quantized activation stays within one level."""
    plan = result.plan
    layer = plan.layer(layer_node)
    a_site = next(s for s in plan.sites_of(layer_node) if s.kind == "act")
    q = plan.quantizer(layer.weight_quantizer)
    w = q(result.module.parameter(layer.weight).detach().float())
    if layer.transpose is not None:
        w = w.T
    with torch.no_grad():
        row_l1 = w.abs().sum(dim=[i for i in range(w.dim()) if i != layer.axis]).max()
    d_in = act_q(plan, a_site).scale
    return float(d_in * row_l1) + 1e-5


def initializer(proto: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def producers(proto):
    return {o: n for n in proto.graph.node for o in n.output}


def weighted_nodes(proto):
    return [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]


def dq_input(proto, node, slot):
    """The DequantizeLinear feeding input `slot` of `node`, or None."""
    p = producers(proto).get(node.input[slot]) if slot < len(node.input) else None
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def check_tensorrt_rules(proto, quantized_nodes: set[str]) -> None:
    """TensorRT explicit quantization (deployment.md): symmetric int8, Q/DQ on both inputs of
    every quantized weighted op, no Q/DQ between a Conv and its BN / Relu, no
    DynamicQuantizeLinear, scales scalar or 1-D of the channel count, no uint8."""
    prod = producers(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert "DynamicQuantizeLinear" not in ops
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = initializer(proto, n.input[2])
            assert zp is not None and zp.dtype == np.int8 and not zp.any(), n.name
            scale = initializer(proto, n.input[1])
            assert scale is not None and scale.ndim <= 1 and (scale > 0).all(), n.name
            src = initializer(proto, n.input[0]) if n.op_type == "DequantizeLinear" else None
            if src is not None:
                assert src.dtype == np.int8 and np.abs(src.astype(int)).max() <= 127, n.name
        if n.op_type in ("BatchNormalization", "Relu", "Clip") and n.input[0] in prod:
            dq = prod[n.input[0]]
            if dq.op_type == "DequantizeLinear":
                q = prod.get(dq.input[0])
                assert q is None or prod.get(q.input[0]) is None or prod[q.input[0]].op_type != "Conv", n.name
        if n.op_type == "BatchNormalization" and n.input[0] in prod:
            assert prod[n.input[0]].op_type != "Conv", f"{n.name}: BN left after a Conv"
    for n in weighted_nodes(proto):
        if n.name in quantized_nodes:
            assert dq_input(proto, n, 0) is not None and dq_input(proto, n, 1) is not None, n.name


def short_compress(model_path, npz, out, profile: str, group_divisible: int) -> tuple[onnx.ModelProto, dict]:
    """(the written model, its report) of a 40-step CLI compress at 25 % of the groups, batch
    1, label data `npz`: it exits 0, and the file passes the full checker and loads in
    onnxruntime."""
    import json

    import onnxruntime as ort
    from click.testing import CliRunner

    from geta_onnx.cli import main

    res = CliRunner().invoke(main, ["compress", str(model_path), "--data", f"npz:{npz}", "-o", str(out), "--steps", "40",
                                    "--batch-size", "32", "--target-sparsity", "0.25", "--group-divisible",
                                    str(group_divisible), "--batch", "1", "--profile", profile, "--no-plots",
                                    "--no-progress", "--skip-data-check"])
    assert res.exit_code == 0, res.output
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return proto, json.loads(out.with_suffix(".report.json").read_text())


def cli_inspect(model_path, folder) -> tuple[str, dict]:
    """(the printed text, the JSON report) of `geta-onnx inspect`, which exits 0."""
    import json

    from click.testing import CliRunner

    from geta_onnx.cli import main

    res = CliRunner().invoke(main, ["inspect", str(model_path), "--json", str(folder / "inspect.json")])
    assert res.exit_code == 0, res.output
    return res.output, json.loads((folder / "inspect.json").read_text())
