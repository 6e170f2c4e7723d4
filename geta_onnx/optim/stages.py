"""The four QASSO stages in steps (geta-algorithm.md section 3):

    warm-up      k < S_b
    projection   S_b <= k < S_p + K_p: the upper bit bound shrinks in B periods over K_b steps
    pruning      S_p <= k < S_p + K_p: P periods of T = K_p / P steps
    cool-down    k >= S_p + K_p: bits frozen
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class StagePlan:
    warmup: int  # S_b
    projection_steps: int  # K_b
    projection_periods: int  # B
    pruning_start: int  # S_p
    pruning_steps: int  # K_p
    pruning_periods: int  # P

    def __post_init__(self):
        if min(self.warmup, self.projection_steps, self.pruning_start, self.pruning_steps) < 0:
            raise ConfigError("stage lengths must be >= 0")
        if self.projection_periods < 1 or self.pruning_periods < 1:
            raise ConfigError("options 'projection_periods' and 'pruning_periods' must be >= 1")
        if self.pruning_steps and self.pruning_steps < self.pruning_periods:
            raise ConfigError(f"pruning stage of {self.pruning_steps} steps cannot hold {self.pruning_periods} periods")
        if self.projection_steps and self.projection_steps < self.projection_periods:
            raise ConfigError(f"projection of {self.projection_steps} steps cannot hold {self.projection_periods} periods")
        if self.pruning_start < self.warmup:
            raise ConfigError("the pruning stage cannot start before the warm-up ends")

    @classmethod
    def from_fractions(cls, total: int, warmup: float = 0.1, projection: float = 0.2, pruning: float = 0.4,
                       projection_periods: int = 5, pruning_periods: int = 5) -> "StagePlan":
        """Stages as fractions of `total` steps: warm-up, projection, then pruning, the rest
        cool-down (defaults 10 % / 20 % / 40 % / 30 %)."""
        s_b = int(total * warmup)
        k_b = max(projection_periods, int(total * projection))
        k_p = max(pruning_periods, int(total * pruning))
        k_p -= k_p % pruning_periods  # whole periods
        return cls(s_b, k_b, projection_periods, s_b + k_b, k_p, pruning_periods)

    @property
    def pruning_end(self) -> int:
        return self.pruning_start + self.pruning_steps

    @property
    def period_length(self) -> int:
        return max(1, self.pruning_steps // self.pruning_periods)

    def stage(self, step: int) -> str:
        if step < self.warmup:
            return "warmup"
        if step >= self.pruning_end:
            return "cooldown"
        if step >= self.pruning_start:
            return "pruning"
        return "projection"

    def pruning_period(self, step: int) -> tuple[int, int]:
        """(period index, steps into the period) inside the pruning stage."""
        into = step - self.pruning_start
        period = min(into // self.period_length, self.pruning_periods - 1)
        return period, into - period * self.period_length

    def period_steps(self, period: int) -> int:
        """T of this period (the last one absorbs the remainder)."""
        if period < self.pruning_periods - 1:
            return self.period_length
        return self.pruning_steps - self.period_length * (self.pruning_periods - 1)

    def projection_period(self, step: int) -> int:
        """Bit reductions done so far: 1 in the first projection period ... B after it."""
        if step < self.warmup:
            return 0
        length = max(1, self.projection_steps // self.projection_periods)
        return min(self.projection_periods, (step - self.warmup) // length + 1)
