"""tools/bench_scale.py's geta-run row: steps timed over a short four-stage schedule, weighted
as a real run of the default schedule weighs them."""
import pytest

from geta_onnx.config import ScheduleConfig
from geta_onnx.train import Schedule
from tools import bench_scale

COST = {"warmup": 1.0, "projection": 2.0, "pruning": 3.0, "cooldown": 0.5}  # seconds of an ordinary step
START = 10.0  # what a period start adds


def _timed(sched: Schedule) -> list[float]:
    seconds = []
    for k in range(sched.total_steps):
        info = sched.stage(k)
        start = info.name in ("projection", "pruning") and info.step_in_period == 0
        seconds.append(COST[info.name] + (START if start else 0.0) + (99.0 if k < bench_scale.WARM else 0.0))
    return seconds


def test_stages_weigh_as_the_default_schedule_of_the_real_run():
    n = 6  # bench_scale's schedule for --steps 48
    sched = Schedule(8 * n, 8 * n, warmup_steps=n, projection_steps=2 * n, projection_periods=2,
                     pruning_start=3 * n, pruning_steps=3 * n, pruning_periods=3)
    real = Schedule.from_config(2000, ScheduleConfig())
    want = (real.warmup_steps * 1.0 + (real.pruning_start - real.warmup_steps) * 2.0 + real.pruning_steps * 3.0
            + (real.total_steps - real.pruning_end) * 0.5
            + (real.projection_periods + real.pruning_periods) * START) / 2000
    got = bench_scale.run_weighted(_timed(sched), sched, 2000)
    assert got == pytest.approx(want)
    # the default schedule: 2 % warm-up, 5 % projection, 15 % pruning, the rest cool-down, 10 period starts
    assert want == pytest.approx(0.02 * 1 + 0.05 * 2 + 0.15 * 3 + 0.78 * 0.5 + 10 * START / 2000)
    # a longer run spreads the period starts thinner; the first WARM steps never count
    assert bench_scale.run_weighted(_timed(sched), sched, 20000) < got


def test_too_few_steps_to_time_every_stage_give_no_row():
    n = 2  # --steps 16: the two warm-up steps are the WARM ones, left out
    sched = Schedule(8 * n, 8 * n, warmup_steps=n, projection_steps=2 * n, projection_periods=2,
                     pruning_start=3 * n, pruning_steps=3 * n, pruning_periods=3)
    assert bench_scale.run_weighted(_timed(sched), sched, 2000) is None
