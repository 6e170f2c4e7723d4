"""Compact, hand-reviewable listings of pruning groups, and the golden files under
tests/qadg/golden/. Regenerate (then REVIEW the diff by hand) with:

    python -m tests.qadg.golden
"""
from __future__ import annotations

import json
from pathlib import Path

from geta_onnx.graph import from_proto
from geta_onnx.qadg import analyze
from tests.qadg import models

GOLDEN = Path(__file__).parent / "golden"
CASES = {"resnet2": models.resnet2, "concat": models.concat_model, "depthwise_se": models.depthwise_model,
         "unknown_op": models.unknown_op_model}


def _ranges(indices) -> str:
    out, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)


def listing(proto) -> dict:
    qadg = analyze(from_proto(proto))
    groups = []
    for g in qadg.groups:
        groups.append({
            "kind": g.kind, "size": g.size, "width": g.width, "prunable": g.prunable, "reason": g.reason,
            "sources": g.sources,
            "members": [f"{m.tensor}[{m.axis}] {m.role} {_ranges(m.indices)}" for m in g.members],
        })
    return {"groups": groups}


def dumps(listing_: dict) -> str:
    """One group per line: a diff shows exactly which groups changed."""
    lines = ",\n".join("  " + json.dumps(g) for g in listing_["groups"])
    return '{"groups": [\n' + lines + "\n]}\n"


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name, build in CASES.items():
        proto, _ = build()
        (GOLDEN / f"{name}.json").write_text(dumps(listing(proto)))
        print(f"wrote {GOLDEN / name}.json")


if __name__ == "__main__":
    main()
