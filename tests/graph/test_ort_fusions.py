"""Files of onnxruntime's transformer optimizer (graph/ort_fusions.py): each fused
com.microsoft op written back as the standard ops it fuses computes what onnxruntime computes
for the fused op (seeded inputs, tolerance 1e-5 of the output scale; Attention with no mask,
key lengths and a 0 / 1 mask; EmbedLayerNormalization's mask_index), at an opset with
LayerNormalization (17) and one without (13); an output no standard op writes keeps the op;
a ViT saved by the optimizer loads with no fused op left and passes verify."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.cli import main
from geta_onnx.graph.ort_fusions import standard_ops

B, S, H = 2, 5, 8
RNG = np.random.default_rng(0)


def _model(node: onnx.NodeProto, inputs: dict, consts: dict, outputs: list[str], opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "fused",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def _run(proto: onnx.ModelProto, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    """`optimize` False: the graph as written (onnxruntime would fuse the standard ops again)."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _f(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


CASES = {
    "SkipLayerNormalization": (["x", "skip", "gamma", "beta", "bias"], ["y", "", "", "sum"], {"epsilon": 1e-5},
                               {"x": _f(B, S, H), "skip": _f(B, S, H)}, {"gamma": _f(H), "beta": _f(H), "bias": _f(H)}),
    "SkipSimplifiedLayerNormalization": (["x", "skip", "gamma"], ["y"], {"epsilon": 1e-6},
                                         {"x": _f(B, S, H), "skip": _f(B, S, H)}, {"gamma": _f(H)}),
    "EmbedLayerNormalization": (["ids", "segments", "word", "position", "segment", "gamma", "beta"], ["y", "", "sum"],
                                {"epsilon": 1e-12},
                                {"ids": RNG.integers(0, 20, (B, S)).astype(np.int32),
                                 "segments": RNG.integers(0, 2, (B, S)).astype(np.int32)},
                                {"word": _f(20, H), "position": _f(16, H), "segment": _f(2, H), "gamma": _f(H),
                                 "beta": _f(H)}),
    "EmbedLayerNormalization/mask": (["ids", "", "word", "position", "", "gamma", "beta", "mask"], ["y", "mask_index"],
                                     {"epsilon": 1e-12},
                                     {"ids": RNG.integers(0, 20, (B, S)).astype(np.int32),
                                      "mask": np.array([[1] * S, [1] * (S - 2) + [0] * 2], np.int32)},
                                     {"word": _f(20, H), "position": _f(16, H), "gamma": _f(H), "beta": _f(H)}),
    "Attention": (["x", "w", "bias"], ["y"], {"num_heads": 2}, {"x": _f(B, S, H)}, {"w": _f(H, 3 * H), "bias": _f(3 * H)}),
    "Attention/lengths": (["x", "w", "bias", "lengths"], ["y"], {"num_heads": 2},
                          {"x": _f(B, S, H), "lengths": np.array([S, S - 2], np.int32)},
                          {"w": _f(H, 3 * H), "bias": _f(3 * H)}),
    "Attention/mask": (["x", "w", "bias", "mask"], ["y"], {"num_heads": 4, "scale": 0.3},
                       {"x": _f(B, S, H), "mask": np.array([[1] * S, [0] + [1] * (S - 1)], np.int32)},
                       {"w": _f(H, 3 * H), "bias": _f(3 * H)}),
    "BiasGelu": (["x", "bias"], ["y"], {}, {"x": _f(B, S, H)}, {"bias": _f(H)}),
    "Gelu": (["x"], ["y"], {}, {"x": _f(B, S, H)}, {}),
    "FastGelu": (["x", "bias"], ["y"], {}, {"x": _f(B, S, H)}, {"bias": _f(H)}),
    "QuickGelu": (["x"], ["y"], {"alpha": 1.5}, {"x": _f(B, S, H)}, {}),
    "FusedMatMul": (["a", "b"], ["y"], {"alpha": 0.125, "transB": 1}, {"a": _f(B, S, H), "b": _f(B, S, H)}, {}),
}


@pytest.mark.parametrize("opset", [17, 13])
@pytest.mark.parametrize("op", list(CASES))
def test_each_fused_op_as_standard_ops(op, opset):
    names, outputs, attrs, inputs, consts = CASES[op]
    node = helper.make_node(op.split("/")[0], names, outputs, name="fused", domain="com.microsoft", **attrs)
    proto = _model(node, inputs, consts, [o for o in outputs if o], opset)
    if "mask_index" in outputs:  # an int32 output
        proto.graph.output[1].type.tensor_type.elem_type = TensorProto.INT32
    standard, rewritten = standard_ops(proto)
    assert rewritten == 1 and not any(n.domain == "com.microsoft" for n in standard.graph.node)
    if opset < 17:
        assert not any(n.op_type == "LayerNormalization" for n in standard.graph.node)
    onnx.checker.check_model(standard, full_check=True)
    for got, want in zip(_run(standard, inputs, optimize=False), _run(proto, inputs)):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), op


def test_an_output_no_standard_op_writes_keeps_the_fused_op(tmp_path):
    names, _, attrs, inputs, consts = CASES["SkipLayerNormalization"]
    node = helper.make_node("SkipLayerNormalization", names, ["y", "mean"], name="fused", domain="com.microsoft", **attrs)
    proto = _model(node, inputs, consts, ["y", "mean"], 17)
    assert standard_ops(proto) == (proto, 0)
    fused = helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="fm", domain="com.microsoft", transBatchA=1)
    proto = _model(fused, CASES["FusedMatMul"][3], {}, ["y"], 17)
    assert standard_ops(proto) == (proto, 0)
    names, _, _, inputs, consts = CASES["Attention"]
    causal = helper.make_node("Attention", names, ["y"], name="causal", domain="com.microsoft", num_heads=2,
                              unidirectional=1)
    proto = _model(causal, inputs, consts, ["y"], 17)
    assert standard_ops(proto) == (proto, 0)
    proto.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, H]))
    path = tmp_path / "causal.onnx"
    onnx.save(proto, path)
    result = CliRunner().invoke(main, ["verify", str(path)])  # refused with the op named and what to do
    assert result.exit_code == 1 and "com.microsoft::Attention" in result.output, result.output
    assert "before the optimizer" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name, fused", [("vit", {"Attention", "SkipLayerNormalization"}),
                                         ("bert", {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"})])
def test_a_file_of_the_transformer_optimizer_verifies(name, fused, tmp_path):
    """samples/zoo.py's ViT and BERT, exported by torch and saved by onnxruntime's optimizer,
    load as standard ops that onnxruntime (fully optimizing, so fusing them again) runs as the
    optimizer's file (a file it saved holds constants named as its fusions name new ones:
    renamed), the same prunable groups as the export the optimizer read, and verify passes."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from geta_onnx.graph import load_model
    from samples import zoo

    entry = zoo.get(name)
    torch.manual_seed(0)
    model = entry.build().eval()
    exported = tmp_path / f"{name}.onnx"
    inputs = entry.example_inputs(batch=2)
    torch.onnx.export(model, tuple(inputs.values()), str(exported), dynamo=False, opset_version=17,
                      input_names=list(entry.input_names), output_names=list(entry.output_names),
                      dynamic_axes={n: {0: "batch"} for n in [*entry.input_names, *entry.output_names]})
    optimized = tmp_path / f"{name}_optimized.onnx"
    optimize_model(str(exported), model_type=name, num_heads=0, hidden_size=0, opt_level=1).save_model_to_file(
        str(optimized))
    ops = {n.op_type for n in onnx.load(str(optimized)).graph.node if n.domain == "com.microsoft"}
    assert fused <= ops, ops
    standard = load_model(optimized).proto
    assert not any(n.domain == "com.microsoft" for n in standard.graph.node)
    feeds = {k: v.numpy() for k, v in inputs.items()}
    for got, want in zip(_run(standard, feeds), _run(onnx.load(str(optimized)), feeds)):
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    groups = []
    for path in (exported, optimized):
        result = CliRunner().invoke(main, ["verify", str(path), "--max-groups", "8"])
        assert result.exit_code == 0 and result.output.count("PASS") == 4, result.output
        groups.append(result.output.strip().splitlines()[-1])
    assert groups[0] == groups[1]  # "groups: N (M prunable), prunable share ..."
