"""The quality guard (optim/guard.py): a rollback restores weights, quantizers and the
optimizer bitwise; on a toy model with a known quality cliff the guard stops at the last
period that met the tolerance; a run interrupted mid-period resumes bit-identically; a
tolerance the unpruned model already misses puts the costliest layers in float, or stops the
run at the first check; the end check falls back to the last state within the tolerance."""
import copy

import pytest
import torch

from geta_onnx.errors import GetaError
from geta_onnx.optim.guard import FloatLayers, QualityGuard
from geta_onnx.train import Schedule
from geta_onnx.train.checkpoint import load, save
from tests.optim.test_qasso import _setup

STEPS = 60  # 3 pruning periods of 8 steps: [18, 42)


def _cliff(opt, per_group: float = 0.001):
    """Quality falls by `per_group` per zeroed group: a cliff the tolerance puts in a known period."""
    return lambda: 1.0 - per_group * len(opt.zeroed)


def _train(module, opt, layers, steps, hooks=(), start=0):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    for k in range(steps):
        draws = [torch.randn((), generator=gen) for _ in layers]
        if k < start:
            continue
        for h in hooks:
            h.before_step(k)
        opt.zero_grad()
        loss = module(x).square().mean() + sum((layer.quantizer.d * r).sum() for layer, r in zip(layers, draws))
        loss.backward()
        opt.step()
        for h in hooks:
            h.after_step(k, loss.detach())


def test_rollback_restores_weights_quantizers_and_state_bitwise():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    _train(module, opt, layers, 18)  # up to the first pruning period
    before = copy.deepcopy(module.state_dict())
    zeroed = set(opt.zeroed)
    snap = opt.snapshot()
    _train(module, opt, layers, 26, start=18)  # the first period: forgetting, then the commit
    assert opt.zeroed != zeroed
    opt.rollback(snap)
    for key, value in before.items():
        assert torch.equal(value, module.state_dict()[key]), key
    assert opt.zeroed == zeroed and opt.stopped and opt.step_count == 26
    _train(module, opt, layers, STEPS, start=26)  # no group is removed after a rollback
    assert opt.zeroed == zeroed


def test_guard_stops_at_the_last_period_within_the_tolerance():
    module, opt, layers, stages = _setup(sparsity=0.6, steps=STEPS)
    per_period = []

    def score():
        per_period.append(len(opt.zeroed))
        return 1.0 - 0.01 * len(opt.zeroed)

    # tolerance: the first period's removal passes, the second's does not
    guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.0, metric="accuracy")
    probe_module, probe_opt, probe_layers, _ = _setup(sparsity=0.6, steps=STEPS)
    removed = []
    for k in range(STEPS):  # a guard-free run tells how many groups each period removes
        _train(probe_module, probe_opt, probe_layers, k + 1, start=k)
        if stages.stage(k).name == "pruning" and stages.stage(k).step_in_period == stages.stage(k).period_steps - 1:
            removed.append(len(probe_opt.zeroed))
    assert len(removed) == 3 and removed[0] < removed[1]
    guard.tolerance = 0.01 * (removed[0] + removed[1]) / 2
    _train(module, opt, layers, STEPS, hooks=[guard])
    actions = [h["action"] for h in guard.history]
    assert actions == ["kept", "kept", "rolled back; pruning stopped"]  # the start check, period 0, period 1
    assert len(opt.zeroed) == removed[0] and opt.stopped and opt.planned == removed[0]
    assert guard.summary()["stopped_at_period"] == 1


def _cliff_run(steps, tolerance, recovery=0, start=0, state=None):
    """A guarded run on the quality cliff up to `steps`, from `state` (module, optimizer and guard
    state dicts of an interrupted run) when given: (module, opt, guard)."""
    return _guarded_run(steps, lambda opt, stages: QualityGuard(opt, stages, _cliff(opt), baseline=1.0,
                                                                tolerance=tolerance, metric="accuracy"),
                        recovery, start, state)


def _guarded_run(steps, make_guard, recovery=0, start=0, state=None):
    """A run up to `steps` with the guard make_guard(opt, stages), resumed from `state` when given."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS, recovery=recovery)
    guard = make_guard(opt, stages)
    if state is not None:
        module.load_state_dict(state[0])
        opt.load_state_dict(state[1])
        guard.load_state_dict(state[2])
    _train(module, opt, layers, steps, hooks=[guard], start=start)
    return module, opt, guard


def test_resume_mid_period_is_bit_identical():
    module, opt, layers, _ = _setup(sparsity=0.5, steps=STEPS)
    _train(module, opt, layers, STEPS)
    tolerance = 0.001 * len(opt.zeroed) / 2  # periods remove 1/3, 2/3, 3/3 of it: the second goes back

    module, opt, guard = _cliff_run(STEPS, tolerance)
    assert guard.history[-1]["action"].startswith("rolled back")  # the run does exercise a rollback
    m2, o2, g2 = _cliff_run(30, tolerance)  # stopped inside the second period, its snapshot pending
    assert g2.snap is not None
    state = (copy.deepcopy(m2.state_dict()), copy.deepcopy(o2.state_dict()), copy.deepcopy(g2.state_dict()))
    m3, o3, g3 = _cliff_run(STEPS, tolerance, start=30, state=state)
    assert o3.zeroed == opt.zeroed and g3.history == guard.history
    for key, value in module.state_dict().items():
        assert torch.equal(value, m3.state_dict()[key]), key


def test_a_tolerance_the_unpruned_model_misses_stops_at_the_first_check():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = QualityGuard(opt, stages, lambda: 0.90, baseline=0.95, tolerance=0.01, metric="accuracy")
    with pytest.raises(GetaError, match="before any pruning.*0.0500 below"):
        _train(module, opt, layers, STEPS, hooks=[guard])
    assert not opt.zeroed


def _scores(values):
    """A score() that returns `values` in turn: the guard's checks in the order they run."""
    it = iter(values)
    return lambda: next(it)


def test_end_check_falls_back_to_the_last_state_within_the_tolerance():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    # the start check and the 3 periods meet the tolerance; the final model (after the
    # cool-down) misses it; the fallback state scores within it again
    guard = QualityGuard(opt, stages, _scores([1.0] * 4 + [0.5, 0.995]), baseline=1.0, tolerance=0.01,
                         metric="accuracy")
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert opt.frozen and guard.good["period"] == 2 and guard.good["step"] == 41  # the last commit's state
    good = copy.deepcopy(guard.good["state"]["module"])
    zeroed = set(opt.zeroed)
    guard.finish()
    end = guard.summary()["end"]
    assert end["action"].startswith("fell back") and end["fallback_period"] == 2
    assert end["drop"] == pytest.approx(0.5) and end["drop_after"] == pytest.approx(0.005)
    assert "fell back" in guard.summary()["why"]
    assert guard.summary()["cost"]["checks"] == 6  # every score counted: 4 checks, the end's, the fallback's
    state = module.state_dict()
    for key, value in good.items():  # weights, q_m and statistics bitwise; d follows the re-frozen widths
        if not key.endswith(".d"):
            assert torch.equal(value, state[key]), key
    assert set(opt.zeroed) == zeroed and opt.frozen
    for layer in layers:  # frozen again at whole widths inside [low, high], d consistent with them
        bits = layer.quantizer.frozen_bits
        assert torch.equal(bits, bits.round()) and bool(((bits >= layer.low) & (bits <= layer.high)).all())
        assert torch.allclose(layer.quantizer.bits(), layer.deployable(bits))
    for view in opt.views:  # removed groups still exactly zero
        if view.id in zeroed:
            assert all(float(s.param.detach().index_select(s.axis, s.index).abs().max()) == 0 for s in view.slices)


def test_end_check_keeps_a_final_model_within_the_tolerance():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = QualityGuard(opt, stages, _scores([1.0] * 4 + [0.999]), baseline=1.0, tolerance=0.01, metric="accuracy")
    _train(module, opt, layers, STEPS, hooks=[guard])
    before = copy.deepcopy(module.state_dict())
    guard.finish()
    assert guard.end == {"quality": 0.999, "drop": pytest.approx(0.001), "action": "kept"}
    for key, value in before.items():
        assert torch.equal(value, module.state_dict()[key]), key
    guard.finish()  # a second call (a resumed finished run calls it again) scores nothing more


def _fallback_guard(opt, stages, layers, max_float, floated=None):
    """A guard whose quality loses 0.01 for each of the quantizers fq2 and fq5 that is on: the
    quantized model misses a 0.005 tolerance, and only both of them in float meet it."""
    hostile = [layers[2].quantizer, layers[5].quantizer]
    score = lambda: 1.0 - 0.01 * sum(q.enabled for q in hostile)  # noqa: E731
    candidates = {f"layer{i}": {layer.name: layer.quantizer} for i, layer in enumerate(layers)}
    return QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.005, metric="accuracy",
                        layer_quantizers=candidates, max_float=max_float, floated=floated)


def test_first_check_puts_the_costliest_layers_in_float():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = _fallback_guard(opt, stages, layers, max_float=3)
    with pytest.raises(FloatLayers) as raised:
        _train(module, opt, layers, STEPS, hooks=[guard])
    # each alone in float scores 0.99, the rest 0.98: the two go first (graph order on a tie), and
    # with both off the quality is within the tolerance, so no third layer is taken
    assert raised.value.found == {"quality": pytest.approx(0.98), "layers": [
        {"node": "layer2", "rank_score": pytest.approx(0.99), "quality_cumulative": pytest.approx(0.99)},
        {"node": "layer5", "rank_score": pytest.approx(0.99), "quality_cumulative": pytest.approx(1.0)}]}
    assert all(layer.quantizer.enabled for layer in layers)  # every quantizer back on after the search
    assert not opt.zeroed


def test_first_check_stops_when_the_allowed_layers_cannot_meet_the_tolerance():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = _fallback_guard(opt, stages, layers, max_float=1)
    with pytest.raises(GetaError, match="no 1 layers in float bring it within"):
        _train(module, opt, layers, STEPS, hooks=[guard])
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)  # a restarted run falls back only once
    floated = {"quality": 0.98, "layers": [{"node": "layer2", "rank_score": 0.99, "quality_cumulative": 0.99}]}
    guard = _fallback_guard(opt, stages, layers, max_float=3, floated=floated)
    with pytest.raises(GetaError, match="with layer2 in float"):
        _train(module, opt, layers, STEPS, hooks=[guard])
    assert guard.summary()["float_fallback"] == floated


def test_a_shared_activation_quantizer_goes_only_with_all_its_layers():
    """Two layers read one quantized activation (its quantizer costs 0.02): one of them alone
    in float keeps it (the other still quantizes that tensor, and the float layer reads it
    quantized, as the export does), so only both together remove it."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    shared = layers[7].quantizer
    score = lambda: 1.0 - 0.02 * shared.enabled  # noqa: E731
    candidates = {"a": {"fq0": layers[0].quantizer, "fq_act": shared},
                  "b": {"fq1": layers[1].quantizer, "fq_act": shared}, "c": {"fq2": layers[2].quantizer}}
    guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.005, metric="accuracy",
                         layer_quantizers=candidates, max_float=3)
    with pytest.raises(FloatLayers) as raised:
        _train(module, opt, layers, STEPS, hooks=[guard])
    assert [(la["node"], la["rank_score"], la["quality_cumulative"]) for la in raised.value.found["layers"]] == [
        ("a", pytest.approx(0.98), pytest.approx(0.98)), ("b", pytest.approx(0.98), pytest.approx(1.0))]
    assert shared.enabled


# ---- recovery steps: a commit is scored after the structure it left has trained ------------------
COMMITS = (26, 34, 42)  # step_count right after each period's commit (periods [18, 26), [26, 34), [34, 42))


def _norms(opt, ids):
    return {g: sum(float(s.view().detach().norm()) ** 2 for s in opt._by_id[g].slices) ** 0.5 for g in ids}


def test_forgetting_starts_after_the_recovery_steps():
    # 2 steps of forgetting take >= 10 % off R's norms; 2 recovery steps of plain SGD move them < 1 %
    for recovery, low, high in ((0, 0.0, 0.9), (3, 0.99, 1.01)):
        module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS, recovery=recovery)
        _train(module, opt, layers, 19)  # the first pruning step picks R
        start = _norms(opt, opt.redundant)
        _train(module, opt, layers, 21, start=19)  # two more: 3 steps of the 8-step period
        ratios = [n / start[g] for g, n in _norms(opt, opt.redundant).items() if start[g] > 0]
        assert ratios and all(low <= r <= high for r in ratios), (recovery, ratios)
        _train(module, opt, layers, 26, start=21)
        assert opt.zeroed and not opt.redundant  # R is zero and committed at the period's end either way


def test_a_transient_drop_is_rolled_back_at_the_commit_and_kept_after_recovery():
    """Quality drops right after each commit and is back after one step of training: scored at
    the commit, period 0 is rolled back; scored 3 steps later, every period is kept."""
    for recovery, actions in ((0, ["kept", "rolled back; pruning stopped"]), (3, ["kept"] * 4)):
        module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS, recovery=recovery)
        at = []

        def score():
            at.append(opt.step_count)
            return 1.0 - (0.05 if opt.step_count in COMMITS else 0.0)

        guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.01, metric="accuracy")
        _train(module, opt, layers, STEPS, hooks=[guard])
        assert [h["action"] for h in guard.history] == actions
        assert at == ([18, 26] if not recovery else [21] + [c + 3 for c in COMMITS])
        assert bool(opt.zeroed) == bool(recovery)
        if recovery:
            assert all(h.get("recovery_steps") == 3 for h in guard.history[1:])


def test_a_commit_that_does_not_recover_goes_back_to_the_period_s_snapshot():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS, recovery=3)
    zeroed_after = {}

    def score():
        zeroed_after[opt.step_count] = set(opt.zeroed)
        return 1.0 - (0.05 if opt.step_count >= COMMITS[1] else 0.0)  # period 1's removal costs for good

    guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.01, metric="accuracy")
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert [h["action"] for h in guard.history] == ["kept", "kept", "rolled back; pruning stopped"]
    assert opt.zeroed == zeroed_after[COMMITS[0] + 3] and opt.stopped  # period 0's structure
    assert "after 3 recovery steps" in guard.summary()["why"]


def test_the_last_commit_is_checked_in_the_cool_down_and_falls_back_with_frozen_bits():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS, recovery=3)
    kept = {}

    def score():
        kept[opt.step_count] = set(opt.zeroed)
        return 1.0 - (0.05 if opt.step_count >= COMMITS[2] else 0.0)

    guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.01, metric="accuracy")
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert stages.stage(COMMITS[2] + 2).name == "cooldown" and opt.frozen
    assert guard.history[-1]["action"].startswith("rolled back") and opt.zeroed == kept[COMMITS[1] + 3]
    for layer in layers:  # the cool-down's freeze redone from the snapshot's widths
        bits = layer.quantizer.frozen_bits
        assert torch.equal(bits, bits.round()) and bool(((bits >= layer.low) & (bits <= layer.high)).all())


def test_resume_inside_the_recovery_steps_is_bit_identical():
    module, opt, guard = _cliff_run(STEPS, 0.004, recovery=3)
    m2, o2, g2 = _cliff_run(COMMITS[0] + 1, 0.004, recovery=3)  # period 0 committed, its check 2 steps away
    assert g2.pending == {"period": 0, "check_at": COMMITS[0] + 3}
    state = (copy.deepcopy(m2.state_dict()), copy.deepcopy(o2.state_dict()), copy.deepcopy(g2.state_dict()))
    m3, o3, g3 = _cliff_run(STEPS, 0.004, recovery=3, start=COMMITS[0] + 1, state=state)
    assert o3.zeroed == opt.zeroed and g3.history == guard.history
    for key, value in module.state_dict().items():
        assert torch.equal(value, m3.state_dict()[key]), key


def test_guard_recovery_is_a_share_of_the_shortest_pruning_period_and_off_without_a_guard():
    from geta_onnx.config import PruneConfig
    from geta_onnx.guarding import recovery_steps

    _, _, _, stages = _setup(sparsity=0.5, steps=STEPS)  # 3 pruning periods of 8 steps
    assert recovery_steps(PruneConfig(0.5, max_quality_drop=0.01, guard_recovery=0.25), stages) == 2
    assert recovery_steps(PruneConfig(0.5, guard_recovery=0.25), stages) == 0  # no guard: nothing waits
    assert recovery_steps(PruneConfig(0.5, max_quality_drop=0.01), stages) == 0  # off by default
    _, opt, _, _ = _setup(sparsity=0.5, steps=STEPS, recovery=50)
    assert opt.recovery_steps == 7  # never the whole period: forgetting keeps a step


# ---- retry: only a commit that misses waits for recovery steps, and is scored again ------------------
def _drop_by_step(opt, drops, default=0.0):
    """Quality 1 - drops[step_count] (else `default`): a drop scripted at given steps."""
    return lambda: 1.0 - drops.get(opt.step_count, default)


def _retry_guard(opt, stages, score, retry=3, tolerance=0.01):
    return QualityGuard(opt, stages, score, baseline=1.0, tolerance=tolerance, metric="accuracy", retry_steps=retry)


def test_a_transient_drop_gets_a_retry_and_only_the_period_after_it_waits():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    waits, at = {}, []
    score = _drop_by_step(opt, {COMMITS[0]: 0.05})  # period 0's commit costs 5 points, 3 steps later nothing

    def scored():
        at.append(opt.step_count)
        return score()

    class Watch:  # the forgetting delay QASSO applies in each period
        def before_step(self, step):
            info = stages.stage(step)
            if info.name == "pruning":
                waits.setdefault(info.period, opt.recovery_steps)

        def after_step(self, step, loss):
            return {}

    guard = _retry_guard(opt, stages, scored)
    _train(module, opt, layers, STEPS, hooks=[guard, Watch()])
    assert [h["action"] for h in guard.history] == ["kept", "retry after 3 recovery steps", "kept", "kept", "kept"]
    assert at == [18, COMMITS[0], COMMITS[0] + 3, COMMITS[1], COMMITS[2]]
    assert waits == {0: 0, 1: 3, 2: 0}  # the retry delayed period 1's forgetting only
    assert guard.history[2]["drop_at_commit"] == pytest.approx(0.05) and guard.history[2]["recovery_steps"] == 3
    assert guard.recoveries == [{"period": 0, "drop_at_commit": pytest.approx(0.05), "drop_after": 0.0}]
    assert not opt.stopped and len(opt.zeroed) == opt.target_groups


def test_a_retry_that_misses_goes_back_to_the_period_s_snapshot():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    zeroed_at = {}
    score = _drop_by_step(opt, {}, 0.0)

    def scored():
        zeroed_at[opt.step_count] = set(opt.zeroed)
        return score() - (0.05 if opt.step_count >= COMMITS[1] else 0.0)  # period 1's removal costs for good

    guard = _retry_guard(opt, stages, scored)
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert [h["action"] for h in guard.history] == ["kept", "kept", "retry after 3 recovery steps",
                                                    "rolled back; pruning stopped"]
    assert opt.stopped and opt.zeroed == zeroed_at[COMMITS[0]]  # period 0's structure
    assert "after 3 recovery steps" in guard.summary()["why"]


def test_the_run_s_recoveries_decide_whether_a_miss_is_worth_a_retry():
    """Period 0's retry recovers 3/4 of its drop. Period 1's 5-point drop would then end at 1.25
    points, over the 1-point tolerance: rolled back at once, without spending the steps."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = _retry_guard(opt, stages, _drop_by_step(opt, {COMMITS[0]: 0.02, COMMITS[0] + 3: 0.005,
                                                          COMMITS[1]: 0.05}))
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert [h["action"] for h in guard.history] == ["kept", "retry after 3 recovery steps", "kept",
                                                    "rolled back; pruning stopped"]
    assert guard.history[-1]["predicted_after_retry"] == pytest.approx(0.0125)
    assert "not expected to recover" in guard.summary()["why"]
    assert guard.summary()["retries"] == guard.recoveries and len(guard.recoveries) == 1


def test_the_last_commit_s_retry_runs_in_the_cool_down_and_falls_back_with_frozen_bits():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    zeroed_at = {}

    def scored():
        zeroed_at[opt.step_count] = set(opt.zeroed)
        return 1.0 - (0.05 if opt.step_count >= COMMITS[2] else 0.0)

    guard = _retry_guard(opt, stages, scored)
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert stages.stage(COMMITS[2]).name == "cooldown" and opt.frozen
    assert [h["action"] for h in guard.history][-2:] == ["retry after 3 recovery steps", "rolled back; pruning stopped"]
    assert opt.zeroed == zeroed_at[COMMITS[1]]
    for layer in layers:
        bits = layer.quantizer.frozen_bits
        assert torch.equal(bits, bits.round()) and bool(((bits >= layer.low) & (bits <= layer.high)).all())


def test_resume_inside_a_retry_is_bit_identical():
    def run(steps, start=0, state=None):
        return _guarded_run(steps, lambda opt, stages: _retry_guard(
            opt, stages, _drop_by_step(opt, {COMMITS[0]: 0.02, COMMITS[0] + 3: 0.005})), start=start, state=state)

    module, opt, guard = run(STEPS)
    m2, o2, g2 = run(COMMITS[0] + 1)  # period 0's retry under way: its second check 2 steps away
    assert g2.pending["check_at"] == COMMITS[0] + 3 and o2.recovery_steps == 3
    state = (copy.deepcopy(m2.state_dict()), copy.deepcopy(o2.state_dict()), copy.deepcopy(g2.state_dict()))
    m3, o3, g3 = run(STEPS, start=COMMITS[0] + 1, state=state)
    assert o3.zeroed == opt.zeroed and g3.history == guard.history and g3.recoveries == guard.recoveries
    for key, value in module.state_dict().items():
        assert torch.equal(value, m3.state_dict()[key]), key


def test_guard_retry_is_a_share_of_the_shortest_period_and_on_by_default():
    from geta_onnx.config import PruneConfig
    from geta_onnx.guarding import recovery_steps

    _, _, _, stages = _setup(sparsity=0.5, steps=STEPS)  # 3 pruning periods of 8 steps
    prune = PruneConfig(0.5, max_quality_drop=0.01, guard_retry=0.5)
    assert recovery_steps(prune, stages, prune.guard_retry) == 4 and recovery_steps(prune, stages) == 0
    assert PruneConfig(0.5).guard_retry == 0.5  # on by default
    assert recovery_steps(PruneConfig(0.5, max_quality_drop=0.01, guard_retry=0.99), stages, 0.99) == 7


# ---- the exported file's check (compress._guarded_file) -----------------------------------------
def test_export_fallback_moves_to_the_last_state_within_the_tolerance_and_back_bitwise():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = QualityGuard(opt, stages, _scores([1.0] * 5), baseline=1.0, tolerance=0.01, metric="accuracy")
    _train(module, opt, layers, STEPS, hooks=[guard])
    guard.finish()  # the final model meets the tolerance on the guard batches: kept
    final_state = copy.deepcopy(module.state_dict())
    good = guard.good["state"]["module"]
    final = guard.export_fallback()
    state = module.state_dict()
    assert final is not None and any(not torch.equal(state[k], final_state[k]) for k in state)
    for key, value in good.items():  # the fallback state, as the end check's fallback restores it
        if not key.endswith(".d"):
            assert torch.equal(value, state[key]), key
    opt.rollback(final)  # the final model ships after all
    for key, value in final_state.items():
        assert torch.equal(value, module.state_dict()[key]), key


def test_no_export_fallback_when_the_state_shipped_is_the_last_one_within_the_tolerance():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = QualityGuard(opt, stages, _scores([1.0] * 4 + [0.5, 0.995]), baseline=1.0, tolerance=0.01,
                         metric="accuracy")
    _train(module, opt, layers, STEPS, hooks=[guard])
    guard.finish()  # fell back already: the state shipped is the fallback target
    before = copy.deepcopy(module.state_dict())
    assert guard.export_fallback() is None
    for key, value in before.items():
        assert torch.equal(value, module.state_dict()[key]), key


def test_measured_drop_reads_the_guard_s_metric_from_the_file_s_scores():
    _, opt, _, stages = _setup(sparsity=0.5, steps=STEPS)
    acc = QualityGuard(opt, stages, lambda: 1.0, baseline=0.9, tolerance=0.01, metric="accuracy")
    assert acc.measured_drop({"accuracy": 0.88, "reference_accuracy": 0.9}) == pytest.approx(0.02)
    assert acc.measured_drop({"metric": "agreement", "agreement": 0.99}) is None  # no labels scored
    cos = QualityGuard(opt, stages, lambda: 1.0, baseline=1.0, tolerance=0.01, metric="cosine")
    assert cos.measured_drop({"metric": "cosine", "cosine": 0.995, "value": 0.995}) == pytest.approx(0.005)


def test_guard_batches_are_sized_to_the_tolerance_within_the_eval_split():
    """[prune] guard_batches = 0: the tolerance is worth 25 held-out samples (a 0.5-point one:
    5000), at least 8 batches, at most the eval split; a loader without a length gets what it
    asks for."""
    from torch.utils.data import DataLoader, TensorDataset

    from geta_onnx.guarding import guard_batches
    from geta_onnx.train.data import Data

    def data(n_eval, batch=64):
        ds = TensorDataset(torch.zeros(n_eval, 3), torch.zeros(n_eval, dtype=torch.long))
        return Data(train=None, eval=DataLoader(ds, batch_size=batch), has_labels=True, num_classes=2,
                    sample_shape=(3,), spec="test")

    assert guard_batches(data(10_000), ["x"], 0.005) == 79  # ceil(5000 / 64)
    assert guard_batches(data(10_000), ["x"], 0.05) == 8  # 500 samples would be 8 batches anyway
    assert guard_batches(data(1_000), ["x"], 0.005) == 16  # the whole eval split

    class Batches:  # a py: loader: iterable, no length
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            return iter(self.loader)

    no_len = data(10_000)
    assert guard_batches(Data(train=None, eval=Batches(no_len.eval), has_labels=True, num_classes=2,
                               sample_shape=(3,), spec="test"), ["x"], 0.005) == 79


def test_holdout_samples_match_what_the_checks_would_score_from_an_eval_split():
    """[prune] guard_data = "train" holds out as many training samples as the checks score
    from an eval split: guard_batches eval batches, or sized to the tolerance; none otherwise."""
    from geta_onnx.config import DataConfig, PruneConfig
    from geta_onnx.guarding import holdout_samples

    data = DataConfig(batch_size=64, eval_batch_size=100)
    train = dict(target_sparsity=0.5, guard_data="train")
    assert holdout_samples(PruneConfig(max_quality_drop=0.005, **train), data) == 5000  # 25 / 0.005
    assert holdout_samples(PruneConfig(max_quality_drop=0.05, **train), data) == 800  # at least 8 eval batches
    assert holdout_samples(PruneConfig(max_quality_drop=0.005, guard_batches=3, **train), data) == 300
    assert holdout_samples(PruneConfig(max_quality_drop=0.005, target_sparsity=0.5), data) == 0  # "eval"
    assert holdout_samples(PruneConfig(**train), data) == 0  # no guard


def test_an_original_that_fitted_the_held_out_training_samples_is_reported():
    """guard_data = "train": an original that scores more than the tolerance higher on the
    held-out training samples than on the eval split has fitted them (Fashion-MNIST: 97.6 %
    against 93.3 %, docs/guard.md); the guard's record and its Markdown say so."""
    from geta_onnx.bench.render import render_markdown
    from geta_onnx.bench.report import build_report
    from geta_onnx.guarding import fitted_original

    assert fitted_original(0.9758, 0.9331, 0.005)["baseline_eval"] == 0.9331
    assert "has fitted them" in fitted_original(0.9758, 0.9331, 0.005)["note"]
    assert fitted_original(0.9350, 0.9331, 0.005) is None  # within the tolerance: no sign of it
    assert fitted_original(1.0, 1.0, 0.01) is None
    fitted = fitted_original(0.9758, 0.9331, 0.005)
    _, opt, _, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = QualityGuard(opt, stages, lambda: 0.97, baseline=0.9758, tolerance=0.005, metric="accuracy",
                         held_out="train", fitted=fitted)
    summary = guard.summary()
    assert summary["held_out"] == "train" and summary["fitted"] == fitted
    assert "fitted" not in QualityGuard(opt, stages, lambda: 0.97, baseline=0.9758, tolerance=0.005,
                                        metric="accuracy").summary()
    report = build_report(latency_original={"1": 1.0}, latency_compressed={"1": 0.5}, fidelity=("agreement", 0.9))
    md = render_markdown({**report, "guard": {**summary, "samples": 5000}})
    assert "on 5000 training samples held out for the guard" in md and f"**Warning:** {fitted['note']}." in md


def test_the_guard_scores_the_split_its_setting_names():
    """guard_loader: the training samples held out for the guard with guard_data = "train"
    (never silently the eval split: data loaded without them is a ConfigError naming the fix),
    the validation split with "val" (and "auto" where there is one), else the eval split."""
    from torch.utils.data import DataLoader, TensorDataset

    from geta_onnx.config import PruneConfig
    from geta_onnx.errors import ConfigError
    from geta_onnx.guarding import guard_loader
    from geta_onnx.train.data import Data

    loader = DataLoader(TensorDataset(torch.zeros(4, 3)), batch_size=2)
    held = DataLoader(TensorDataset(torch.ones(4, 3)), batch_size=2)
    data = Data(train=None, eval=loader, has_labels=False, num_classes=None, sample_shape=(3,), spec="test",
                guard=held, n_guard=4)
    on_train = PruneConfig(target_sparsity=0.5, max_quality_drop=0.01, guard_data="train")
    on_eval = PruneConfig(target_sparsity=0.5, max_quality_drop=0.01)
    assert guard_loader(data, on_train) is held and guard_loader(data, on_eval) is loader
    with pytest.raises(ConfigError, match="guard_samples"):
        guard_loader(Data(train=None, eval=loader, has_labels=False, num_classes=None, sample_shape=(3,),
                          spec="test"), on_train)
    with pytest.raises(ConfigError, match="eval split"):
        guard_loader(Data(train=None, eval=None, has_labels=False, num_classes=None, sample_shape=(3,),
                          spec="test"), on_eval)
    # a validation split: "auto" (the default) and "val" score it, "eval" the eval split; "val" without
    # one is a ConfigError naming how to store it
    val = DataLoader(TensorDataset(torch.full((4, 3), 2.0)), batch_size=2)
    with_val = Data(train=None, eval=loader, has_labels=False, num_classes=None, sample_shape=(3,), spec="test",
                    val=val, n_val=4)
    on_auto = PruneConfig(target_sparsity=0.5, max_quality_drop=0.01)
    assert on_auto.guard_data == "auto" and guard_loader(with_val, on_auto) is val and guard_loader(data, on_auto) \
        is loader
    assert guard_loader(with_val, PruneConfig(target_sparsity=0.5, max_quality_drop=0.01, guard_data="val")) is val
    assert guard_loader(with_val, PruneConfig(target_sparsity=0.5, max_quality_drop=0.01, guard_data="eval")) \
        is loader
    with pytest.raises(ConfigError, match="guard_data = \"val\": data 'test' has no validation split.*val_x"):
        guard_loader(data, PruneConfig(target_sparsity=0.5, max_quality_drop=0.01, guard_data="val"))


def test_a_start_check_that_misses_gets_a_retry_before_the_float_fallback():
    """The quantized, unpruned model is 2 points short at the first check (18) and within the
    tolerance 3 steps of training later: period 0's removal waits for those steps, then pruning
    goes on. Short again after them: the run stops with the measured drop."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = _retry_guard(opt, stages, _drop_by_step(opt, {18: 0.02}))
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert [h["action"] for h in guard.history][:2] == ["retry after 3 recovery steps", "kept"]
    assert guard.history[1]["period"] == -1 and guard.history[1]["drop_at_commit"] == pytest.approx(0.02)
    assert guard.recoveries == []  # quantization's recovery is not a pruning margin
    assert len(opt.zeroed) == opt.target_groups and guard.good["period"] >= 0

    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    guard = _retry_guard(opt, stages, _drop_by_step(opt, {}, 0.02))
    with pytest.raises(GetaError, match="before any pruning"):
        _train(module, opt, layers, STEPS, hooks=[guard])
    assert [h["action"] for h in guard.history] == ["retry after 3 recovery steps", "start"]
    assert not opt.zeroed


# ---- the cool-down probe ([prune] guard_probe) ------------------------------------------------------
PROBE = 51  # the probe's step: half of the cool-down [42, 60) in


def _probe_guard(opt, stages, score, tolerance=0.05, regrow=True):
    return QualityGuard(opt, stages, score, baseline=1.0, tolerance=tolerance, metric="accuracy", probe_step=PROBE,
                        regrow=regrow)


def _zeroed_by_step(opt, drops):
    """A scripted score (quality 1 - drops[step_count], else 1) that also records the zeroed
    groups and the module's state at each check."""
    seen = {}

    def score():
        seen[opt.step_count] = (set(opt.zeroed), copy.deepcopy(opt.module.state_dict()))
        return 1.0 - drops.get(opt.step_count, 0.0)
    return score, seen


def test_probe_lets_commits_that_miss_go_on_and_keeps_the_budget_when_it_passes():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    score, seen = _zeroed_by_step(opt, {COMMITS[0]: 0.1, COMMITS[1]: 0.2, COMMITS[2]: 0.3, PROBE: 0.03})
    guard = _probe_guard(opt, stages, score)
    _train(module, opt, layers, STEPS, hooks=[guard])
    guard.finish()
    assert [h["action"] for h in guard.history] == ["kept"] + [QualityGuard._probe_action] * 3 + ["kept"]
    assert guard.history[-1]["probe"] and guard.history[-1]["step"] == PROBE
    assert opt.zeroed == seen[COMMITS[2]][0] and len(opt.zeroed) == opt.target_groups  # the whole budget
    assert not guard.starts and guard.summary()["why"].startswith("the cool-down probe (step 51) met")


def test_probe_that_misses_goes_back_to_the_structure_its_recovery_predicts_within_the_tolerance():
    """Commit drops 0.02, 0.1, 0.3; the probe measures 0.15, half the last commit's: the
    predictions are 0.01, 0.05 and 0.15, so the run goes back to the state after period 2
    (0.05 meets a 0.05 tolerance); without regrowth bitwise that state but d re-frozen, and
    trains it to the end."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    score, seen = _zeroed_by_step(opt, {COMMITS[0]: 0.02, COMMITS[1]: 0.1, COMMITS[2]: 0.3, PROBE: 0.15})
    guard = _probe_guard(opt, stages, score, regrow=False)
    after = {}

    class Catch:  # the state right after the probe's rollback
        def before_step(self, step):
            if step == PROBE:
                after.update(zeroed=set(opt.zeroed), state=copy.deepcopy(module.state_dict()))

        def after_step(self, step, loss):
            return {}

    _train(module, opt, layers, STEPS, hooks=[guard, Catch()])
    probe = guard.history[-1]
    assert probe["probe"] and probe["action"] == "rolled back to the structure after period 2"
    assert probe["recovery_left"] == pytest.approx(0.5) and probe["predicted_drop"] == pytest.approx(0.05)
    assert after["zeroed"] == seen[COMMITS[1]][0] == opt.zeroed and opt.frozen
    for key, value in seen[COMMITS[1]][1].items():  # the state the commit check scored, d re-frozen
        if not key.endswith(".d") and "frozen_bits" not in key:
            assert torch.equal(value, after["state"][key]), key
    for layer in layers:  # bits frozen again from the snapshot's widths
        bits = layer.quantizer.frozen_bits
        assert torch.equal(bits, bits.round()) and bool(((bits >= layer.low) & (bits <= layer.high)).all())
    assert guard.good["period"] == 0  # period 1's commit met the tolerance (0.02), period 2's did not
    assert "rolled back to it" in guard.summary()["why"] and guard.summary()["stopped_at_period"] is None
    assert not guard.starts  # the snapshots are released after the probe


class _StateAt:
    """A hook that copies the module's state, the optimizer's per-parameter state and the
    period starts' snapshots before `step` (placed before or after the guard in the hooks)."""

    def __init__(self, opt, step, guard=None):
        self.opt, self.step, self.guard, self.state = opt, step, guard, None

    def before_step(self, step):
        if step == self.step:
            self.state = copy.deepcopy(self.opt.module.state_dict())
            self.moments = {id(p): copy.deepcopy(st) for p, st in self.opt.state.items()}
            self.starts = copy.deepcopy(self.guard.starts) if self.guard is not None else None

    def after_step(self, step, loss):
        return {}


def test_probe_regrows_the_removed_groups_into_the_cool_down_trained_model():
    """Commit drops 0.02, 0.2, 0.3 and a probe at 0.15: back to the structure after period 1.
    The groups removed in periods 2 and 3 come back with their entries (weights and moments)
    from the start of the period that removed them (an entry both share: from the earlier one,
    the last state where it was not zero); every other entry (weights, quantizers, frozen
    bits) stays as the cool-down trained it; the regrown groups train on, unmasked."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    score, seen = _zeroed_by_step(opt, {COMMITS[0]: 0.02, COMMITS[1]: 0.2, COMMITS[2]: 0.3, PROBE: 0.15})
    guard = _probe_guard(opt, stages, score)
    before, after = _StateAt(opt, PROBE, guard), _StateAt(opt, PROBE)
    _train(module, opt, layers, STEPS, hooks=[before, guard, after])
    probe = guard.history[-1]
    assert probe["action"] == f"rolled back to the structure after period 1 ({probe['regrown']} groups regrown " \
                              "into the trained model)"
    assert opt.zeroed == seen[COMMITS[0]][0] and opt.stopped and opt.frozen
    removed_in = {1: seen[COMMITS[1]][0] - seen[COMMITS[0]][0], 2: seen[COMMITS[2]][0] - seen[COMMITS[1]][0]}
    assert all(removed_in.values()) and probe["regrown"] == len(removed_in[1] | removed_in[2])
    expected = copy.deepcopy(before.state)
    params = dict(module.named_parameters())
    moments = {}  # (parameter name, moment) -> its expected value after the regrowth
    for period, groups in sorted(removed_in.items(), reverse=True):  # an entry two groups share: the earlier source
        start = next(st for st in before.starts if st["period"] == period)
        source = start["state"]
        assert source["optimizer"]["qasso"]["zeroed"] == sorted(seen[COMMITS[period - 1]][0])
        index_of = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        for gid in groups:
            for m in opt._by_id[gid].group.members:
                name = module.tensor_of[m.tensor]
                index = torch.tensor(m.indices)
                expected[name].index_copy_(m.axis, index, source["module"][name].index_select(m.axis, index))
                if name in params:
                    mine = before.moments[id(params[name])]["momentum_buffer"]
                    was = source["optimizer"]["state"][index_of[id(params[name])]]["momentum_buffer"]
                    value = moments.setdefault(name, mine.clone())
                    value.index_copy_(m.axis, index, was.index_select(m.axis, index))
    for key, value in expected.items():
        assert torch.equal(value, after.state[key]), key
    for name, value in moments.items():
        assert torch.equal(value, after.moments[id(params[name])]["momentum_buffer"]), name
    regrown = removed_in[1] | removed_in[2]
    assert all(norm > 0 for norm in _norms(opt, regrown).values())  # trained on to the end, not masked
    assert all(norm == 0 for norm in _norms(opt, opt.zeroed).values())


def test_probe_regrowth_restores_a_regrown_channels_per_channel_weight_quantizer():
    """Per-channel weight quantizers: the forgetting set a removed output channel's d to the
    coarsest step and the cool-down froze that width. Regrown, the channel gets its q_m back
    from the start of the period that removed it and a frozen width made from that state's
    (d, q_m), with d following it; the other channels' entries stay as the cool-down trained them."""
    from geta_onnx.quant.quantizer import bits_of, d_of_bits

    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS, per_channel=True)
    score, seen = _zeroed_by_step(opt, {COMMITS[0]: 0.02, COMMITS[1]: 0.2, COMMITS[2]: 0.3, PROBE: 0.15})
    guard = _probe_guard(opt, stages, score)
    before, after = _StateAt(opt, PROBE, guard), _StateAt(opt, PROBE)
    _train(module, opt, layers, STEPS, hooks=[before, guard, after])
    assert guard.history[-1]["action"].startswith("rolled back to the structure after period 1")
    removed_in = {1: seen[COMMITS[1]][0] - seen[COMMITS[0]][0], 2: seen[COMMITS[2]][0] - seen[COMMITS[1]][0]}
    finer = 0  # regrown channels whose frozen width the regrowth raised
    for layer in (la for la in layers if la.axis is not None):
        q_m, bits = (before.state[f"{layer.name}.{k}"].clone() for k in ("q_m", "frozen_bits"))
        for period, groups in sorted(removed_in.items(), reverse=True):  # a shared entry: the earlier source
            source = next(st for st in before.starts if st["period"] == period)["state"]["module"]
            for m in (m for gid in groups for m in opt._by_id[gid].group.members):
                if m.tensor == layer.weight and m.axis == layer.axis:
                    index = torch.tensor(m.indices)
                    q_m[index] = source[f"{layer.name}.q_m"][index]
                    was = bits_of(source[f"{layer.name}.d"][index], q_m[index], 1.0, True)
                    bits[index] = layer.deployable(was).to(bits.dtype)
                    finer += int((bits[index] > before.state[f"{layer.name}.frozen_bits"][index]).sum())
        assert torch.equal(after.state[f"{layer.name}.q_m"], q_m), layer.name
        assert torch.equal(after.state[f"{layer.name}.frozen_bits"], bits), layer.name
        d = d_of_bits(bits.double(), q_m.double(), 1.0, True).float()
        assert torch.allclose(after.state[f"{layer.name}.d"], d, rtol=1e-6), layer.name
    assert finer > 0


def test_probe_goes_back_to_the_unpruned_model_when_no_commit_is_predicted_within():
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    score, _ = _zeroed_by_step(opt, {COMMITS[0]: 0.2, COMMITS[1]: 0.3, COMMITS[2]: 0.4, PROBE: 0.4})
    guard = _probe_guard(opt, stages, score)
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert guard.history[-1]["action"] == (f"rolled back to the unpruned structure ({opt.target_groups} groups "
                                           "regrown into the trained model)") and not opt.zeroed
    assert guard.history[-1]["recovery_left"] == 1.0  # nothing recovered: the commit drops are the predictions


def test_probe_step_is_a_share_of_the_cool_down_and_off_without_one():
    from geta_onnx.config import PruneConfig
    from geta_onnx.guarding import probe_step, recovery_steps

    _, _, _, stages = _setup(sparsity=0.5, steps=STEPS)  # cool-down [42, 60)
    probe = PruneConfig(0.5, max_quality_drop=0.01, guard_probe=0.5, guard_recovery=0.5)
    assert probe_step(probe, stages) == PROBE and probe_step(PruneConfig(0.5, max_quality_drop=0.01), stages) is None
    assert probe_step(PruneConfig(0.5, max_quality_drop=0.01, guard_probe=0.99), stages) == 59  # one step after it
    assert recovery_steps(probe, stages) == 0  # with a probe, commits are scored at once (no recovery steps)
    no_cooldown = Schedule(42, 10, warmup_steps=6, projection_steps=12, projection_periods=4, pruning_start=18,
                           pruning_steps=24, pruning_periods=3)
    assert probe_step(probe, no_cooldown) is None


def test_resume_before_the_probe_is_bit_identical(tmp_path):
    drops = {COMMITS[0]: 0.02, COMMITS[1]: 0.1, COMMITS[2]: 0.3, PROBE: 0.15}

    def run(steps, start=0, state=None):
        return _guarded_run(steps, lambda opt, stages: _probe_guard(opt, stages, _drop_by_step(opt, drops)),
                            start=start, state=state)

    module, opt, guard = run(STEPS)
    m2, o2, g2 = run(46)  # in the cool-down, the probe ahead: the period starts' snapshots saved
    assert len(g2.starts) == 3
    # through the checkpoint file (no pickle): the snapshots survive as tensors
    path = save(tmp_path / "ckpt.safetensors", {"m": m2.state_dict(), "o": o2.state_dict(), "g": g2.state_dict()})
    saved = load(path)
    state = (saved["m"], saved["o"], saved["g"])
    m3, o3, g3 = run(STEPS, start=46, state=state)
    assert o3.zeroed == opt.zeroed and g3.history == guard.history
    for key, value in module.state_dict().items():
        assert torch.equal(value, m3.state_dict()[key]), key


def test_with_a_probe_a_start_check_that_misses_does_not_stop_the_run():
    """At the start check quantization-aware training is only a few steps in: with a probe, a
    miss there is recorded, the pruning goes on, and the probe decides; the end check reports
    a final miss when no state was ever found within the tolerance."""
    def run(probe_drop, end_drop):  # the start check and every commit miss the 0.05 tolerance
        module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
        score, seen = _zeroed_by_step(opt, {18: 0.1, COMMITS[0]: 0.2, COMMITS[1]: 0.3, COMMITS[2]: 0.4,
                                            PROBE: probe_drop, STEPS: end_drop})
        guard = _probe_guard(opt, stages, score)
        _train(module, opt, layers, STEPS, hooks=[guard])
        guard.finish()
        return opt, guard, seen

    opt, guard, seen = run(0.04, 0.03)
    assert [h["action"] for h in guard.history] == [QualityGuard._probe_action] * 4 + ["kept"]
    assert opt.zeroed == seen[COMMITS[2]][0] and guard.end["action"] == "kept"

    opt, guard, _ = run(0.4, 0.1)
    assert guard.history[-1]["action"] == (f"rolled back to the unpruned structure ({opt.target_groups} groups "
                                           "regrown into the trained model)") and not opt.zeroed
    assert guard.good is None and guard.export_fallback() is None
    assert guard.end["action"] == "missed; no state within the tolerance to fall back to"
    why = guard.summary()["why"]
    assert "no pruned structure was predicted within it" in why and "the final model missed it too" in why


# ---- after training: the layers whose quantization costs the most go to float ------------------------
def _costly_quantizers(opt, layers, drops, cost=0.03):
    """Quality 1 - drops[step_count] - `cost` for each of the quantizers fq2 and fq5 that is on,
    and the float fallback's candidates (one layer per quantizer)."""
    hostile = [layers[2].quantizer, layers[5].quantizer]
    score = lambda: 1.0 - drops.get(opt.step_count, 0.0) - cost * sum(q.enabled for q in hostile)  # noqa: E731
    return score, {f"layer{i}": {layer.name: layer.quantizer} for i, layer in enumerate(layers)}


def test_a_probe_run_the_end_check_misses_puts_the_costliest_layers_in_float():
    """Every check misses the 0.05 tolerance (the two costly quantizers: 0.06), so the probe goes
    back to the unpruned structure and no state is within it. The end check then turns off the
    layer that brings it within (each alone scores 0.97; one is enough), in the trained model."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    score, candidates = _costly_quantizers(opt, layers, {})
    guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.05, metric="accuracy", probe_step=PROBE,
                         layer_quantizers=candidates, max_float=3)
    _train(module, opt, layers, STEPS, hooks=[guard])
    assert guard.history[0]["action"] == QualityGuard._probe_action and not opt.zeroed and guard.good is None
    guard.finish()
    assert guard.floated_after_training == ["layer2"]
    assert not layers[2].quantizer.enabled and all(la.quantizer.enabled for i, la in enumerate(layers) if i != 2)
    assert guard.end["drop_float"] == pytest.approx(0.03) and guard.end["action"] == (
        "missed; no state within the tolerance to fall back to; 1 layer(s) to float after training")
    assert "1 layer(s) went to float after training (layer2): +0.0300" in guard.summary()["why"]
    assert guard.summary()["cost"]["float_search_seconds"] > 0


def test_an_end_check_whose_fallback_misses_too_puts_layers_in_float_within_the_allowed_count():
    """Without a probe: the checks meet the tolerance, the final model and the state it falls
    back to miss it by 0.01 (scored at the last step): a layer goes to float. With one layer
    already in float from the first check and max_float 1, none is left to try."""
    def run(max_float, floated=None):
        module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
        score, candidates = _costly_quantizers(opt, layers, {STEPS: 0.02}, cost=0.02)
        guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.05, metric="accuracy",
                             layer_quantizers=candidates, max_float=max_float, floated=floated)
        _train(module, opt, layers, STEPS, hooks=[guard])
        guard.finish()
        return guard, layers

    guard, layers = run(3)
    assert guard.end["drop"] == pytest.approx(0.06) and guard.end["drop_after"] == pytest.approx(0.06)
    assert guard.floated_after_training == ["layer2"] and not layers[2].quantizer.enabled
    assert guard.end["action"] == "fell back to the last state within the tolerance; 1 layer(s) to float after training"
    floated = {"quality": 0.9, "layers": [{"node": "layer7", "rank_score": 0.95, "quality_cumulative": 0.95}]}
    guard, layers = run(1, floated)
    assert guard.floated_after_training == [] and all(la.quantizer.enabled for la in layers)
    assert "float_search" not in guard.end  # nothing was allowed to try
    guard, layers = run(2, floated)  # one more allowed: layer2 is enough
    assert guard.floated_after_training == ["layer2"]


def test_an_end_check_no_allowed_layers_bring_within_says_so():
    """A drop no quantizer explains: every layer in float still misses, so the search stops
    after that one check, without ranking the layers."""
    module, opt, layers, stages = _setup(sparsity=0.5, steps=STEPS)
    score, candidates = _costly_quantizers(opt, layers, {STEPS: 0.2})  # no quantizer explains this drop
    ranked = []
    guard = QualityGuard(opt, stages, score, baseline=1.0, tolerance=0.1, metric="accuracy",
                         layer_quantizers=candidates, max_float=2, rank_score=lambda: ranked.append(1) or 0.0)
    _train(module, opt, layers, STEPS, hooks=[guard])
    guard.finish()
    assert not ranked  # hopeless with every layer in float: no ranking
    assert guard.floated_after_training == [] and all(la.quantizer.enabled for la in layers)
    assert guard.end["float_search"] == "no 2 layers in float bring it within the tolerance"
    assert guard.summary()["why"].endswith("; no 2 layers in float bring it within the tolerance")


def test_a_run_records_where_its_guard_scores(tmp_path):
    """prepare_run (compress, train, torchrun) decides guard_data "auto" on the data and
    records the decided value: "val" for a file with a validation split, "eval" without one
    (so runs fingerprinted before "auto" existed still resume)."""
    from pathlib import Path

    import numpy as np

    from geta_onnx.preflight import prepare_run
    from geta_onnx.settings import Settings

    sample = Path(__file__).resolve().parents[2] / "samples" / "digits"
    arrays = dict(np.load(sample / "digits.npz"))
    with_val = tmp_path / "with_val.npz"
    np.savez(with_val, x=arrays["x"][:-200], y=arrays["y"][:-200], val_x=arrays["x"][-200:],
             val_y=arrays["y"][-200:], eval_x=arrays["eval_x"], eval_y=arrays["eval_y"])
    for spec, where in ((f"npz:{with_val}", "val"), (f"npz:{sample / 'digits.npz'}", "eval")):
        _, data, fingerprint, _, settings = prepare_run(sample / "digits_cnn.onnx", spec, Settings(), held_out=True)
        assert settings.prune.guard_data == fingerprint["settings"]["prune"]["guard_data"] == where
        assert (data.n_val == 200) == (where == "val")
