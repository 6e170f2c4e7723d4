"""The training length in steps and the GETA stage boundaries (docs/algorithm.md section 3).

    step:   0 ........ S_b ......... S_b+K_b .. S_p ............. S_p+K_p ........ total
    stage:  warmup     projection (B periods)   |  pruning (P periods)  cooldown
Projection periods split K_b steps, pruning periods split K_p steps, as evenly as integers
allow (lengths differ by at most one). Steps between S_b + K_b and S_p stay "projection" with
period == B: every bit reduction is done, pruning has not started.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ScheduleConfig
from ..errors import ConfigError

STAGES = ("warmup", "projection", "pruning", "cooldown")


@dataclass(frozen=True)
class StageInfo:
    """Where a step falls: its stage, the period inside the stage, the steps already taken in
    that period (tau) and the period's length (T; QASSO's forget rate is 1 / (T - tau))."""

    name: str
    period: int
    step_in_period: int
    period_steps: int


def plan_steps(steps_per_epoch: int, cfg: ScheduleConfig = ScheduleConfig()) -> tuple[int, int]:
    """(total steps, epochs). steps > 0 wins; else epochs > 0; else enough epochs for
    min_steps (GETA needs room for every stage), capped at max_epochs."""
    if steps_per_epoch < 1:
        raise ConfigError("the training data yields no batch per epoch; lower batch_size or give more data")
    if cfg.steps:
        return cfg.steps, math.ceil(cfg.steps / steps_per_epoch)
    epochs = cfg.epochs or min(max(1, math.ceil(cfg.min_steps / steps_per_epoch)), cfg.max_epochs)
    return epochs * steps_per_epoch, epochs


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0  # S_b
    projection_steps: int = 0  # K_b
    projection_periods: int = 0  # B
    pruning_start: int = 0  # S_p
    pruning_steps: int = 0  # K_p
    pruning_periods: int = 0  # P

    def __post_init__(self):
        def need(cond, option, msg):
            if not cond:
                raise ConfigError(f"schedule option '{option}': {msg}")

        need(self.total_steps >= 1 and self.steps_per_epoch >= 1, "steps",
             "total steps and steps per epoch must be >= 1")
        need(self.warmup_steps >= 0, "warmup", "must be >= 0")
        for stage, steps, periods in (("projection", self.projection_steps, self.projection_periods),
                                      ("pruning", self.pruning_steps, self.pruning_periods)):
            need(periods >= 0, f"{stage}_periods", "must be >= 0")
            need(steps >= periods and (periods > 0 or steps == 0), f"{stage}_periods",
                 f"{steps} {stage} steps cannot hold {periods} periods of at least one step; "
                 f"train longer (steps / epochs) or lower {stage}_periods")
        need(self.projection_end <= self.total_steps, "projection",
             f"projection ends at step {self.projection_end}, after the last step {self.total_steps}")
        if self.pruning_steps:
            need(self.projection_end <= self.pruning_start, "pruning_start",
                 f"pruning starts at step {self.pruning_start}, before projection ends at step {self.projection_end}")
            need(self.pruning_end <= self.total_steps, "pruning",
                 f"pruning ends at step {self.pruning_end}, after the last step {self.total_steps}")

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, steps_per_epoch: int, cfg: ScheduleConfig = ScheduleConfig()) -> Schedule:
        """Length from plan_steps, stage boundaries as fractions of the total (rounded down).
        A short run gets fewer periods than configured (at least one step each), never an
        error: 4 projection steps hold 4 periods, not 5."""
        total, _ = plan_steps(steps_per_epoch, cfg)
        at = lambda frac: int(total * frac + 1e-9)  # noqa: E731
        projection = at(cfg.warmup + cfg.projection) - at(cfg.warmup)
        pruning = at(cfg.pruning_start + cfg.pruning) - at(cfg.pruning_start)
        return cls(total, steps_per_epoch, warmup_steps=at(cfg.warmup),
                   projection_steps=projection,
                   projection_periods=min(cfg.projection_periods, projection) if cfg.projection > 0 else 0,
                   pruning_start=at(cfg.pruning_start),
                   pruning_steps=pruning,
                   pruning_periods=min(cfg.pruning_periods, pruning) if cfg.pruning > 0 else 0)

    @classmethod
    def plain(cls, total_steps: int, steps_per_epoch: int) -> Schedule:
        """No GETA stages: every step is warm-up (ordinary training)."""
        return cls(total_steps, steps_per_epoch, warmup_steps=total_steps)

    # ---- queries --------------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def projection_end(self) -> int:
        return self.warmup_steps + self.projection_steps

    @property
    def pruning_end(self) -> int:
        return self.pruning_start + self.pruning_steps

    @property
    def shortest_pruning_period(self) -> int:
        """Steps of the shortest pruning period (lengths differ by one at most); 0 without pruning."""
        return self.pruning_steps // self.pruning_periods if self.pruning_periods else 0

    @property
    def pruning_period_starts(self) -> list[int]:
        """The first step of each pruning period."""
        return [self.pruning_start + (p * self.pruning_steps) // self.pruning_periods
                for p in range(self.pruning_periods)]

    def stage(self, step: int) -> StageInfo:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return StageInfo("warmup", 0, step, self.warmup_steps)
        prunes = self.pruning_steps > 0
        if step < (self.pruning_start if prunes else self.projection_end):
            if step >= self.projection_end:  # every bit reduction done, pruning not started yet
                return StageInfo("projection", self.projection_periods, step - self.projection_end,
                                 self.pruning_start - self.projection_end)
            period = _period(step - self.warmup_steps, self.projection_steps, self.projection_periods)
            return StageInfo("projection", *period)
        if prunes and step < self.pruning_end:
            return StageInfo("pruning", *_period(step - self.pruning_start, self.pruning_steps, self.pruning_periods))
        end = self.pruning_end if prunes else self.projection_end
        return StageInfo("cooldown", 0, step - end, max(self.total_steps - end, 0))


def _period(offset: int, steps: int, periods: int) -> tuple[int, int, int]:
    """Period p covers offsets [floor(p * steps / periods), floor((p + 1) * steps / periods))."""
    p = min((offset * periods) // steps, periods - 1)
    while p > 0 and offset < (p * steps) // periods:  # integer boundaries: at most one step back
        p -= 1
    while offset >= ((p + 1) * steps) // periods:
        p += 1
    start, end = (p * steps) // periods, ((p + 1) * steps) // periods
    return p, offset - start, end - start


def lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, *, warmup_steps: int = 0,
                 min_factor: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step LR schedule: "constant" (None), "cosine" or "linear" decay to
    min_factor * lr after an optional linear warm-up. Stepped once per optimizer step."""
    if kind == "constant":
        return None
    if kind not in ("cosine", "linear"):
        raise ConfigError(f"option 'lr_schedule': expected constant, cosine or linear, got '{kind}'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(kind, total_steps, warmup_steps, min_factor))


class _Factor:
    """LR multiplier per step; a class (not a lambda) so the scheduler's state_dict stays plain."""

    def __init__(self, kind: str, total: int, warmup: int, floor: float):
        self.kind, self.total, self.warmup, self.floor = kind, max(total, 1), warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        decay = 0.5 * (1 + math.cos(math.pi * frac)) if self.kind == "cosine" else 1 - frac
        return self.floor + (1 - self.floor) * decay
