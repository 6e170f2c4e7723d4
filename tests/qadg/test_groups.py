"""Pruning groups: golden listings reviewed by hand, plus the properties they encode."""
import json

import pytest

from geta_onnx.graph import from_proto, load_model
from geta_onnx.qadg import analyze
from tests.qadg import golden, models
from tests.zoo_cache import zoo_path


@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_matches_golden_listing(case):
    proto, _ = golden.CASES[case]()
    want = json.loads((golden.GOLDEN / f"{case}.json").read_text())
    assert golden.listing(proto) == want, f"groups of {case} changed: rerun python -m tests.qadg.golden and review"


def _by_sources(qadg):
    out = {}
    for g in qadg.groups:
        out.setdefault(tuple(g.sources), []).append(g)
    return out


def test_resnet_residual_coupling():
    qadg = analyze(from_proto(models.resnet2()[0]))
    by = _by_sources(qadg)
    # stem and the second conv of block 1 write the same residual stream: 8 joint channels,
    # read by block 1's first conv, block 2's first conv and its projection shortcut
    stream1 = by[("b1b", "stem")]
    assert len(stream1) == 8 and all(g.prunable for g in stream1)
    readers = {m.tensor for g in stream1 for m in g.members if m.role == "in"}
    assert readers == {"b1a.w", "b2a.w", "b2s.w"}
    assert len(by[("b1a",)]) == 8 and len(by[("b2a",)]) == 16
    stream2 = by[("b2b", "b2s")]
    assert len(stream2) == 16 and {m.tensor for g in stream2 for m in g.members if m.role == "in"} == {"fc.w"}
    fc = by[("fc",)]
    assert len(fc) == 10 and not any(g.prunable for g in fc) and "graph output" in fc[0].reason
    # BatchNorm: scale and bias zeroed with the channel, running statistics only sliced
    roles = {m.tensor: m.role for m in stream1[0].members}
    assert roles["b1b.bn.g"] == "out" and roles["b1b.bn.m"] == "state"


def test_concat_maps_offsets():
    qadg = analyze(from_proto(models.concat_model()[0]))
    for g in qadg.prunable:
        (src,) = g.sources
        own = next(m for m in g.members if m.tensor == f"{src}.w" and m.axis == 0)
        read = next(m for m in g.members if m.tensor == "C.w")
        offset = 0 if src == "A" else 4
        assert read.axis == 1 and read.indices == tuple(i + offset for i in own.indices)
    assert len(qadg.prunable) == 10


def test_depthwise_and_gating_tie_channels():
    qadg = analyze(from_proto(models.depthwise_model()[0]))
    groups = [g for g in qadg.groups if g.prunable]
    assert len(groups) == 8
    for g in groups:
        assert g.sources == ["dw", "pw1", "se_fc"]  # depthwise out c = in c; the gate multiplies channel c


def test_a_nonzero_channel_read_by_zeroed_weights_can_still_go():
    """A channel that is not 0 when zeroed (Sigmoid, then a constant offset) may be removed
    where layers read it through zeroed weights: the depthwise conv's own slice, the next
    pointwise conv's input columns (tests/qadg/test_prune.py checks zero-invariance in
    onnxruntime)."""
    qadg = analyze(from_proto(models.offset_model()[0]))
    by = _by_sources(qadg)
    tied = by[("dw", "pw1")]
    assert len(tied) == 8 and all(g.prunable for g in tied)
    assert {m.tensor for g in tied for m in g.members if m.role == "in"} == {"pw2.w"}


def test_a_nonzero_channel_in_layernorm_statistics_cannot_go():
    qadg = analyze(from_proto(models.offset_layernorm_model()[0]))
    fc1 = _by_sources(qadg)[("fc1",)]
    assert len(fc1) == 8 and not any(g.prunable for g in fc1)
    assert "LayerNormalization" in fc1[0].reason


def test_a_layernorm_written_with_reducesum_lets_its_channels_go():
    """tf2onnx's LayerNorm (ReduceSum x 1/C, E[x^2] - E[x]^2, rsqrt * gamma): a zeroed channel
    adds nothing to either sum, so each channel is a group with its gamma and beta entries.
    Written with the centered variance, the zeroed channel adds E[x]^2: a barrier, named."""
    qadg = analyze(from_proto(models.sum_layernorm_model()[0]))
    fc1 = _by_sources(qadg)[("fc1",)]
    assert len(fc1) == 8 and all(g.prunable for g in fc1)
    assert {m.tensor for m in fc1[0].members} == {"fc1.w", "fc1.b", "ln.g", "ln.b", "fc2.w"}
    centered = _by_sources(analyze(from_proto(models.sum_layernorm_model(centered=True)[0])))[("fc1",)]
    assert len(centered) == 8 and not any(g.prunable for g in centered)
    assert "sums over the channel axis where a zeroed channel is not 0" in centered[0].reason


def test_time_steps_folded_into_features_keep_one_group_per_channel():
    """[B, 8, 4] -> [B, 2, 16] puts channel c at features c, c+4, c+8, c+12 of every row; a
    per-row offset does not tie the channels together."""
    qadg = analyze(from_proto(models.patch_fold_model()[0]))
    fc = _by_sources(qadg)[("fc",)]
    assert len(fc) == 4 and all(g.prunable for g in fc)
    assert all({m.tensor for m in g.members} == {"fc.w", "conv.w"} for g in fc)
    conv_in = [m.indices for g in fc for m in g.members if m.tensor == "conv.w"]
    assert sorted(conv_in) == [(c, c + 4, c + 8, c + 12) for c in range(4)]


def test_op_without_rule_is_a_barrier_not_a_crash():
    qadg = analyze(from_proto(models.unknown_op_model()[0]))
    a_groups = [g for g in qadg.groups if g.sources == ["A"]]
    assert len(a_groups) == 4 and not any(g.prunable for g in a_groups)
    assert all("'mystery' (LpNormalization) has no pruning rule" in g.reason for g in a_groups)
    assert len([g for g in qadg.groups if g.sources == ["C"] and g.prunable]) == 6


def test_a_binary_op_on_a_tensor_with_no_inferred_shape_uses_its_tracked_rank():
    """Gather(table) -> Mul(scalar) in a graph whose shapes were never inferred: the Mul's
    tracked operand has no inferred rank, and the analysis read its channel axis past the
    scalar's (an IndexError); its tracked rank is used now, and the table's columns stay
    prunable channel groups."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="gather"),
             helper.make_node("Mul", ["rows", "two"], ["y"], name="mul"),
             helper.make_node("ReduceMean", ["y"], ["m"], name="mean", axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "w"], ["out"], name="fc")]
    inits = [numpy_helper.from_array(np.ones((16, 8), np.float32), "table"),
             numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.ones((8, 3), np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "L"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    from geta_onnx.graph import OnnxModel

    qadg = analyze(OnnxModel(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])))
    table = [g for g in qadg.groups if any(m.tensor == "table" for m in g.members)]
    assert len(table) == 8 and all(g.prunable for g in table)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_attention_heads_group_q_k_v_and_output_projection(exporter):
    qadg = analyze(load_model(zoo_path("bert", exporter)))
    heads = [g for g in qadg.groups if g.kind == "head"]
    assert len(heads) == 2 * 4 and all(g.prunable for g in heads)  # 2 layers x 4 heads
    for g in heads:
        assert len(g.sources) == 3 and g.width == 16  # q, k, v: head_dim rows each
        rows = [m for m in g.members if m.role == "out" and len(m.indices) == 16]
        cols = [m for m in g.members if m.role == "in"]
        assert len(rows) >= 3 and len(cols) == 1 and len(cols[0].indices) == 16
    hidden = [g for g in qadg.groups if g.kind == "channel" and len(g.sources) > 4]
    assert len(hidden) == 64 and all(g.prunable for g in hidden)  # the residual stream, every layer


def test_summary_shares_count_each_weight_once():
    qadg = analyze(from_proto(models.resnet2()[0]))
    s = qadg.summary()
    assert 0.9 < s["prunable_param_share"] <= 1.0 and 0.9 < s["prunable_mac_share"] <= 1.0
