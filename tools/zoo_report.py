"""Print the model-zoo table: each (model, exporter) exported, bridged, compared and trained.

    python tools/zoo_report.py [--models a,b] [--exporters legacy,dynamo | all] [--out DIR] [--format md|text]

Columns: ONNX nodes; trainable parameter values of the bridged module (and of the PyTorch
model); max abs / max rel difference of the bridge vs onnxruntime (worst of batch 2 and batch
3, rel = relative to the reference's largest magnitude) and max rel vs the PyTorch model;
gradient coverage (parameters with a finite nonzero gradient / all); task loss before and
after 30 SGD steps in train mode; prunable / all pruning groups of geta_onnx.qadg (reported,
not judged); status (ok, or what failed: parity, gradients, training, params = the bridged
module trains a different set of values than the PyTorch model, or the first line of an error). The checks are
the ones tests/test_zoo.py asserts (samples.zoo.check_*).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402
import torch  # noqa: E402

from geta_onnx.bridge import to_torch  # noqa: E402
from geta_onnx.graph import load_model  # noqa: E402
from samples.export_zoo import DEFAULT_EXPORTERS, EXPORTERS, export  # noqa: E402
from samples.zoo import PARITY_RTOL, TRAIN_RATIO, ZOO, check_gradients, check_parity, check_training, parity_inputs  # noqa: E402

COLUMNS = ("model", "exporter", "nodes", "params", "torch params", "max abs", "max rel", "rel vs torch",
           "grads", "loss 0", "loss 30", "prunable", "status")


def report_row(name: str, exporter: str, folder: Path) -> dict[str, str]:
    entry = ZOO[name]
    row = {"model": name, "exporter": exporter, "torch params": str(entry.param_count())}
    t0 = time.perf_counter()
    try:
        path = folder / f"{name}.{exporter}.onnx"
        proto = export(name, exporter, path)
        row["nodes"] = str(len(proto.graph.node))
        proto = onnx.load(str(path))
        module = to_torch(load_model(path))
        row["params"] = str(sum(p.numel() for p in module.parameters()))
        results = [check_parity(entry, proto, module, b, s) for b, s in parity_inputs(entry, exporter)]
        row["max abs"] = f"{max(r.max_abs for r in results):.1e}"
        row["max rel"] = f"{max(r.max_rel for r in results):.1e}"
        row["rel vs torch"] = f"{max(r.torch_rel for r in results):.1e}"
        unmapped = [q for q, _ in module.named_parameters() if q not in module.initializer_of]
        norms = check_gradients(entry, module)
        good = sum(1 for n in norms.values() if math.isfinite(n) and n > 0)
        row["grads"] = f"{good}/{len(norms)}" + (f" ({len(unmapped)} unmapped)" if unmapped else "")
        torch.manual_seed(0)
        losses = check_training(entry, to_torch(load_model(path)))
        row["loss 0"], row["loss 30"] = f"{losses[0]:.4g}", f"{losses[-1]:.4g}"
        row["prunable"], row["barriers"] = _qadg(path)
        problems = []
        if not all(r.shapes_ok for r in results):
            problems.append("shape/dtype")
        if max(max(r.max_rel, r.torch_rel) for r in results) > PARITY_RTOL:
            problems.append("parity")
        if int(row["params"]) != entry.param_count() + entry.extra_params.get(exporter.split("_")[0], 0) \
                and not exporter.endswith("_fold"):  # folding BN legitimately removes parameters
            problems.append("params")
        if good < len(norms) or unmapped:
            problems.append("gradients")
        if not losses[-1] < TRAIN_RATIO * losses[0]:
            problems.append("training")
        row["status"] = "ok" if not problems else "FAIL " + ",".join(problems)
    except Exception as e:  # noqa: BLE001 - a row per failure, the table goes on
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row["status"] = f"ERROR {type(e).__name__}: {msg[:300]}"
    row["status"] += f" ({time.perf_counter() - t0:.1f}s)"
    return row


def _qadg(path: Path) -> tuple[str, list[str]]:
    """Pruning groups of the QADG analysis: 'prunable/groups', and the barrier reasons other
    than 'reaches the graph output' (counted)."""
    try:
        from geta_onnx.qadg import analyze

        q = analyze(load_model(path))
    except Exception as e:  # noqa: BLE001 - the analysis is reported, not asserted, here
        return "error", [f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"]
    reasons: dict[str, int] = {}
    for g in q.groups:
        if not g.prunable and "reaches the graph output" not in g.reason:
            reasons[g.reason] = reasons.get(g.reason, 0) + 1
    return f"{len(q.prunable)}/{len(q.groups)}", [f"{n} x {r}" for r, n in reasons.items()]


def format_table(rows: list[dict[str, str]], fmt: str) -> str:
    cells = [[r.get(c, "-") for c in COLUMNS] for r in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]
    out = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(c, widths)) for c in cells]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--exporters", default=",".join(DEFAULT_EXPORTERS),
                    help=f"comma list of {', '.join(EXPORTERS)}, or 'all' (default: legacy,dynamo)")
    ap.add_argument("--out", type=Path, default=None, help="keep the exported files here (default: a temp dir)")
    ap.add_argument("--format", choices=("text", "md"), default="text")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(ZOO)
    exporters = EXPORTERS if args.exporters == "all" else tuple(e.strip() for e in args.exporters.split(","))
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            for exporter in exporters:
                if exporter.split("_")[0] not in ZOO[name].exporters:
                    rows.append({"model": name, "exporter": exporter,
                                 "status": "not exported: " + "; ".join(ZOO[name].notes)})
                    continue
                rows.append(report_row(name, exporter, folder))
    print(format_table(rows, args.format))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f}s; parity tolerance rel {PARITY_RTOL:g}; "
          f"training: 30 SGD steps, pass if loss 30 < {TRAIN_RATIO} x loss 0")
    barriers = [(f"{r['model']}.{r['exporter']}", b) for r in rows for b in r.get("barriers", [])]
    if barriers:
        print("\nQADG groups made unprunable by something other than a graph output:")
        for where, b in barriers:
            print(f"- {where}: {b[:300]}")
    notes = [(n, note) for n in names for note in ZOO[n].notes]
    if notes:
        print("\nNotes from the registry:")
        for n, note in notes:
            print(f"- {n}: {note}")
    return 0 if all(r["status"].startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
