"""Which export `compress` ships: the int8 QDQ model or its float twin (export.dequantize),
decided by what onnxruntime measured, not by bit widths.

    pick([Candidate("int8", {"1": 0.63, "32": 0.53}, 0.91),
          Candidate("float", {"1": 1.08, "32": 1.06}, 0.92)])
    -> Choice("float", "int8 is slower than the original at batch 1 (0.63x), 32 (0.53x); ...")

The rule (docs/realworld.md, "Never slower"):
0. The float twin computes the QDQ model's math without the activations' rounding (every
   DequantizeLinear applied). An int8 model that scores below it beyond the tolerance and the
   sampling noise is either one onnxruntime's int8 kernels do not compute exactly on this CPU
   (u8s8 saturation on x86 CPUs without VNNI, docs/deployment.md) or one whose activation
   rounding costs that much. `qdq_math`, the int8 file scored as its own QDQ math (no fused
   kernels), tells them apart where it was measured: only an int8 score below it (beyond the
   same tolerance) is the kernels', and then the twin ships, whatever the speed; otherwise the
   rules below decide. Without it, the kernels are taken to blame.
1. int8 is the default: it is the smaller file (4x smaller weights).
2. The float twin wins when the int8 model is slower than the original at some measured
   batch and the twin is not, or when the twin is faster than int8 by more than FASTER_BY
   (geometric mean of the speedups over the batches): a format that buys no speed costs
   only quality.
3. ...but never at a quality cost: the twin must score within the tolerance of int8
   (QUALITY_TOLERANCE for accuracy / agreement / cosine, a relative one for mse / max_abs).
   When the int8 model is slower than the original, shipping it defeats the purpose, so the
   twin's shortfall in accuracy / agreement only counts beyond the sampling noise of the
   held-out set: one standard error of the difference of two rates, sqrt(2 p (1 - p) / n)
   (16 held-out samples measure agreement in steps of 0.0625).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FASTER_BY = 0.05
QUALITY_TOLERANCE = 0.005  # half a point of accuracy or agreement; 0.005 cosine
RELATIVE_TOLERANCE = 0.05  # for lower-is-better metrics (mse, max_abs): 5 % of the int8 value
LOWER_IS_BETTER = ("mse", "max_abs")


@dataclass(frozen=True)
class Candidate:
    name: str
    speedup: dict[str, float]  # batch -> original p50 / this p50
    quality: float | None = None  # the metric's value (None: not measured)
    metric: str = "accuracy"
    samples: int | None = None  # held-out samples the quality was measured on

    @property
    def mean_speedup(self) -> float:
        values = [max(v, 1e-12) for v in self.speedup.values()]
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 1.0

    @property
    def slower(self) -> dict[str, float]:
        return {b: v for b, v in self.speedup.items() if v < 1.0}


@dataclass(frozen=True)
class Choice:
    name: str
    why: str


def pick(candidates: list[Candidate], qdq_math: Candidate | None = None) -> Choice:
    """The first candidate (int8) unless the second (the float twin) wins by the rule above.
    `qdq_math`: the first scored as its own QDQ math (rule 0), when that was measured."""
    default = candidates[0]
    if len(candidates) < 2:
        return Choice(default.name, "the only export measured")
    alt = candidates[1]
    wrong = quality_loss(alt, default, noise=True)  # rule 0's trigger (kernels_suspect)
    if wrong is not None:
        lost = f"{default.name}'s {wrong.removeprefix('its ')} for its {alt.name} twin"
        cause = "(u8s8 saturation on x86 CPUs without VNNI; docs/deployment.md)"
        if qdq_math is None:  # the same weights: int8 kernels that do not compute the QDQ model
            return Choice(alt.name, f"{lost}, which computes the same weights: onnxruntime's int8 kernels on this "
                                    f"CPU do not compute it exactly {cause}")
        if quality_loss(qdq_math, default, noise=True) is not None:
            return Choice(alt.name, f"{lost}, and {qdq_math.quality:.4f} as its own QDQ math: onnxruntime's int8 "
                                    f"kernels on this CPU compute another model {cause}")
    rescue = bool(default.slower) and not alt.slower
    faster = alt.mean_speedup > default.mean_speedup * (1 + FASTER_BY)
    if not (rescue or faster):
        return Choice(default.name, f"{alt.name} is not faster by more than {FASTER_BY:.0%} "
                                    f"({alt.mean_speedup:.2f}x vs {default.mean_speedup:.2f}x)")
    lost = quality_loss(default, alt, noise=rescue)
    if lost is not None:
        return Choice(default.name, f"{alt.name} runs faster ({alt.mean_speedup:.2f}x vs "
                                    f"{default.mean_speedup:.2f}x) but {lost}")
    if rescue:
        slow = ", ".join(f"{b} ({v:.2f}x)" for b, v in default.slower.items())
        why = f"{default.name} is slower than the original at batch {slow}; {alt.name} is not"
    else:
        why = f"{alt.name} runs {alt.mean_speedup / default.mean_speedup:.2f}x faster than {default.name}"
    return Choice(alt.name, why + " at no quality cost")


def kernels_suspect(candidates: list[Candidate]) -> bool:
    """Rule 0's trigger: the int8 model (first) scores below its float twin (second) beyond the
    tolerance and the sampling noise, so the int8 file's own QDQ math is worth scoring."""
    return len(candidates) > 1 and quality_loss(candidates[1], candidates[0], noise=True) is not None


RATES = ("accuracy", "agreement")  # shares of samples: their sampling noise is binomial


def quality_loss(default: Candidate, alt: Candidate, noise: bool = False) -> str | None:
    """Why `alt` scores too far below `default`, or None when it does not (or one is unknown).
    `noise`: a rate's tolerance is at least its standard error on the samples measured."""
    if default.quality is None or alt.quality is None:
        return None
    if alt.metric in LOWER_IS_BETTER:
        limit = default.quality * (1 + RELATIVE_TOLERANCE) + 1e-12
        if alt.quality > limit:
            return f"its {alt.metric} is {alt.quality:.4g} vs {default.quality:.4g}"
        return None
    tolerance = QUALITY_TOLERANCE
    if noise and alt.metric in RATES and default.samples:
        p = min(max(default.quality, 0.0), 1.0)
        tolerance = max(tolerance, math.sqrt(2 * p * (1 - p) / default.samples))
    if alt.quality < default.quality - tolerance:
        return f"its {alt.metric} is {alt.quality:.4f} vs {default.quality:.4f}"
    return None
