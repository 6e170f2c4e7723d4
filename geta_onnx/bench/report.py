"""The compression report: the JSON that `compress` writes and `gate` reads.

Schema (version 1); every number is a plain JSON number:

    {
      "schema": 1,
      "model": {"original": "model.onnx", "compressed": "out.onnx"},       # optional
      "accuracy": {"original": 0.9214, "compressed": 0.9205},              # fractions of 1
      "fidelity": {"metric": "agreement", "value": 0.993},                 # when there are no labels
      "latency_ms": {"original": {"1": 3.1, "32": 23.3},                   # p50 ms per batch, by batch
                     "compressed": {"1": 1.6, "32": 6.1}},
      "speedup": {"1": 1.94, "32": 3.82},                                  # original / compressed
      "relative_bops": 0.05,                                               # optional
      ...                                                                  # any other keys: kept as they are
    }

Conventions:
- accuracy is a fraction of 1; the accuracy DROP is original - compressed in the same unit,
  so 0.01 is one percentage point (a drop < 0 is a gain).
- at least one of `accuracy` and `fidelity` is present. fidelity metrics: agreement and
  cosine (higher is better, 1 = identical) or mse / max_abs (lower is better, 0 = identical).
- latency is the onnxruntime p50 per batch in ms (bench.latency); batch keys are strings.
- speedup[b] = latency_ms.original[b] / latency_ms.compressed[b] (> 1: faster).
- relative_bops: the compressed model's bit operations / the fp32 original's (quant.bops).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import GetaError

SCHEMA_VERSION = 1
FIDELITY_METRICS = {"agreement": "higher", "cosine": "higher", "mse": "lower", "max_abs": "lower"}


class ReportError(GetaError):
    """A report file is missing, unreadable or does not follow the schema above."""


def build_report(*, latency_original: dict, latency_compressed: dict, accuracy_original: float | None = None,
                 accuracy_compressed: float | None = None, fidelity: tuple[str, float] | None = None,
                 relative_bops: float | None = None, original: str | None = None, compressed: str | None = None,
                 **extra) -> dict:
    """A validated report dict. Latencies: {batch: ms} (int or str keys), e.g. from
    `latency_p50(measure_latency(...)[i])`; fidelity: (metric, value); extra keys are kept."""
    report: dict = {"schema": SCHEMA_VERSION}
    if original or compressed:
        report["model"] = {"original": original, "compressed": compressed}
    if accuracy_original is not None or accuracy_compressed is not None:
        report["accuracy"] = {"original": accuracy_original, "compressed": accuracy_compressed}
    if fidelity is not None:
        report["fidelity"] = {"metric": fidelity[0], "value": fidelity[1]}
    lat_o = {str(b): float(v) for b, v in latency_original.items()}
    lat_c = {str(b): float(v) for b, v in latency_compressed.items()}
    report["latency_ms"] = {"original": lat_o, "compressed": lat_c}
    report["speedup"] = {b: lat_o[b] / lat_c[b] for b in lat_o if b in lat_c and lat_c[b] > 0}
    if relative_bops is not None:
        report["relative_bops"] = float(relative_bops)
    report.update(extra)
    return validate_report(report)


def latency_p50(result: dict) -> dict[str, float]:
    """{batch: p50 ms} of one model's entry in measure_latency's results."""
    return {b: lat["p50"] for b, lat in result["latency_ms"].items()}


def read_report(path: str | os.PathLike) -> dict:
    """Read and validate a report file; every problem is one ReportError naming the file."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such report; `geta-onnx compress` writes it beside the output model") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read the report ({e})") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); re-run compress") from None
    return validate_report(report, label=str(path))


def validate_report(report, label: str = "report") -> dict:
    """Check the schema; returns the report unchanged."""
    if not isinstance(report, dict):
        raise ReportError(f"{label}: expected a JSON object at the top level")
    if "accuracy" not in report and "fidelity" not in report:
        raise ReportError(f"{label}: missing key 'accuracy' (or 'fidelity'); the report has no quality measurement")
    if "accuracy" in report:
        for k in ("original", "compressed"):
            v = _number(report, f"accuracy.{k}", label)
            if not 0.0 <= v <= 1.0:
                raise ReportError(f"{label}: accuracy.{k} = {v}: accuracies are fractions of 1 (0.92, not 92)")
    if "fidelity" in report:
        metric = _get(report, "fidelity.metric", label)
        if metric not in FIDELITY_METRICS:
            raise ReportError(f"{label}: fidelity.metric '{metric}' is unknown; expected one of "
                              f"{', '.join(FIDELITY_METRICS)}")
        _number(report, "fidelity.value", label)
    for side in ("original", "compressed"):
        lat = _get(report, f"latency_ms.{side}", label)
        if not isinstance(lat, dict) or not lat:
            raise ReportError(f"{label}: latency_ms.{side} must map batch sizes to milliseconds, e.g. {{\"1\": 3.1}}")
        for b in lat:
            _number(report, f"latency_ms.{side}.{b}", label)
    speedup = _get(report, "speedup", label)
    if not isinstance(speedup, dict) or not speedup:
        raise ReportError(f"{label}: speedup must map batch sizes to ratios, e.g. {{\"1\": 1.9}}")
    for b in speedup:
        _number(report, f"speedup.{b}", label)
    if "relative_bops" in report:
        _number(report, "relative_bops", label)
    return report


def _get(report: dict, dotted: str, label: str):
    node = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ReportError(f"{label}: missing key '{dotted}'; re-run compress or add it to the report")
        node = node[part]
    return node


def _number(report: dict, dotted: str, label: str) -> float:
    v = _get(report, dotted, label)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ReportError(f"{label}: '{dotted}' must be a finite number, got {v!r}")
    return float(v)
