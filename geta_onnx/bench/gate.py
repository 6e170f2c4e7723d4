"""The CI gate: compare a compression report (report.py) with accuracy / latency / BOPs budgets."""
from __future__ import annotations

from dataclasses import dataclass

from .report import FIDELITY_METRICS, ReportError


@dataclass(frozen=True)
class Check:
    name: str  # "accuracy drop", "speedup @ batch 32", ...
    value: float
    budget: float
    passed: bool
    shown: str  # the value and budget, formatted for people, e.g. "0.40 points <= 1.00 points"


def check_budgets(report: dict, *, max_accuracy_drop: float, min_speedup: float,
                  max_relative_bops: float | None = None, batch: int | None = None,
                  label: str = "report") -> list[Check]:
    """One Check per budget. `report` must have passed validate_report.

    accuracy drop = accuracy.original - accuracy.compressed (fractions; 0.01 = 1 point).
    Without accuracy, the fidelity loss stands in: 1 - value for agreement / cosine, the
    value itself for mse / max_abs (both 0 when the models agree exactly).
    Speedup: at `batch`, or at every batch size in the report when batch is None."""
    checks = [_quality(report, max_accuracy_drop)]
    speedups = report["speedup"]
    if batch is not None:
        if str(batch) not in speedups:
            raise ReportError(f"{label}: no speedup measured at batch {batch} (measured: "
                              f"{', '.join(speedups)}); choose one of those with --batch")
        speedups = {str(batch): speedups[str(batch)]}
    for b, s in speedups.items():
        checks.append(Check(f"speedup @ batch {b}", s, min_speedup, s >= min_speedup,
                            f"{s:.2f}x >= {min_speedup:.2f}x"))
    if max_relative_bops is not None:
        if "relative_bops" not in report:
            raise ReportError(f"{label}: missing key 'relative_bops'; drop --max-relative-bops or re-run compress")
        r = report["relative_bops"]
        checks.append(Check("relative BOPs", r, max_relative_bops, r <= max_relative_bops,
                            f"{r:.4f} <= {max_relative_bops:.4f}"))
    return checks


def _quality(report: dict, budget: float) -> Check:
    if "accuracy" in report:
        acc = report["accuracy"]
        drop = acc["original"] - acc["compressed"]
        return Check("accuracy drop", drop, budget, drop <= budget,
                     f"{drop * 100:.2f} points ({acc['original']:.4f} -> {acc['compressed']:.4f}) "
                     f"<= {budget * 100:.2f} points")
    metric, value = report["fidelity"]["metric"], report["fidelity"]["value"]
    loss = 1.0 - value if FIDELITY_METRICS[metric] == "higher" else value
    name = f"fidelity loss (1 - {metric})" if FIDELITY_METRICS[metric] == "higher" else f"fidelity loss ({metric})"
    return Check(name, loss, budget, loss <= budget, f"{loss:.4f} <= {budget:.4f}")
