"""The knapsack's loss-based group scores (optim/taylor.py): the squared first-order loss change
of zeroing each group, averaged over the batches before each pruning period, the scores the
knapsack plans with, and a checkpoint inside a gathering window resumes to the same result."""
import copy

import pytest
import torch

import geta_onnx.optim.qasso as qasso_module
from geta_onnx.bridge import to_torch
from geta_onnx.graph import from_proto
from geta_onnx.optim.slices import group_views
from geta_onnx.optim.taylor import TaylorScores
from geta_onnx.qadg import analyze
from tests.latency.problems import latency_qasso, resnet_problem, synthetic_latency_model
from tests.qadg import models


def _batches(n):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(n)]


def test_scores_are_the_mean_squared_first_order_change_of_zeroing_each_group():
    torch.manual_seed(0)
    model = from_proto(models.resnet2()[0])
    module = to_torch(model)
    views = group_views(module, analyze(model).groups)
    taylor = TaylorScores(views)
    expected = {v.id: 0.0 for v in views}
    for x in _batches(3):
        module.zero_grad()
        module(x).square().mean().backward()
        taylor.add()
        grads = {id(p): p.grad for p in module.parameters() if p.grad is not None}
        with torch.no_grad():
            for v in views:  # brute force: every entry the group zeroes, times its gradient
                expected[v.id] += float(v.values().double() @ v.values(grads).double()) ** 2 / 3
    got = taylor.scores()
    assert taylor.batches == 3 and got.keys() == expected.keys()
    assert max(expected.values()) > 0
    for gid, value in expected.items():
        assert got[gid] == pytest.approx(value, rel=1e-9, abs=1e-18), gid
    # in the loss's units: a loss three times as large scores nine times as high in every layer
    taylor.reset()
    assert taylor.batches == 0 and set(taylor.scores().values()) == {0.0}
    x = _batches(1)[0]
    module.zero_grad()
    (3 * module(x).square().mean()).backward()
    taylor.add()
    one = TaylorScores(views)
    module.zero_grad()
    module(x).square().mean().backward()
    one.add()
    top = max(one.scores().values())
    for gid, value in one.scores().items():  # float32 gradients: sums that cancel keep ~1e-6 of the largest
        assert taylor.scores()[gid] == pytest.approx(9 * value, rel=1e-4, abs=1e-5 * top)
    with pytest.raises(ValueError, match="groups"):
        taylor.load_state_dict({"sums": [0.0], "batches": 1})


def _train(opt, module, steps, start=0, on_step=None):
    x = _batches(1)[0]
    for k in range(start, steps):
        opt.zero_grad()
        module(x).square().mean().backward()
        opt.step()
        if on_step:
            on_step(k)


def test_knapsack_plans_with_the_scores_of_the_batches_before_each_period(monkeypatch):
    monkeypatch.setattr(qasso_module, "TAYLOR_BATCHES", 3)
    torch.manual_seed(0)
    model, module, plan, qadg, config = resnet_problem()
    lm = synthetic_latency_model(model, plan, qadg)
    opt = latency_qasso(module, plan, qadg, config, lm, 0.6 * lm.ms(lm.state(())), selection="knapsack")
    starts = opt.stages.pruning_period_starts
    assert len(starts) == 2
    gathered, planned, taken = [], [], {}
    add, scores, real_plan = opt.taylor.add, opt.taylor.scores, qasso_module.plan_latency
    monkeypatch.setattr(opt.taylor, "add", lambda: (gathered.append(opt.step_count), add()))
    monkeypatch.setattr(opt.taylor, "scores", lambda: taken.setdefault(opt.step_count, (opt.taylor.batches, scores()))[1])
    monkeypatch.setattr(qasso_module, "plan_latency",
                        lambda views, s, *args: (planned.append((opt.step_count, dict(s))), real_plan(views, s, *args))[1])
    _train(opt, module, 30)
    assert gathered == [s - back for s in starts for back in (2, 1, 0)]  # the period's own step included
    assert [step for step, _ in planned] == starts and [taken[s][0] for s in starts] == [3, 3]
    for step, used in planned:  # the knapsack's scores: the loss-based ones; groups zeroed before at -1
        zeroed = {g for g, v in used.items() if v < 0}
        assert {g: v for g, v in used.items() if g not in zeroed} == {
            g: v for g, v in taken[step][1].items() if g not in zeroed}
    assert len({g for g, v in planned[1][1].items() if v < 0}) > 0  # the first period's commit
    assert 0 < len(opt.zeroed) == opt.planned
    assert min(opt.predicted_ms().values()) <= opt.target_latency_ms


def test_a_checkpoint_inside_a_gathering_window_resumes_to_the_same_weights(monkeypatch):
    monkeypatch.setattr(qasso_module, "TAYLOR_BATCHES", 3)

    def fresh():
        torch.manual_seed(0)
        model, module, plan, qadg, config = resnet_problem()
        lm = synthetic_latency_model(model, plan, qadg)
        return module, latency_qasso(module, plan, qadg, config, lm, 0.6 * lm.ms(lm.state(())), selection="knapsack")

    module, opt = fresh()
    _train(opt, module, 30)
    straight = copy.deepcopy(module.state_dict())

    module2, opt2 = fresh()
    middle = opt2.stages.pruning_period_starts[1]  # steps start - 2 and start - 1 gathered, the start's to go
    _train(opt2, module2, middle)
    assert opt2.taylor.batches == 2
    saved = copy.deepcopy((module2.state_dict(), opt2.state_dict()))
    module3, opt3 = fresh()
    module3.load_state_dict(saved[0])
    opt3.load_state_dict(saved[1])
    assert opt3.taylor.batches == 2 and torch.equal(opt3.taylor.sums, opt2.taylor.sums)
    _train(opt3, module3, 30, start=middle)
    assert opt3.zeroed == opt.zeroed
    for key, value in straight.items():
        assert torch.equal(value, module3.state_dict()[key]), key
