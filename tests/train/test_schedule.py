"""The GETA schedule: lengths from the data size, stage boundaries, periods, validation."""
from collections import Counter

import pytest
import torch

from geta_onnx.config import ScheduleConfig, from_dict
from geta_onnx.errors import ConfigError
from geta_onnx.train.schedule import Schedule, lr_scheduler, plan_steps


def test_automatic_length_reaches_min_steps_and_is_capped():
    assert plan_steps(30) == (2010, 67)  # a small data set: enough epochs for >= 2000 steps
    assert plan_steps(5000) == (5000, 1)  # a large one: one epoch
    assert plan_steps(3, ScheduleConfig(max_epochs=100)) == (300, 100)  # capped
    assert plan_steps(30, ScheduleConfig(epochs=4)) == (120, 4)
    assert plan_steps(30, ScheduleConfig(steps=100)) == (100, 4)  # steps win; the last epoch is partial
    with pytest.raises(ConfigError, match="no batch"):
        plan_steps(0)


def test_default_stages_in_order_with_even_periods():
    # 2000 steps: warm-up 40, projection 100 (5 x 20), pruning 300 (5 x 60), cool-down 1560 (78 %)
    s = Schedule.from_config(100)
    names = [s.stage(k).name for k in range(s.total_steps)]
    assert names == ["warmup"] * 40 + ["projection"] * 100 + ["pruning"] * 300 + ["cooldown"] * 1560
    counts = Counter((st.name, st.period) for st in map(s.stage, range(s.total_steps)))
    assert [counts[("projection", p)] for p in range(5)] == [20] * 5
    assert [counts[("pruning", p)] for p in range(5)] == [60] * 5
    first, last = s.stage(140), s.stage(439)
    assert (first.period, first.step_in_period, first.period_steps) == (0, 0, 60)
    assert (last.period, last.step_in_period, last.period_steps) == (4, 59, 60)
    assert s.stage(5000).name == "cooldown" and s.epochs == 20


def test_uneven_periods_cover_every_step_once():
    s = Schedule(total_steps=40, steps_per_epoch=10, warmup_steps=3, projection_steps=7, projection_periods=3,
                 pruning_start=12, pruning_steps=23, pruning_periods=4)
    for name, start, steps, periods in (("projection", 3, 7, 3), ("pruning", 12, 23, 4)):
        infos = [s.stage(k) for k in range(start, start + steps)]
        assert {i.name for i in infos} == {name} and [i.period for i in infos] == sorted(i.period for i in infos)
        lengths = Counter(i.period for i in infos)
        assert sum(lengths.values()) == steps and max(lengths.values()) - min(lengths.values()) <= 1
        assert all(i.step_in_period < i.period_steps == lengths[i.period] for i in infos)
    gap = s.stage(10)  # between projection end (10) and pruning start (12): bits settled
    assert (gap.name, gap.period, gap.step_in_period, gap.period_steps) == ("projection", 3, 0, 2)


def test_validation_names_the_option():
    with pytest.raises(ConfigError, match="'pruning_periods'.*4 pruning steps cannot hold 5 periods"):
        Schedule(total_steps=100, steps_per_epoch=10, pruning_start=50, pruning_steps=4, pruning_periods=5)
    with pytest.raises(ConfigError, match="'pruning_start'.*before projection ends"):
        Schedule(total_steps=100, steps_per_epoch=10, warmup_steps=10, projection_steps=20, projection_periods=2,
                 pruning_start=20, pruning_steps=10, pruning_periods=2)
    with pytest.raises(ConfigError, match="'pruning'.*after the last step"):
        Schedule(total_steps=100, steps_per_epoch=10, pruning_start=95, pruning_steps=10, pruning_periods=2)
    with pytest.raises(ConfigError, match="'pruning_start'"):
        from_dict(ScheduleConfig, {"warmup": 0.3, "projection": 0.2, "pruning_start": 0.4})
    with pytest.raises(ConfigError, match="did you mean 'pruning_periods'"):
        from_dict(ScheduleConfig, {"pruning_period": 3})


def test_plain_schedule_is_all_warmup_and_no_pruning_is_allowed():
    assert {Schedule.plain(50, 10).stage(k).name for k in range(50)} == {"warmup"}
    s = Schedule.from_config(10, ScheduleConfig(epochs=10, pruning=0.0))
    assert {s.stage(k).name for k in range(s.total_steps)} == {"warmup", "projection", "cooldown"}


def test_lr_schedules_warm_up_and_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = lr_scheduler(opt, "cosine", 10, warmup_steps=2, min_factor=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0]) and lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(
        torch.tensor(7 / 8 * torch.pi)).item()))
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lr_scheduler(opt, "constant", 10) is None
    with pytest.raises(ConfigError, match="'lr_schedule'"):
        lr_scheduler(opt, "steps", 10)


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 20, 60])
def test_short_runs_get_fewer_periods_of_at_least_one_step(steps):
    """A run shorter than the configured periods fits them to its steps instead of failing."""
    s = Schedule.from_config(2, ScheduleConfig(steps=steps))
    assert s.total_steps == steps
    assert s.projection_periods <= min(5, s.projection_steps) and s.pruning_periods <= min(5, s.pruning_steps)
    assert (s.pruning_periods > 0) == (s.pruning_steps > 0)
    assert Schedule.from_config(2, ScheduleConfig(steps=200)).pruning_periods == 5  # long runs: as configured
