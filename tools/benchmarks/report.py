"""MODEL.json results -> a Pareto plot per model and the markdown page.

    python tools/benchmarks/report.py [--results docs/benchmarks] [--doc docs/benchmarks.md]

regenerates the page from every MODEL.json in the results folder (run.py calls the same
functions after each benchmark).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from geta_onnx.io import write_bytes_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from tools.benchmarks.models import NAMES  # noqa: E402
from tools.benchmarks.rows import SCHEDULE_KEYS  # noqa: E402

MARKERS = {"fp32": "o", "int8": "s", "l1": "v", "l1-int8": "D", "geta": "*"}
KIND_LABELS = {"fp32": "fp32 original", "int8": "int8 PTQ", "l1": "L1 + FT (fp32)", "l1-int8": "L1 + FT + int8 PTQ",
               "geta": "geta-onnx"}
COLORS = {"fp32": "black", "int8": "tab:blue", "l1": "tab:gray", "l1-int8": "tab:orange", "geta": "tab:red"}


# --------------------------------------------------------------------------- environment
def environment(threads: int) -> dict:
    """CPU model, thread count and library versions of this run (those of compress's report)."""
    from geta_onnx.compress import versions
    from geta_onnx.latency.table import cpu_name

    v = versions()
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": threads, "python": v["python"],
            "onnxruntime": v["onnxruntime"], "onnx": v["onnx"], "torch": v["torch"], "numpy": v["numpy"],
            "geta_onnx": v["geta_onnx"],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# --------------------------------------------------------------------------- plot
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and quality
    (higher), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_png(result: dict, path: Path) -> None:
    """Quality vs onnxruntime latency, one panel per batch size, the Pareto front dashed."""
    import io

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = result["latency"]["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    for ax, b in zip(axes[0], batches):
        pts = [(r["latency_ms"][str(b)], r["quality"]["value"]) for r in rows]
        for r, (x, y) in zip(rows, pts):
            ax.scatter(x, y, marker=MARKERS.get(r["kind"], "o"), color=COLORS.get(r["kind"], "tab:green"),
                       s=90 if r["kind"] == "geta" else 50, zorder=3)
            ax.annotate(r["id"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="tab:red", alpha=0.5, zorder=2)
        if rows[0]["quality"].get("percent"):
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_xscale("log")
        ax.set_xlabel(f"onnxruntime latency, batch {b} (ms, median, {result['environment']['threads']} threads)")
        ax.set_ylabel(result["quality_label"])
        ax.grid(True, which="both", alpha=0.3)
    kinds = dict.fromkeys(r["kind"] for r in rows)
    handles = [plt.Line2D([], [], marker=MARKERS.get(k, "o"), color=COLORS.get(k, "tab:green"), linestyle="",
                          label=KIND_LABELS.get(k, k)) for k in kinds]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{result['title']}{' (--quick smoke run)' if result.get('quick') else ''}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- markdown
def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _fmt_time(s: float) -> str:
    return "-" if not s else f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def _quality(r: dict) -> str:
    v = r["quality"]["value"]
    return f"{v:.2%}" if r["quality"].get("percent") else f"{v:.4f}"


def _predicted(r: dict) -> tuple[int, float, float] | None:
    """(batch, ms, speedup) the latency model of a geta-onnx row predicted (rows of a latency
    budget, docs/latency.md: the faster of the int8 and float exports, as compress ships the
    faster; the speedup against the original as compress timed it at the start), else None."""
    lat = (r.get("report") or {}).get("latency_model")
    if not lat or not lat.get("predicted_ms"):
        return None
    ms = min(lat["predicted_ms"].values())
    return int(lat["batch"]), ms, lat["original_ms"]["predicted"] / ms


def table(result: dict) -> str:
    batches = [str(b) for b in result["latency"]["batches"]]
    predicted = any(_predicted(r) for r in result["rows"])
    head = (["row", result["quality_label"], "rel. BOPs", "MACs", "size"] + [f"latency b{b}" for b in batches]
            + (["predicted"] if predicted else []) + [f"speedup b{b}" for b in batches]
            + ["int8 / float ops", "compression time"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["label"], _quality(r), f"{r['relative_bops']:.4f}", f"{r['macs'] / 1e6:.1f} M", _fmt_size(r["size_bytes"])]
        cells += [f"{r['latency_ms'][b]:.2f} ms" for b in batches]
        if predicted:
            p = _predicted(r)
            cells.append(f"{p[1]:.2f} ms, {p[2]:.2f}x (b{p[0]})" if p else "")
        cells += [f"{r['speedup'][b]:.2f}x" for b in batches]
        cells += [f"{r['fusion']['int8']} / {r['fusion']['float']}", _fmt_time(r["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fp32_training_line(result: dict) -> list[str]:
    """The compression times beside fp32 training of the original for the same epochs (the
    preparation's own training, scaled to the compression epochs), when the benchmark trained it."""
    prep, s = result.get("prep") or {}, result["settings"]
    if not prep.get("fp32_train_seconds") or not prep.get("fp32_epochs"):
        return []
    fp32 = prep["fp32_train_seconds"] * s["epochs"] / prep["fp32_epochs"]
    geta = [r for r in result["rows"] if r["kind"] == "geta"]
    ratios = ", ".join(f"{r['id']} {r['seconds'] / fp32:.2f}x" for r in geta)
    return [f"- fp32 training of the original for the same {s['epochs']} epochs (torch, no compression): "
            f"{_fmt_time(fp32)}" + (f"; geta-onnx compression time over it: {ratios}" if ratios else "")]


def guard_lines(result: dict) -> list[str]:
    """Each guarded geta-onnx row's drop on the held-out samples its guard's checks never scored
    (the report's guard.exported.unseen: the checks chose on the split's first ones), where the
    split had more samples than the checks took."""
    out = []
    for r in result["rows"]:
        guard = (r.get("report") or {}).get("guard") or {}
        unseen = (guard.get("exported") or {}).get("unseen")
        if r["kind"] == "geta" and unseen:
            out.append(f"- {r['label']}: its guard's checks scored the first {guard['samples']} held-out samples; on "
                       f"the {unseen['samples']} after them, which no check read, the drop was "
                       f"{unseen['drop']:+.4f} (tolerance {guard['tolerance']:g})")
    return out


def schedule_line(result: dict) -> list[str]:
    """The geta-onnx rows' training schedule, from their reports: where pruning ended, as a share
    of the steps (the rest trains the final structure); nothing for rows made before the report
    summary kept it."""
    seen = sorted({tuple(r["report"]["schedule"][k] for k in SCHEDULE_KEYS) for r in result["rows"]
                   if r["kind"] == "geta" and "schedule" in r.get("report", {})})
    parts = [f"pruning done by {start + length:.0%} of the steps (warm-up {warmup:g}, projection {projection:g}, "
             f"pruning from {start:g} for {length:g})" for warmup, projection, start, length in seen]
    return ["- geta-onnx schedule: " + "; ".join(parts)] if parts else []


def model_section(result: dict, png: str) -> str:
    env, lat, s = result["environment"], result["latency"], result["settings"]
    out = [f"## {result['title']}", ""]
    if result.get("quick"):
        out += ["> **Smoke run (`--quick`)**: tiny data subsets and 1 epoch; the numbers only show that every",
                "> row runs end to end. Run without `--quick` for the real comparison.", ""]
    if result.get("skipped"):
        out += [f"> Rows not run: {'; '.join(result['skipped'])}.", ""]
    out += [table(result), "", f"![quality vs latency]({png})", "",
            f"- run: `{result['command']}` on {env['date']}; {env['cpu']} ({env['cpus']} CPUs), onnxruntime "
            f"{env['onnxruntime']} with {lat['threads']} intra-op threads; latency = {lat['statistic']} of "
            f"{lat['repeats']} runs after {lat['warmup']} warm-up runs, all rows timed in one call ("
            f"{lat.get('method', 'interleaved')})",
            f"- libraries: onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, torch {env['torch']}, "
            f"numpy {env['numpy']}, geta-onnx {env['geta_onnx']}, Python {env['python']}",
            f"- compression epochs (geta-onnx and the L1 fine-tuning alike): {s['epochs']}; fine-tuning: Adam "
            f"lr {s['lr']:g}, cosine decay, batch {s['batch_size']}, loss `{s['finetune_loss']}`; PTQ calibration: "
            f"{s['calibration_samples']} training samples, op types: {s.get('ptq_op_types') or 'all'}; L1 kept widths: "
            f"multiples of {s['unit']}"]
    if s.get("geta_config"):
        out.append("- geta-onnx config (its --config file): " + "; ".join(
            f"[{section}] " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
            for section, values in s["geta_config"].items()))
    out += fp32_training_line(result)
    out += schedule_line(result)
    out += guard_lines(result)
    out += [f"- {n}" for n in result.get("notes", [])]
    if result.get("findings"):  # MODEL.findings.md beside the JSON: what the numbers mean, written by hand
        out += ["", "### Findings", "", result["findings"].strip()]
    geta = [r for r in result["rows"] if r["kind"] == "geta"]
    if geta:
        out += ["", "geta-onnx commands (exactly as run):", "", "```bash"] + [r["command"] for r in geta] + ["```"]
    l1 = [r for r in result["rows"] if r["kind"] == "l1-int8"]
    for r in l1:
        p = r["details"]["prune"]
        widths = ", ".join(f"{k}/{t}" for k, t in p["widths"].values())
        out += ["", f"{r['id']}: L1 target {p['target_macs'] / 1e6:.2f} M MACs, reached {p['macs'] / 1e6:.2f} M; "
                f"kept / total channels per layer group: {widths}"]
    return "\n".join(out)


INTRO = """# Benchmarks: geta-onnx against the alternatives

Per model, one reproducible run of `tools/benchmarks/run.py` compares:

- **fp32 original**;
- **int8 PTQ**: onnxruntime's static post-training quantization of the original (QDQ, per-channel
  int8 weights, uint8 activations, MinMax calibration on training inputs, after onnxruntime's
  `quant_pre_process`);
- **L1 prune + FT (+ int8 PTQ)**: the multi-stage pipeline. Structured L1-magnitude pruning
  (Li et al. 2017: the same fraction of every layer, lowest filter L1 first) on geta-onnx's own
  pruning groups to the MACs the geta-onnx row reached, kept widths in multiples of 16; fine-tuned
  for the same number of epochs as geta-onnx trains (Adam, cosine decay); then the same int8 PTQ.
  The fp32 row after fine-tuning is shown too, so pruning and quantization can be told apart;
- **geta-onnx**: `geta-onnx compress` at two budgets (group sparsity, or a predicted speedup `Xx`: `--target-speedup X`): one training run of joint
  structured pruning and mixed-precision quantization-aware training, exported as QDQ ONNX.

Columns: quality (the model's metric, measured in onnxruntime on held-out data); relative BOPs
(MACs x weight bits x activation bits over the fp32 original at 32 x 32 bits, weighted layers
only; geta-onnx rows from its report, which knows the learned bit widths); MACs per sample
(symbolic dims count 1); file size; onnxruntime CPU latency at batch 1 and 32 (median; all rows
of a model timed in one `geta_onnx.bench.measure_latency` call: rotating blocks, one live session at a time); for
geta-onnx rows with a latency budget, the time its latency model predicted at the budget's batch
and the speedup that is against the original as the run timed it at its start (docs/latency.md;
compare it with the speedup column: the host's speed moves between the run and this table); speedup against the fp32 original; integer kernels onnxruntime fused vs weighted ops left in float; wall-clock time
of the compression itself (PTQ: pre-processing + calibration; L1 rows: pruning + fine-tuning
(+ PTQ); geta-onnx: training + export as its report gives it).
"""


def _budgets_option(result: dict | None) -> str:
    """` --budgets ...` as the published run of a model gave them ("" for a model not run)."""
    budgets = (result or {}).get("settings", {}).get("budgets")
    return f" --budgets {','.join(budgets)}" if budgets else ""


def render(results: dict[str, dict], png_rel: str) -> str:
    parts = [INTRO, "## Reproduce", "", "```bash",
             "apt-get install dataset-fashion-mnist   # Fashion-MNIST (fmnist, mobilenetv2)",
             "python tools/prepare_assets.py          # MobileNetV2, MiniLM and CREPE weights into assets/",
             "python tools/benchmarks/run.py fmnist --quick   # smoke run: tiny subsets, 1 epoch, results in runs/"]
    parts += [f"python tools/benchmarks/run.py {n}" + _budgets_option(results.get(n)) for n in NAMES]
    parts += ["python tools/benchmarks/report.py   # the page again from the JSON results", "```", ""]
    for name in NAMES:
        if name in results:
            parts += [model_section(results[name], f"{png_rel}/{name}_pareto.png"), ""]
        else:
            parts += [f"## {name}", "", f"Not run yet: `python tools/benchmarks/run.py {name}`.", ""]
    return "\n".join(parts).rstrip() + "\n"


def load_results(folder: Path) -> dict[str, dict]:
    out = {}
    for name in NAMES:
        f = folder / f"{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
            findings = folder / f"{name}.findings.md"
            if findings.is_file():
                out[name]["findings"] = findings.read_text()
    return out


def write_doc(results_dir: Path, doc: Path, png_dir: Path) -> None:
    """Regenerate `doc` from every MODEL.json in results_dir (plots linked from png_dir)."""
    rel = os.path.relpath(png_dir, doc.parent)
    write_text_atomic(doc, render(load_results(results_dir), rel))


def main() -> None:
    p = argparse.ArgumentParser(description="Regenerate the benchmark page from the JSON results.")
    p.add_argument("--results", default=str(ROOT / "docs" / "benchmarks"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    a = p.parse_args()
    results = Path(a.results)
    for name, result in load_results(results).items():
        pareto_png(result, results / f"{name}_pareto.png")
    write_doc(results, Path(a.doc), results)
    print(f"wrote {a.doc}")


if __name__ == "__main__":
    main()
