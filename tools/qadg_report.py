"""Generality of the pruning analysis: for every zoo model (both exporters) and the
pretrained assets, the number of groups, the prunable share of weight parameters and of
MACs, the `verify` result and the analysis time.

    python tools/qadg_report.py [--max-groups 20] [--models resnet,bert] [--no-assets]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geta_onnx.graph import load_model  # noqa: E402
from geta_onnx.qadg import analyze  # noqa: E402
from geta_onnx.verify import verify_model  # noqa: E402
from samples import export_zoo, zoo  # noqa: E402


def row(label: str, path: Path, max_groups: int) -> str:
    model = load_model(path)
    start = time.perf_counter()
    qadg = analyze(model)
    seconds = time.perf_counter() - start
    s = qadg.summary()
    checks, _ = verify_model(model, max_groups=max_groups)
    verdict = "pass" if all(c.passed for c in checks) else "FAIL: " + ", ".join(c.name for c in checks if not c.passed)
    kinds = ", ".join(f"{n} {k.split(':')[0]}" for k, n in s["kinds"].items())
    return (f"| {label} | {s['groups']} | {s['prunable_groups']} ({kinds}) | {s['prunable_param_share']:.1%} | "
            f"{s['prunable_mac_share']:.1%} | {verdict} | {seconds:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-groups", type=int, default=20, help="groups sampled for the zero-invariance check")
    p.add_argument("--models", default=",".join(zoo.ZOO))
    p.add_argument("--no-assets", action="store_true")
    a = p.parse_args()
    print("| model | groups | prunable | param share | MAC share | verify | analysis s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            for exporter in ("legacy", "dynamo"):
                path = Path(tmp) / f"{name}.{exporter}.onnx"
                try:
                    export_zoo.export(name, exporter, path)
                except export_zoo.ExportFailed as e:
                    print(f"| {name}.{exporter} | export failed: {e} |")
                    continue
                print(row(f"{name}.{exporter}", path, a.max_groups), flush=True)
    if not a.no_assets:
        from samples.pretrained import missing_assets, onnx_path

        for name in ("mobilenetv2", "minilm", "crepe"):
            if missing_assets(name):
                print(f"| {name} | absent: run python tools/prepare_assets.py |")
            else:
                print(row(name, onnx_path(name), a.max_groups), flush=True)


if __name__ == "__main__":
    main()
