"""Physical pruning: sliced initializers, fixed shape constants, zero-invariance."""
from collections import Counter

import numpy as np
import onnx
import pytest

from geta_onnx.bridge import run_onnxruntime
from geta_onnx.errors import GetaError
from geta_onnx.graph import from_proto, load_model
from geta_onnx.prune import prune_model, zeroed_groups
from geta_onnx.qadg import analyze
from geta_onnx.verify import verify_model
from tests.qadg import models
from tests.zoo_cache import zoo_path


def test_prune_slices_weights_and_keeps_input_untouched():
    proto, feeds = models.resnet2()
    model = from_proto(proto)
    before = model.proto.SerializeToString()
    qadg = analyze(model)
    stream1 = [g for g in qadg.prunable if g.sources == ["b1b", "stem"]][:3]
    pruned = prune_model(qadg, [g.id for g in stream1])
    assert model.proto.SerializeToString() == before
    onnx.checker.check_model(pruned, full_check=True)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["stem.w"] == [5, 3, 3, 3] and dims["b1b.w"] == [5, 8, 3, 3]
    assert dims["b1a.w"] == [8, 5, 3, 3] and dims["b2s.w"] == [16, 5, 1, 1] and dims["b1b.bn.m"] == [5]
    assert run_onnxruntime(pruned, feeds)[0].shape == (2, 10)


def test_unprunable_group_is_refused():
    qadg = analyze(from_proto(models.resnet2()[0]))
    fc = next(g for g in qadg.groups if not g.prunable)
    with pytest.raises(Exception, match="not prunable"):
        prune_model(qadg, [fc.id])


def test_zeroed_groups_are_found_from_trained_values():
    model = from_proto(models.concat_model()[0])
    qadg = analyze(model)
    values = {name: model.array(name).copy() for name in model.initializers}
    target = qadg.prunable[5]
    for m in target.members:
        index = [slice(None)] * values[m.tensor].ndim
        index[m.axis] = list(m.indices)
        values[m.tensor][tuple(index)] = 0
    assert zeroed_groups(qadg, values) == {target.id}


@pytest.mark.parametrize("build", [models.resnet2, models.concat_model, models.depthwise_model, models.unknown_op_model,
                                   models.offset_model, models.offset_layernorm_model,
                                   models.sum_layernorm_model, models.patch_fold_model])
def test_every_group_is_zero_invariant(build):
    proto, _ = build()
    checks, _ = verify_model(from_proto(proto))
    failed = [(c.name, c.detail, c.failures[:3]) for c in checks if not c.passed]
    assert not failed, failed


def test_pruned_weights_keep_trained_values():
    proto, feeds = models.concat_model()
    model = from_proto(proto)
    qadg = analyze(model)
    values = {"C.b": np.arange(5, dtype=np.float32)}
    pruned = prune_model(qadg, [], values=values)
    got = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    np.testing.assert_array_equal(got["C.b"], np.arange(5, dtype=np.float32))


def _added_ops(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    count = lambda p: Counter(n.op_type for n in p.graph.node)  # noqa: E731
    return dict(count(after) - count(before))


def test_pruning_adds_only_the_shape_rewrites_it_needs():
    """Head pruning rewrites only the Reshape targets of its own layer, each with one Mul and
    one Add (static widths); BERT's Shape(x)[0] / [1] read batch and sequence, never the
    pruned width, so they stay as they are; FFN channels need no rewrite at all. Every extra
    node runs on each inference: 48 per layer at first cost MiniLM 4 % at batch 1."""
    model = load_model(zoo_path("bert", "legacy"))
    qadg = analyze(model)
    head = next(g for g in qadg.prunable if g.kind == "head" and "/layers.0/attn/q/MatMul" in g.sources)
    ffn = [g.id for g in qadg.prunable if g.sources == ["/layers.1/inter/MatMul"]][:16]
    assert _added_ops(model.proto, prune_model(qadg, [head.id])) == {"Mul": 4, "Add": 4}
    assert _added_ops(model.proto, prune_model(qadg, ffn)) == {}


def test_every_fixup_kind_has_its_rewrite():
    """Adding a shape-dependent op to the QADG means a fixup record type (qadg.fixups) and its
    physical rewrite: one rewrite per type, each an editor method, and a record without one
    is refused by name, never skipped."""
    from geta_onnx.prune.physical import REWRITES, _Rewriter
    from geta_onnx.qadg.fixups import FIXUP_TYPES, Fixup

    assert set(REWRITES) == set(FIXUP_TYPES)
    assert all(callable(getattr(_Rewriter, name, None)) for name in REWRITES.values())
    assert {name for name in dir(_Rewriter) if name.startswith("_fix_")} == set(REWRITES.values())
    editor = _Rewriter.__new__(_Rewriter)
    with pytest.raises(GetaError, match="no pruning rewrite for Fixup"):
        editor.apply(Fixup("node"))


@pytest.mark.parametrize("noise, error, passes", [(0.0, 5e-4, False), (5e-4, 1e-3, True), (0.5, 0.05, False)])
def test_parity_tolerance_follows_onnxruntimes_own_noise(monkeypatch, noise, error, passes):
    """A model whose outputs onnxruntime's optimised run moves by `noise` (of the output scale)
    is held to 4x that, never looser than 1e-2; the bridge's outputs here are off by `error`."""
    import geta_onnx.verify as verify

    def shifted(outputs, by):
        return [o + by * float(np.max(np.abs(o))) for o in outputs]

    ort_run, bridge_run = verify.run_onnxruntime, verify.run_bridge
    monkeypatch.setattr(verify, "run_onnxruntime", lambda proto, feeds, optimize=False: shifted(
        ort_run(proto, feeds), noise if optimize else 0.0))
    monkeypatch.setattr(verify, "run_bridge", lambda module, feeds: shifted(bridge_run(module, feeds), error))
    checks, _ = verify_model(from_proto(models.resnet2()[0]), max_groups=2)
    parity = checks[0]
    assert parity.passed is passes, parity.detail
    assert ("4x the 5.0e-04" in parity.detail) is (noise == 5e-4)
    assert checks[2].passed is passes  # the groups' comparisons use the same tolerance
