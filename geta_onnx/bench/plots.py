"""PNG plots of a compression report (matplotlib, headless Agg backend).

plot_layers:  per weighted layer, kept / total output channels (bars) and the deployed
              weight and activation bit widths (markers), in graph order.
plot_summary: quality and per-batch latency of the original next to the compressed model, and
              the quality guard's curve over the pruning periods when a guard ran.
Both write atomically through a temporary file.
"""
from __future__ import annotations

import os
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers / CI
    import matplotlib.pyplot as plt

    return plt


def plot_layers(report: dict, path: str | os.PathLike) -> None:
    plt = _pyplot()
    layers = report["layers"]
    x = range(len(layers))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(layers) + 2), 6), sharex=True)
    top.bar(x, [la["total"] for la in layers], color="#d9d9d9", label="original")
    top.bar(x, [la["kept"] for la in layers], color="#3b75af", label="kept")
    top.set_ylabel("output channels")
    top.legend(loc="upper left", fontsize=8)
    for key, marker, label in (("weight_bits", "o", "weights"), ("act_bits", "s", "activations")):
        pts = [(i, la[key]) for i, la in enumerate(layers) if la[key] is not None]
        if pts:
            bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=label)
    bottom.set_ylabel("bits")
    bottom.set_ylim(0, 17)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="upper left", fontsize=8)
    else:  # every layer runs in float (the float twin shipped, bench/choice.py)
        bottom.text(0.5, 0.5, "every layer in float", transform=bottom.transAxes, ha="center", va="center")
    bottom.set_xticks(list(x))
    bottom.set_xticklabels([_short(la["name"]) for la in layers], rotation=90, fontsize=7)
    fig.suptitle("geta-onnx: kept channels and bit widths per layer")
    _save(fig, plt, path)


def plot_summary(report: dict, path: str | os.PathLike) -> None:
    plt = _pyplot()
    checks = (report.get("guard") or {}).get("checks") or []
    fig, axes = plt.subplots(1, 3 if checks else 2, figsize=(13.5 if checks else 9, 3.6))
    left, right = axes[0], axes[1]
    name, values = _quality(report)
    bars = left.bar(["original", "compressed"], values, color=["#a0a0a0", "#3b75af"])
    left.bar_label(bars, fmt="%.4f")
    left.set_title(name)
    left.set_ylim(min(values) * 0.9 if min(values) > 0 else 0, max(values) * 1.05 or 1)
    batches = list(report["speedup"])
    width = 0.38
    pos = range(len(batches))
    orig = [report["latency_ms"]["original"][b] for b in batches]
    comp = [report["latency_ms"]["compressed"][b] for b in batches]
    right.bar([p - width / 2 for p in pos], orig, width, color="#a0a0a0", label="original")
    bars = right.bar([p + width / 2 for p in pos], comp, width, color="#3b75af", label="compressed")
    right.bar_label(bars, labels=[f"{report['speedup'][b]:.2f}x" for b in batches])
    right.set_xticks(list(pos))
    right.set_xticklabels([f"batch {b}" for b in batches])
    right.set_ylabel("onnxruntime p50 latency (ms)")
    right.legend(fontsize=8)
    if checks:
        _plot_guard(axes[2], report["guard"])
    fig.tight_layout()
    _save(fig, plt, path)


def _plot_guard(ax, guard: dict) -> None:
    """The quality guard's curve: quality after each commit against the predicted speedup
    (latency budgets) or the share of groups removed, the tolerance as a dashed line."""
    checks = guard["checks"]
    speed = all("predicted_speedup" in c for c in checks)
    xs = [c["predicted_speedup"] if speed else c.get("sparsity", 0.0) for c in checks]
    ys = [c["quality"] for c in checks]
    kept = [c["action"] == "kept" for c in checks]
    ax.plot([x for x, k in zip(xs, kept) if k], [y for y, k in zip(ys, kept) if k], "o-", color="#3b75af",
            label="kept")
    if not all(kept):
        ax.plot([x for x, k in zip(xs, kept) if not k], [y for y, k in zip(ys, kept) if not k], "x", color="#c0392b",
                markersize=9, label="rolled back")
    ax.axhline(guard["baseline"] - guard["tolerance"], color="#808080", linestyle="--", linewidth=1,
               label="tolerance")
    ax.set_xlabel("predicted speedup (x)" if speed else "share of groups removed")
    ax.set_ylabel(guard["metric"])
    ax.set_title("quality guard, per pruning period")
    ax.legend(fontsize=8)


def _quality(report: dict) -> tuple[str, list[float]]:
    if "accuracy" in report:
        return "top-1 accuracy", [report["accuracy"]["original"], report["accuracy"]["compressed"]]
    f = report["fidelity"]
    return f"{f['metric']} with the original", [1.0 if f["metric"] in ("agreement", "cosine") else 0.0, f["value"]]


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _save(fig, plt, path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
