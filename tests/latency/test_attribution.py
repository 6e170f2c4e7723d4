"""latency.attribution: onnxruntime's profile of a whole model split between its layers, the
nodes each layer feeds, and the rest; and the latency model fitted from such a split."""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.latency import LatencyModel
from geta_onnx.latency.attribution import Split, _kernel_ms, split_graph, time_split
from geta_onnx.latency.model import probe_removal
from tests.latency.problems import resnet_problem, synthetic_latency_model


def _graph(nodes, inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(inits)),
                             opset_imports=[helper.make_opsetid("", 17)])


def _two_convs():
    """x -> Conv a -> BatchNormalization -> Relu -> Conv b -> y, plus a Mul of x (no layer upstream)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), n) for n in ("wa", "wb")]
    inits += [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ("s", "b", "m", "v")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ya"], "a", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["ya", "s", "b", "m", "v"], ["yn"], "bn"),
             helper.make_node("Relu", ["yn"], ["yr"], "relu"),
             helper.make_node("Mul", ["x", "x"], ["xx"], "square"),
             helper.make_node("Add", ["yr", "xx"], ["ys"], "add"),
             helper.make_node("Conv", ["ys", "wb"], ["y"], "b", pads=[1, 1, 1, 1])]
    return _graph(nodes, inits)


def test_layers_are_found_under_onnxruntimes_names_and_the_rest_goes_to_the_layers_upstream():
    original = _two_convs()
    # onnxruntime's graph: conv a fused with its BatchNormalization and Relu and named after the
    # Relu's output (NCHWc), conv b renamed with a token, the square and the add kept
    optimized = _graph([helper.make_node("Conv", ["x", "wa"], ["r1"], "yr_nchwc"),
                        helper.make_node("Mul", ["x", "x"], ["xx"], "square"),
                        helper.make_node("Add", ["r1", "xx"], ["ys"], "add"),
                        helper.make_node("Transpose", ["ys"], ["t"], "Transpose"),
                        helper.make_node("Conv", ["t", "wb"], ["y"], "b_token_3")])
    kernel = {"yr_nchwc": 1.0, "square": 0.2, "add": 0.3, "Transpose": 0.1, "b_token_3": 2.0}
    split = split_graph(original, optimized, kernel, ["a", "b"])
    assert split.total == pytest.approx(3.6) and split.layers == pytest.approx(3.0)
    assert split.fixed == pytest.approx(0.2)  # the square: no layer upstream
    # the add and the transpose read conv a's channels (the square's input is the model's)
    assert split.per_layer.tolist() == pytest.approx([0.4, 0.0])
    # a layer onnxruntime's graph does not show: no split (the caller keeps the older fit)
    assert split_graph(original, optimized, kernel, ["a", "missing"]) is None


def test_fused_gemms_are_found_under_their_fused_names():
    """A Gemm fused with its activation is "fused <name>" (CREPE's classifier: before this its
    float profile could not be split); a MatMul fused with its bias Add is "<name>/MatMulAddFusion",
    "fused ..." with an activation too, "_token_N" when the name was taken."""
    original = _graph([helper.make_node("Gemm", ["x", "w"], ["g"], "head"),
                       helper.make_node("MatMul", ["g", "w"], ["m"], "proj"),
                       helper.make_node("MatMul", ["m", "w"], ["y"], "out")])
    optimized = _graph([helper.make_node("FusedGemm", ["x", "w"], ["g"], "fused head"),
                        helper.make_node("FusedGemm", ["g", "w"], ["m"], "fused proj/MatMulAddFusion"),
                        helper.make_node("Gemm", ["m", "w"], ["y"], "out/MatMulAddFusion_token_4")])
    kernel = {"fused head": 1.0, "fused proj/MatMulAddFusion": 2.0, "out/MatMulAddFusion_token_4": 3.0}
    split = split_graph(original, optimized, kernel, ["head", "proj", "out"])
    assert split is not None and split.layers == pytest.approx(6.0) and split.fixed == 0
    assert split_graph(original, optimized, kernel, ["head", "pro"]) is None  # a prefix is not a name


def test_a_node_fed_by_two_layers_is_split_evenly():
    original = _graph([helper.make_node("Conv", ["x", "w"], ["p"], "p"),
                       helper.make_node("Conv", ["x", "w"], ["q"], "q"),
                       helper.make_node("Add", ["p", "q"], ["y"], "add")])
    split = split_graph(original, original, {"p": 1.0, "q": 1.0, "add": 0.5}, ["p", "q"])
    assert split.per_layer.tolist() == pytest.approx([0.25, 0.25]) and split.fixed == 0


def test_kernel_times_drop_the_warmup_runs_and_average_the_timed_ones():
    events = [{"cat": "Node", "name": "n_kernel_time", "dur": d} for d in (900, 800, 700, 100, 300)]
    events += [{"cat": "Node", "name": "loop_kernel_time", "dur": 50} for _ in range(10)]  # twice per run
    events += [{"cat": "Session", "name": "model_run", "dur": 5000}]
    ms = _kernel_ms(events, runs=5, warmup=3)
    assert ms["n"] == pytest.approx(0.2)  # (100 + 300) us over the 2 timed runs
    assert ms["loop"] == pytest.approx(0.1)  # 2 x 50 us per run


def test_time_split_profiles_a_real_model():
    model = _two_convs()
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    split = time_split(model, feeds, 1, ["a", "b"], min_seconds=0.01)
    assert split is not None and 0 < split.layers <= split.total
    assert split.fixed + split.per_layer.sum() == pytest.approx(split.total - split.layers)
    assert time_split(model, feeds, 1, ["a", "not a node"], min_seconds=0.01) is None


def _split_of(lm, full_ms: float, layer_share: float, fixed_ms: float, weights: np.ndarray) -> Split:
    """The Split a profile of a whole model of `full_ms` would give: the layers `layer_share` of
    it, `fixed_ms` fixed and `weights` (ms) fed by each layer."""
    return Split(total=full_ms, layers=layer_share * full_ms, fixed=fixed_ms, per_layer=weights)


def test_the_split_fits_a_rest_that_shrinks_per_layer_and_a_resume_plans_the_same():
    """Whole-model times made as a * layers + F + sum_l w_l * kept_l / cout_l: the split of the
    unpruned model recovers a, F and w, and then predicts every other structure exactly;
    probes that agree leave no residual."""
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    a, fixed = 1.3, 0.2
    prunable = np.array([la.spec.prune_out for la in lm.layers])
    w = np.where(prunable, np.linspace(0.05, 0.3, len(lm.layers)), 0.0)
    cout = np.array([la.spec.cout for la in lm.layers], dtype=float)

    def truth(st):
        return a * float(st.t_deployed.sum()) + fixed + float(w @ ((cout - st.removed_out) / cout))

    full = lm.state(())
    whole = truth(full)
    split = _split_of(lm, whole, a * float(full.t_deployed.sum()) / whole, fixed, w)
    half, narrow = probe_removal(lm.effects, lm.layers), probe_removal(lm.effects, lm.layers, narrow=True)
    fitted = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=whole,
                          int8_probe=(half, truth(lm.state(half))), int8_narrow=(narrow, truth(lm.state(narrow))),
                          splits={"int8": split})
    assert fitted.scale["int8"] == pytest.approx(a) and fitted.fixed["int8"] == pytest.approx(fixed)
    assert all(abs(r) < 1e-9 for _, r in fitted.residual["int8"])
    for removed in (sorted(lm.effects)[::3], sorted(lm.effects)[1::2], half, narrow):
        st = fitted.state(removed)
        assert fitted.forms_ms(st)["int8"] == pytest.approx(truth(lm.state(removed)))
        # the knapsack's step: the change predicted for removing one more group is the difference
        gid = next(g for g in sorted(lm.effects) if g not in removed)
        after = fitted.forms_ms(fitted.state([*removed, gid]))
        assert fitted.delta(st, [gid]) == pytest.approx(min(after.values()) - fitted.ms(st))
    restored = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=whole)
    restored.restore(json.loads(json.dumps(fitted.snapshot())))
    other = fitted.state(sorted(lm.effects)[::3])
    assert restored.forms_ms(restored.state(sorted(lm.effects)[::3])) == pytest.approx(fitted.forms_ms(other))


def test_probes_off_the_split_bend_it_below_full_width():
    """What the split misses is measured at the probes: their residual is hit exactly, 0 at full
    width, linear in the share in between and flat below the narrowest probe."""
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    full = lm.state(())
    base = float(full.t_deployed.sum())
    w = np.array([0.1 if la.spec.prune_out else 0.0 for la in lm.layers])
    cout = np.array([la.spec.cout for la in lm.layers], dtype=float)
    on_split = lambda st: float(st.t_deployed.sum()) + 0.2 + float(w @ ((cout - st.removed_out) / cout))  # noqa: E731
    half, narrow = probe_removal(lm.effects, lm.layers), probe_removal(lm.effects, lm.layers, narrow=True)
    bumps = {tuple(half): 0.05, tuple(narrow): 0.3}
    fitted = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=on_split(full),
                          int8_probe=(half, on_split(lm.state(half)) + bumps[tuple(half)]),
                          int8_narrow=(narrow, on_split(lm.state(narrow)) + bumps[tuple(narrow)]),
                          splits={"int8": Split(on_split(full), base, 0.2, w)})
    (s_half, r_half), (s_narrow, r_narrow) = fitted.residual["int8"]
    assert (r_half, r_narrow) == (pytest.approx(0.05), pytest.approx(0.3)) and s_half > s_narrow
    assert fitted.forms_ms(fitted.state(narrow))["int8"] == pytest.approx(on_split(lm.state(narrow)) + 0.3)
    assert fitted._residual("int8", 1.0) == 0.0
    assert fitted._residual("int8", (1 + s_half) / 2) == pytest.approx(0.025)
    assert fitted._residual("int8", (s_half + s_narrow) / 2) == pytest.approx(0.175)
    assert fitted._residual("int8", s_narrow / 2) == pytest.approx(0.3)


def test_a_snapshot_from_before_the_split_restores_the_older_fit():
    """A checkpoint written before the profile split has no weights: a resumed run plans with
    the line it was fitted with (F + R * share), not with a split it never had."""
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    old = lm.snapshot()
    old.pop("weights")
    old.pop("residual")
    old["fixed"]["int8"], old["remainder"]["int8"] = 0.3, 0.5
    split = Split(10.0, 5.0, 1.0, np.full(len(lm.layers), 0.1))
    resumed = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=10.0,
                           splits={"int8": split})
    resumed.restore(json.loads(json.dumps(old)))
    assert resumed.weights == {} and resumed.residual == {}
    st = resumed.state(sorted(lm.effects)[::2])
    share = resumed._share(st.removed_out)
    assert resumed.forms_ms(st)["int8"] == pytest.approx(resumed.scale["int8"] * float(st.t_deployed.sum())
                                                         + 0.3 + 0.5 * share)

