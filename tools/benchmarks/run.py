"""One benchmark: geta-onnx against int8 PTQ and the L1 prune -> fine-tune -> PTQ pipeline.

    python tools/benchmarks/run.py fmnist                 # the real run -> docs/benchmarks.md
    python tools/benchmarks/run.py fmnist --quick         # smoke run: tiny data, 1 epoch
    python tools/benchmarks/run.py fmnist --skip-geta     # baselines only (L1 to --l1-macs)
    python tools/benchmarks/run.py fmnist --fp32-onnx F --geta-onnx G --epochs 5
        # an fp32 model and a geta-onnx compress output made elsewhere (G.report.json beside G):
        # the baselines are made for them (L1 to G's MACs, fine-tuned --epochs) and all rows measured

Models: fmnist | mobilenetv2 | minilm | crepe. Work files (ONNX models, logs) go to
--out/MODEL/. The results go to --out/MODEL.json; a real run (no --quick) also writes
docs/benchmarks/MODEL.json and MODEL_pareto.png and regenerates docs/benchmarks.md from
every JSON there. A --quick run writes its plot and page into --out only.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geta_onnx.io import write_text_atomic  # noqa: E402
from tools.benchmarks import report, rows  # noqa: E402
from tools.benchmarks.measure import macs_of, measure  # noqa: E402
from tools.benchmarks.models import NAMES, prepare  # noqa: E402

DOCS = ROOT / "docs"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", choices=NAMES)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data subsets and epochs")
    p.add_argument("--out", help="work and results folder (default runs/benchmarks, --quick: runs/benchmarks-quick)")
    p.add_argument("--budgets", default="0.3,0.6",
                   help="geta-onnx budgets: group sparsities, or predicted speedups written 3x, each optionally "
                   "guarded: 4.5x@0.005 adds --max-accuracy-drop 0.005 (--min-fidelity 0.995 label-free) "
                   "(default 0.3,0.6)")
    p.add_argument("--skip-geta", action="store_true", help="no geta-onnx rows; the L1 rows prune to --l1-macs")
    p.add_argument("--l1-macs", default="0.55", help="without geta rows: L1 MAC targets as fractions of the "
                                                     "original, one per budget or one for all (default 0.55)")
    p.add_argument("--unit", type=int, default=16, help="L1 kept widths: multiples of this (default 16)")
    p.add_argument("--reuse", action="store_true", help="keep geta-onnx outputs made by the same command (and "
                   "the same geta-onnx defaults) earlier, and L1 "
                   "models made with the same settings")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads (default 2)")
    p.add_argument("--fp32-onnx", help="fmnist: this trained fp32 model instead of training one")
    p.add_argument("--geta-onnx", help="comma-separated geta-onnx compress outputs made earlier (their .report.json "
                                        "beside them) as the geta rows, instead of --budgets")
    p.add_argument("--epochs", type=int, help="fmnist: fine-tuning (and compress) epochs instead of the default")
    p.add_argument("--repeats", type=int, help="latency repeats per model and batch (default 50, --quick 10)")
    p.add_argument("--geta-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config setting for the geta-onnx runs, over the model's own (e.g. "
                   "prune.latency_selection=knapsack); repeatable; recorded in the results")
    return p.parse_args(argv)


def geta_settings(items: list[str]) -> dict:
    """--geta-set SECTION.KEY=VALUE items as config sections; a VALUE is read as TOML (a number, a
    boolean, a quoted string), else taken as a string."""
    import tomllib

    sections: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise SystemExit(f"--geta-set {item!r}: expected SECTION.KEY=VALUE, e.g. prune.latency_selection=knapsack")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        sections.setdefault(section, {})[name] = parsed
    return sections


def main(argv=None) -> None:
    import torch

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else ROOT / "runs" / ("benchmarks-quick" if a.quick else "benchmarks")
    work = out / a.model
    work.mkdir(parents=True, exist_ok=True)
    given = [(Path(g), _given_report(Path(g))) for g in a.geta_onnx.split(",")] if a.geta_onnx else []
    budgets = [rows.Budget(f"{rows.group_sparsity(r)}") for _, r in given] if given else [
        rows.Budget(x) for x in a.budgets.split(",")]
    fractions = [float(x) for x in a.l1_macs.split(",")]
    fractions = fractions * len(budgets) if len(fractions) == 1 else fractions
    started = time.perf_counter()

    log(f"[{a.model}] preparing the fp32 original and the data in {work}")
    bench = prepare(a.model, work, a.quick, fp32=a.fp32_onnx, epochs=a.epochs)
    for section, values in geta_settings(a.geta_set).items():
        bench.geta_config.setdefault(section, {}).update(values)
    if given:
        bench.notes.append("geta-onnx rows: compress outputs given with --geta-onnx ("
                           + ", ".join(f"`{g}`" for g, _ in given) + "), made by the command in docs/measurements.md; "
                           "their settings are in each row's report")
    base_macs = macs_of(bench.model)
    table, skipped, done = [rows.fp32_row(bench)], [], set()
    log("[ptq] onnxruntime static int8")
    table.append(rows.ptq_row(bench, work))
    for j, (s, frac) in enumerate(zip(budgets, fractions)):
        geta, target = None, int(frac * base_macs)
        tag, what = f"m{round(frac * 100)}", f"{frac:.0%} of the fp32 MACs"
        if not a.skip_geta:
            log(f"[geta-{s.tag}] geta-onnx compress, " + (f"given: {given[j][0]}" if given else s.label))
            try:
                geta = (rows.given_geta_row(*given[j]) if given
                        else rows.geta_row(bench, work, s, log=log, reuse=a.reuse))
                target = int(geta["report"]["macs"]["compressed"])
                tag, what = s.tag, f"MACs of geta {s.label}"
            except (RuntimeError, OSError, KeyError, ValueError) as e:
                skipped.append(f"geta-onnx at {s.label} failed ({str(e).splitlines()[0]}); its L1 rows use {what}")
                log(f"  FAILED: {e}")
        else:
            skipped.append(f"geta-onnx rows (--skip-geta); the L1 rows prune to {what}")
        if tag not in done:  # two failed geta budgets with one fallback fraction: one pair of L1 rows
            done.add(tag)
            log(f"[l1-{tag}] L1 prune to {target / 1e6:.2f} M MACs ({what}), fine-tune {bench.epochs} epochs, "
                "int8 PTQ")
            table += rows.l1_rows(bench, work, target, tag, what, unit=a.unit, log=log, reuse=a.reuse)
        if geta is not None:
            table.append(geta)
    log("[measure] quality, MACs, BOPs, fusion, latency")
    latency = measure(table, bench, batches=(1, 32), threads=a.threads,
                      repeats=a.repeats or (10 if a.quick else 50), warmup=2 if a.quick else 5, log=log)
    result = {
        "model": a.model, "title": bench.title, "quick": a.quick, "quality_label": bench.quality_label,
        "command": shlex.join(["python", "tools/benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": report.environment(a.threads), "latency": latency, "notes": bench.notes, "prep": bench.prep,
        "settings": {"epochs": bench.epochs, "lr": bench.lr, "batch_size": bench.batch_size,
                     "finetune_loss": bench.finetune_loss, "budgets": [repr(b) for b in budgets], "unit": a.unit,
                     "ptq_op_types": bench.ptq_op_types, "geta_config": bench.geta_config,
                     "calibration_samples": sum(len(next(iter(b.values()))) for b in bench.calibration)},
        "skipped": sorted(set(skipped)), "rows": [_portable(r) for r in table],
        "total_seconds": time.perf_counter() - started,
    }
    publish(result, out, a.quick)
    print_table(result)


def _given_report(path: Path) -> dict:
    """The report of a geta-onnx compress output given with --geta-onnx."""
    report = path.with_suffix(".report.json")
    if not report.is_file():
        raise SystemExit(f"--geta-onnx {path}: no {report.name} beside it (give a geta-onnx compress output)")
    return json.loads(report.read_text())


def publish(result: dict, out: Path, quick: bool) -> None:
    """out/MODEL.json; the plot and the page into out (quick) or docs/ (a real run)."""
    name = result["model"]
    text = json.dumps(result, indent=2) + "\n"
    write_text_atomic(out / f"{name}.json", text)
    results, doc = (out, out / "benchmarks.md") if quick else (DOCS / "benchmarks", DOCS / "benchmarks.md")
    write_text_atomic(results / f"{name}.json", text)
    report.pareto_png(result, results / f"{name}_pareto.png")
    report.write_doc(results, doc, results)
    log(f"wrote {results / (name + '.json')}, {results / (name + '_pareto.png')} and {doc}")


def print_table(result: dict) -> None:
    print()
    print(report.table(result))
    print(f"\ntotal {result['total_seconds']:.0f} s")


def _portable(r: dict) -> dict:
    p = Path(r["path"])
    return {**r, "path": str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(p)}


def log(msg: str) -> None:
    print(msg, flush=True)


if __name__ == "__main__":
    main()
