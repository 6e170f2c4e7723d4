"""The latency model: table file round trip and errors, interpolation, width grids, the
measured kernel time growing with width, the disk cache (hit / miss / another target), the
HALP-style selection never exceeding its budget, QASSO under a latency budget, and the
budget options' precedence. Timing assertions compare widths 4x apart in MACs, so they hold
on a loaded machine."""
import copy
import json

import numpy as np
import pytest
import torch

from geta_onnx.errors import ConfigError
from geta_onnx.latency import LatencyModel, LatencyTable, Target, build_latency_model
from geta_onnx.latency.measure import fill, measure_entry
from geta_onnx.latency.model import probe_removal
from geta_onnx.latency.spec import LayerSpec
from geta_onnx.latency.table import Entry, cache_path
from geta_onnx.optim.selection import max_removal, plan_latency
from geta_onnx.optim.slices import group_views
from tests.latency.problems import TARGET, latency_qasso, resnet_problem, synthetic_latency_model

def _conv(cin=128, cout=128, hw=16, group=1) -> LayerSpec:
    return LayerSpec("conv", "Conv", (cin, hw, hw), cin, cout, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                     dilations=(1, 1), group=group, out_elems=hw * hw)


def test_table_file_round_trip_and_errors(tmp_path):
    entry = Entry([16, 32], [16, 32, 48], {"int8": np.arange(6.0).reshape(2, 3), "float": np.ones((2, 3))})
    table = LatencyTable(TARGET, 0.004, {"k": entry})
    path = tmp_path / "table.json"
    table.save(path)
    back = LatencyTable.load(path)
    assert back.target == TARGET and back.overhead_ms == 0.004
    assert back.entries["k"].cin == [16, 32] and np.array_equal(back.entries["k"].ms["int8"], entry.ms["int8"])
    assert back.int8_saturates is None and "int8_saturates" not in json.loads(path.read_text())  # not recorded
    for recorded in (True, False):  # the target's int8 probe (quant.weight_range), when recorded
        LatencyTable(TARGET, 0.004, {"k": entry}, recorded).save(path)
        assert LatencyTable.load(path).int8_saturates is recorded
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "int8_saturates": "yes"}))
    with pytest.raises(ConfigError, match="table.json'?: int8_saturates must be true or false"):
        LatencyTable.load(path)
    data["entries"]["k"]["int8"] = [[1.0]]  # not [len(cin)][len(cout)]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="table.json.*entry 'k'"):
        LatencyTable.load(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="geta-onnx-latency/1"):
        LatencyTable.load(path)
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not JSON"):
        LatencyTable.load(path)


def test_interpolation_is_exact_on_the_grid_and_linear_between():
    ms = np.array([[1.0, 3.0], [5.0, 11.0]])
    entry = Entry([16, 32], [16, 48], {"int8": ms, "float": ms})
    assert entry.at("int8", 16, 48) == 3.0 and entry.at("int8", 32, 16) == 5.0
    assert entry.at("int8", 24, 16) == pytest.approx(3.0)  # halfway between 1 and 5
    assert entry.at("int8", 24, 32) == pytest.approx((2.0 + 8.0) / 2)
    assert entry.at("int8", 8, 8) == 1.0 and entry.at("int8", 64, 64) == 11.0  # clamped outside


def test_width_grid_is_on_the_unit_and_holds_the_full_width():
    ins, outs = _conv(cin=96, cout=200).width_grid(16)
    for widths, full in ((ins, 96), (outs, 200)):
        assert widths[-1] == full and widths == sorted(set(widths))
        assert all(w % 16 == 0 for w in widths[:-1]) and widths[0] == 16
    dw = _conv(cin=64, cout=64, group=64)
    assert dw.depthwise and dw.width_grid(16)[0] == dw.width_grid(16)[1]
    fixed = LayerSpec("stem", "Conv", (3, 8, 8), 3, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), prune_in=False)
    assert fixed.width_grid(16)[0] == [3]


def test_measured_time_grows_with_width():
    """A 3x3 conv at 128 -> 128 channels does 4x the work of 64 -> 64: both forms are slower."""
    spec = _conv()
    entry = measure_entry(spec, 64, TARGET, overhead_ms=0.0)
    assert entry.cin == [64, 128] and entry.cout == [64, 128]
    for form in ("int8", "float"):
        assert entry.at(form, 128, 128) > 1.5 * entry.at(form, 64, 64) > 0, form


def test_selection_never_exceeds_the_latency_budget():
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    views = group_views(module, qadg.groups)
    scores = {v.id: float(i % 5) for i, v in enumerate(views)}
    full = lm.ms(lm.state(()))
    fastest = lm.ms(lm.state(max_removal(views, 1, set())))
    assert fastest < full
    previous = None
    for frac in (0.95, 0.8, 0.6, 0.45):
        budget = fastest + frac * (full - fastest)
        chosen = plan_latency(views, scores, budget, 1, set(), lm)
        assert lm.ms(lm.state(chosen)) <= budget + 1e-9
        if previous is not None:
            assert len(chosen) >= len(previous)
        previous = chosen
    # zeroed groups stay removed, and an unreachable budget stops at the fastest structure
    zeroed = set(list(previous)[:2])
    chosen = plan_latency(views, scores, fastest / 2, 1, zeroed, lm)
    assert zeroed <= chosen and lm.ms(lm.state(chosen)) == pytest.approx(fastest)


def test_probe_removal_halves_every_layer_on_the_unit():
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    for unit in (1, 4):
        chosen = probe_removal(lm.effects, lm.layers, unit)
        assert chosen == sorted(chosen) and chosen == probe_removal(lm.effects, lm.layers, unit)  # deterministic
        state = lm.state(chosen)
        for la, rin, rout in zip(lm.layers, state.removed_in, state.removed_out):
            assert rout <= la.spec.cout // 2 and rin <= la.spec.cin // 2, la.spec.node
            if unit > 1 and la.spec.cout % unit == 0:
                assert (la.spec.cout - rout) % unit == 0, la.spec.node  # kept widths on the unit
        assert 0.3 < lm._share(state.removed_out) < 0.9  # about half as wide


def test_the_probe_splits_the_int8_rest_into_fixed_and_shrinking():
    """Whole-model times made as layers + F + R * share: the probe recovers F and R, and the
    prediction of another structure is then exact; a probe that keeps nearly all cannot."""
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    fixed, shrinking = 0.3, 0.5
    truth = lambda st: float(st.t_deployed.sum()) + fixed + shrinking * lm._share(st.removed_out)  # noqa: E731
    full, probe = lm.state(()), probe_removal(lm.effects, lm.layers)
    fitted = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=truth(full),
                          int8_probe=(probe, truth(lm.state(probe))))
    assert fitted.fixed["int8"] == pytest.approx(fixed) and fitted.remainder["int8"] == pytest.approx(shrinking)
    other = sorted(lm.effects)[::3]
    assert fitted.forms_ms(fitted.state(other))["int8"] == pytest.approx(truth(lm.state(other)))
    assert lm.fixed["int8"] == 0 and lm.forms_ms(lm.state(other))["int8"] < truth(lm.state(other))  # without: too fast
    restored = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=truth(full))
    restored.restore(json.loads(json.dumps(fitted.snapshot())))  # a resumed run plans with the same split
    assert restored.fixed == fitted.fixed and restored.remainder == fitted.remainder
    near = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=truth(full),
                        int8_probe=(other[:1], truth(lm.state(other[:1]))))
    assert near.fixed["int8"] == 0  # share > 0.9: not told apart


def test_the_narrow_probe_bends_the_int8_rest_below_the_half_probe():
    """Narrow layers cost more in a chain than alone: whole-model times made as layers + a rest
    that is F + R * share above the half probe's share and rises again below it. The narrow
    probe (every layer cut to its last unit) is hit exactly, the half probe and everything
    wider keep the line, structures in between are interpolated, and a resume restores it."""
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    for unit in (1, 4):
        narrow = probe_removal(lm.effects, lm.layers, unit, narrow=True)
        state = lm.state(narrow)
        assert all(la.spec.cout - rout >= 1 and la.spec.cin - rin >= 1
                   for la, rin, rout in zip(lm.layers, state.removed_in, state.removed_out))
        assert set(probe_removal(lm.effects, lm.layers, unit)) < set(narrow)  # narrower than the half probe
    half, narrow = probe_removal(lm.effects, lm.layers), probe_removal(lm.effects, lm.layers, narrow=True)
    s_half, s_narrow = (lm._share(lm.state(r).removed_out) for r in (half, narrow))
    fixed, shrinking, bump = 0.3, 0.5, 0.4  # the rest at the narrow probe: the line's value + bump

    def rest(share):
        line = fixed + shrinking * share
        return line if share >= s_half else line + bump * (s_half - share) / (s_half - s_narrow)

    truth = lambda st: float(st.t_deployed.sum()) + rest(lm._share(st.removed_out))  # noqa: E731
    fitted = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=truth(lm.state(())),
                          int8_probe=(half, truth(lm.state(half))), int8_narrow=(narrow, truth(lm.state(narrow))))
    assert fitted.fixed["int8"] == pytest.approx(fixed) and fitted.remainder["int8"] == pytest.approx(shrinking)
    for removed in (narrow, half, (), sorted(lm.effects)[::3]):
        assert fitted.forms_ms(fitted.state(removed))["int8"] == pytest.approx(truth(lm.state(removed)))
    mid = 0.5 * (s_half + s_narrow)
    assert fitted.rest("int8", mid) == pytest.approx(rest(mid))
    assert fitted.rest("int8", s_narrow / 2) == pytest.approx(rest(s_narrow))  # flat below the narrow probe
    restored = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=truth(lm.state(())))
    restored.restore(json.loads(json.dumps(fitted.snapshot())))
    assert restored.rest("int8", mid) == pytest.approx(fitted.rest("int8", mid))
    same = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, int8_original_ms=truth(lm.state(())),
                        int8_probe=(half, truth(lm.state(half))), int8_narrow=(half, truth(lm.state(half))))
    assert same.narrow == {}  # a narrow probe no narrower than the half one has no knee


def test_layers_whose_int8_kernel_is_slower_stay_float_and_a_resume_decides_the_same():
    model, module, plan, qadg, _ = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)  # int8 = float / 3 (+ a constant): every layer int8
    assert lm.slower_in_int8() == []
    saved = json.loads(json.dumps(lm.snapshot()))
    slow = lm.layers[-1].spec
    saved["entries"][slow.key]["int8"] = (np.asarray(saved["entries"][slow.key]["float"]) * 1.5).tolist()
    lm.restore(saved)  # what geta._float_check does on resume: the checkpoint's entries decide
    assert lm.slower_in_int8() == [slow.node] and lm.slower_in_int8(margin=2.0) == []


@pytest.mark.parametrize("selection", ["count", "knapsack"])
def test_qasso_meets_a_latency_budget_and_refuses_an_unreachable_one(selection):
    torch.manual_seed(0)
    model, module, plan, qadg, config = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    full = lm.ms(lm.state(()))
    with pytest.raises(ConfigError, match="out of reach"):
        latency_qasso(module, plan, qadg, config, lm, full / 1000, selection=selection)
    budget = 0.6 * full
    opt = latency_qasso(module, plan, qadg, config, lm, budget, selection=selection)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        opt.zero_grad()
        module(x).square().mean().backward()
        opt.step()
    assert 0 < len(opt.zeroed) == opt.planned == opt.target_groups
    assert min(opt.predicted_ms().values()) <= budget
    state = opt.state_dict()["qasso"]
    assert state["target_latency_ms"] == budget and state["latency"]["original_ms"] == lm.original_ms


def test_cache_hit_miss_and_another_targets_table(tmp_path, monkeypatch):
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path / "cache"))
    model, module, plan, qadg, _ = resnet_problem()
    sample = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    target = Target.here(1, 2)
    first = build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False)
    assert cache_path(target).is_file() and first.original_ms > 0
    import geta_onnx.latency.measure as measure

    def refuse(*args, **kwargs):
        raise AssertionError("a cached entry was measured again")

    monkeypatch.setattr(measure, "measure_entry", refuse)
    again = build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False)
    assert again.table.entries.keys() == first.table.entries.keys()
    # this machine's table records its int8 probe (pinned "no" by tests/conftest.py), and one cached
    # before it did gets it added without measuring again
    assert LatencyTable.load(cache_path(target)).int8_saturates is False
    old = LatencyTable.load(cache_path(target))
    old.int8_saturates = None
    old.save(cache_path(target))
    build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False)
    assert LatencyTable.load(cache_path(target)).int8_saturates is False
    # a table of another target with a missing entry: refused, never completed with this machine's times
    other = LatencyTable(Target("onnxruntime 0.0", "another cpu", 4, 2), 0.0, dict(first.table.entries))
    other.entries.pop(next(iter(other.entries)))
    path = tmp_path / "other.json"
    other.save(path)
    with pytest.raises(ConfigError, match="another target"):
        build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, table_path=str(path), progress=False)
    assert LatencyTable.load(path).entries.keys() == other.entries.keys()  # the user's file is left as it was
    # nor is a complete table of another target stamped with this machine's probe
    complete = LatencyTable(other.target, 0.0, dict(first.table.entries))
    complete.save(path)
    build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, table_path=str(path), progress=False)
    assert LatencyTable.load(path).int8_saturates is None


def test_whole_models_take_the_least_of_interleaved_rounds(tmp_path, monkeypatch):
    """A burst of background load during one measurement of the original does not set the
    budget: each whole model is timed in rounds interleaved with the others, the least counts,
    and a spread is reported."""
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path / "cache"))
    model, module, plan, qadg, _ = resnet_problem()
    sample = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    target = Target.here(1, 2)
    build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False)  # fills the cache
    import geta_onnx.latency.build as build

    calls = []

    def timed(proto, feeds, threads, min_seconds):
        calls.append(proto)
        whole = proto is model.proto
        return (50.0 if len(calls) == 1 else 20.0) if whole else 10.0  # the first round of the original is slowed

    monkeypatch.setattr(build, "time_ms", timed)
    lines = []
    lm = build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False, log_line=lines.append)
    assert lm.original_ms == 20.0
    assert [c is model.proto for c in calls] == [True] * build.WHOLE_ROUNDS
    assert len(lines) == 1 and "the original measured 20.000 and 50.000 ms at batch 2" in lines[0]
    lines.clear()
    calls.clear()
    reference = type(model.proto)()
    reference.CopyFrom(model.proto)  # stands for the int8 export of the unpruned model
    lm = build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False,
                             log_line=lines.append, int8_export_of=lambda removed: None if removed else reference)
    assert [c is model.proto for c in calls] == [True, False] * build.WHOLE_ROUNDS  # A B, A B
    assert lm.original_ms == 20.0  # its rounds: 50 (the burst) and 20
    assert len(lines) == 1 and lines[0].startswith("note: the original")  # the reference's rounds agree


def test_whole_models_relative_to_the_reference_outvote_a_slow_spell(monkeypatch):
    """A slow spell that lasts through every round of the reference and one round of another
    model: the other's time is the reference's least time times the median ratio of the two
    in the same rounds, not its own least time; the profile of the fastest round is kept."""
    import geta_onnx.latency.build as build
    from geta_onnx.latency.attribution import Split

    times = {"ref": iter([10.0, 20.0, 12.0]), "other": iter([8.0, 10.0, 6.0])}
    totals = iter([9.0, 7.0, 8.0])
    monkeypatch.setattr(build, "time_ms", lambda proto, feeds, threads, min_seconds: next(times[proto]))
    monkeypatch.setattr(build, "time_split", lambda proto, feeds, threads, nodes: Split(next(totals), 1.0, 0.0,
                                                                                           np.zeros(len(nodes))))
    ms, splits = build.timed_wholes({"ref": "ref", "other": "other"}, {"x": np.zeros((2, 1))}, 1, print,
                                    rounds=3, split=["a"], profiled=("ref",), relative_to="ref")
    assert ms == {"ref": 10.0, "other": pytest.approx(5.0)}  # ratios 0.8, 0.5, 0.5; its own least was 6
    assert splits["ref"].total == 7.0 and "other" not in splits


def test_the_table_keeps_each_points_least_of_its_passes(monkeypatch):
    """A slow spell during one pass over the grid does not stay in the table: every point is
    measured in PASSES passes and keeps its least time."""
    import geta_onnx.latency.measure as measure

    spec = _conv(cin=32, cout=32, hw=8)  # unit 16: 2 x 2 widths, int8 and float: 8 per pass
    calls = []

    def timed(proto, feeds, threads, min_seconds=0.02):
        calls.append(proto)
        if len(calls) == 1:
            return 0.0  # session.run's fixed cost
        return [5.0, 1.0, 3.0][(len(calls) - 2) // 8]  # the first and the last pass ran slower

    monkeypatch.setattr(measure, "time_ms", timed)
    table, measured = fill(None, [spec], 16, TARGET, progress=False)
    assert measure.PASSES == 3 and measured == 1 and len(calls) == 1 + 3 * 8
    for form in ("int8", "float"):
        assert np.all(table.entries[spec.key].ms[form] == 1.0)


def test_fill_measures_only_missing_entries():
    spec = _conv(cin=32, cout=32, hw=8)
    table, measured = fill(None, [spec, spec], 16, TARGET, progress=False)
    assert measured == 1 and spec.key in table.entries
    table, measured = fill(table, [spec], 16, TARGET, progress=False)
    assert measured == 0


def test_budget_options_one_place(tmp_path):
    from geta_onnx.cli import settings_from_options
    from geta_onnx.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text("[prune]\ntarget_bops = 0.05\n")
    base = {k: None for k in ("target_sparsity", "target_bops", "target_speedup", "target_latency_ms", "latency_table",
                              "group_divisible", "weight_bits", "act_bits", "epochs", "steps", "optimizer", "lr",
                              "batch_size", "device", "seed", "amp")}
    base.update(config_file=str(config), no_progress=False)
    assert settings_from_options(base).prune.budget == ("target_bops", 0.05)
    s = settings_from_options({**base, "target_speedup": 3.0})  # the command line replaces the file's budget
    assert s.prune.budget == ("target_speedup", 3.0) and s.prune.target_bops is None and s.prune.latency_budget
    with pytest.raises(ConfigError, match="one budget"):
        settings_from_options({**base, "target_speedup": 3.0, "target_sparsity": 0.5})
    config.write_text("[prune]\ntarget_bops = 0.05\ntarget_speedup = 2.0\n")
    with pytest.raises(ConfigError, match="2 budgets"):
        load_settings(config)
    config.write_text("[prune]\ntarget_speedup = 0.5\n")
    with pytest.raises(ConfigError, match="target_speedup"):
        load_settings(config)


def test_resume_plans_with_the_checkpointed_measurements():
    """A resumed run re-measures the machine; the plan must still follow the numbers the run
    started with (the checkpoint's latency snapshot and budget), not the new ones."""
    def setup(slower: float):
        torch.manual_seed(0)
        model, module, plan, qadg, config = resnet_problem()
        lm = synthetic_latency_model(model, plan, qadg)
        for entry in lm.table.entries.values():  # "this machine, another day": other kernel times
            entry.ms = {k: v * slower for k, v in entry.ms.items()}
        lm = LatencyModel(lm.layers, lm.table, lm.original_ms * slower, lm.effects, int8_original_ms=lm.original_ms)
        return module, latency_qasso(module, plan, qadg, config, lm, 0.6 * lm.ms(lm.state(()))), lm

    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(module, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            module(x).square().mean().backward()
            opt.step()

    module, opt, _ = setup(1.0)
    run(module, opt, 30)
    straight = copy.deepcopy(module.state_dict())
    module2, opt2, _ = setup(1.0)
    run(module2, opt2, 8)  # into the first pruning period
    saved_model, saved_opt = copy.deepcopy(module2.state_dict()), copy.deepcopy(opt2.state_dict())
    module3, opt3, lm3 = setup(1.7)
    module3.load_state_dict(saved_model)
    opt3.load_state_dict(saved_opt)
    assert opt3.target_latency_ms == opt2.target_latency_ms and lm3.original_ms == opt2.latency.original_ms
    run(module3, opt3, 22)
    assert opt3.zeroed == opt.zeroed
    for key, value in straight.items():
        assert torch.equal(value, module3.state_dict()[key]), key


def test_a_speed_budget_is_relative_to_the_quantized_file_given(tmp_path, monkeypatch):
    """A model read back from the user's already-quantized file (graph/quantized.py) fits its
    latency model on the float model trained, but a --target-speedup is relative to the file
    as given: its time is the reference (a resume keeps it). A file that does not run at the
    batch, or a float input, leaves the float model as the reference."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import geta_onnx.latency.build as build

    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path / "cache"))
    model, module, plan, qadg, _ = resnet_problem()
    sample = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    target = Target.here(1, 2)
    build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False)  # fills the cache
    onnx.save(model.proto, str(tmp_path / "float.onnx"))
    given = tmp_path / "given_int8.onnx"
    quantize_dynamic(str(tmp_path / "float.onnx"), str(given), weight_type=QuantType.QInt8)
    dynamic = lambda proto: any(n.op_type == "DynamicQuantizeLinear" for n in proto.graph.node)  # noqa: E731
    monkeypatch.setattr(build, "time_ms", lambda proto, feeds, threads, min_seconds: 30.0 if dynamic(proto) else 20.0)
    read_back = model.with_proto(model.proto)
    read_back.quantized_file = given
    lm = build_latency_model(read_back, plan, qadg.prunable, sample, target, unit=8, progress=False)
    assert (lm.original_ms, lm.reference_ms) == (20.0, 30.0)
    resumed = copy.copy(lm)
    resumed.restore(json.loads(json.dumps(lm.snapshot())))
    assert resumed.reference_ms == 30.0
    plain = build_latency_model(model, plan, qadg.prunable, sample, target, unit=8, progress=False)
    assert plain.reference_ms == plain.original_ms == 20.0

    class Refused:  # onnxruntime's session of a file that takes another batch
        def run(self, outputs, feeds):
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x")

    monkeypatch.setattr(build, "session", lambda proto, threads: Refused())
    lines = []
    lm = build_latency_model(read_back, plan, qadg.prunable, sample, target, unit=8, progress=False,
                             log_line=lines.append)
    assert lm.reference_ms == lm.original_ms == 20.0
    assert any("does not run at batch 2" in line and "relative to the float model" in line for line in lines)
