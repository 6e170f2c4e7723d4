#!/usr/bin/env python
"""Do two versions of geta-onnx rewrite models the same way? Evidence for refactors of the
graph-rewriting passes (physical pruning, the QDQ export, the float twin).

    # in a worktree of the old commit, then in this one:
    PYTHONPATH=/tmp/old python tools/rewrite_parity.py write /tmp/parity/old MODEL.onnx ...
    python tools/rewrite_parity.py write /tmp/parity/new MODEL.onnx ...
    python tools/rewrite_parity.py compare /tmp/parity/old /tmp/parity/new

`write`, per model: the loaded, normalised model (NAME.loaded.onnx) and its pruning groups
(NAME.groups.json: id, then each member's tensor, axis, role and indices), prune_model with a seeded half of the prunable groups removed
(NAME.pruned.onnx), export_onnx of an untrained result (bridge, 8-bit calibration on two
seeded batches, weight bits cycling 8 / 6 / 4, the same half removed) for the ort and
tensorrt profiles (NAME.ort.onnx, NAME.tensorrt.onnx), and the float twin of the ort export
(NAME.twin.onnx). A model a version cannot handle prints FAIL with the reason.
`compare`, per file: groups equal (.json), else byte-identical, else the op histogram, node and initializer counts,
whether the initializer values are the same multiset, and the largest output difference in
onnxruntime on seeded inputs.
"""
from __future__ import annotations

import collections
import json
import sys
import types
from pathlib import Path

import numpy as np


def write(out: Path, paths: list[str]) -> None:
    import torch

    from geta_onnx.bridge import to_torch
    from geta_onnx.config import QuantConfig
    from geta_onnx.export import dequantize, export_onnx
    from geta_onnx.graph import load_model
    from geta_onnx.graph.batch import static_batch_one
    from geta_onnx.graph.feeds import example_feeds, runnable_shapes
    from geta_onnx.prune.physical import prune_model
    from geta_onnx.qadg import analyze
    from geta_onnx.quant import attach_quantizers, calibrate

    torch.manual_seed(0)
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        name = Path(path).stem.replace(".", "_")
        try:
            model = load_model(path)
            (out / f"{name}.loaded.onnx").write_bytes(model.proto.SerializeToString())
            qadg = analyze(model)
            groups = [[g.id, [[m.tensor, m.axis, m.role, [int(i) for i in m.indices]] for m in g.members]]
                      for g in qadg.groups]
            (out / f"{name}.groups.json").write_text(json.dumps(groups))
            ids = sorted(g.id for g in qadg.prunable)
            remove = set(np.random.default_rng(0).choice(ids, size=len(ids) // 2, replace=False).tolist()) if ids else set()
            (out / f"{name}.pruned.onnx").write_bytes(prune_model(qadg, remove).SerializeToString())
            batch = 1 if static_batch_one(model) else 2
            shapes, _ = runnable_shapes(model, batch=batch)
            module = to_torch(model).eval()
            cfg = QuantConfig(weight_bits_start=8, act_bits_start=8)
            plan = attach_quantizers(module, model, cfg)
            batches = [tuple(torch.as_tensor(v) for v in example_feeds(model, shapes, batch=batch, seed=s).values())
                       for s in (1, 2)]
            calibrate(module, plan, batches, cfg)
            for i, q in enumerate(plan.weight_quantizers().values()):
                q.set_bits((8, 6, 4)[i % 3])
            result = types.SimpleNamespace(module=module, plan=plan, qadg=qadg, removed_groups=remove)
            for profile in ("ort", "tensorrt"):
                proto = export_onnx(result, model, profile)
                (out / f"{name}.{profile}.onnx").write_bytes(proto.SerializeToString())
                if profile == "ort":
                    (out / f"{name}.twin.onnx").write_bytes(dequantize(proto).SerializeToString())
            print("ok", name, flush=True)
        except Exception as e:  # noqa: BLE001 - a model this version cannot handle is a finding
            print("FAIL", name, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", flush=True)


def compare(old: Path, new: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from geta_onnx.graph import from_proto
    from geta_onnx.graph.batch import static_batch_one
    from geta_onnx.graph.feeds import example_feeds, runnable_shapes

    same = count = 0
    worst = 0.0
    for a in sorted(old.glob("*.groups.json")):
        b = new / a.name
        equal = b.exists() and json.loads(a.read_text()) == json.loads(b.read_text())
        print(f"{a.name:45s} groups {'equal' if equal else 'DIFFER'}")
    for a in sorted(old.glob("*.onnx")):
        b = new / a.name
        count += 1
        if not b.exists():
            print(f"{a.name:45s} missing in {new}")
            continue
        if a.read_bytes() == b.read_bytes():
            same += 1
            print(f"{a.name:45s} byte-identical")
            continue
        pa, pb = onnx.load(str(a)), onnx.load(str(b))
        ops = [collections.Counter(n.op_type for n in p.graph.node) for p in (pa, pb)]
        values = [sorted((v.dtype.str, v.shape, v.tobytes()) for v in map(numpy_helper.to_array, p.graph.initializer))
                  for p in (pa, pb)]
        model = from_proto(pa)
        batch = 1 if static_batch_one(model) else 2
        try:
            shapes, _ = runnable_shapes(model, batch=batch)
            feeds = example_feeds(model, shapes, batch=batch, seed=3)
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            runs = [ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
                    for p in (pa, pb)]
            diff = max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0)) for x, y in zip(*runs))
            worst = max(worst, diff)
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors
            diff = f"run failed: {str(e).splitlines()[0][:120]}"
        print(f"{a.name:45s} ops same: {ops[0] == ops[1]}  nodes {len(pa.graph.node)}/{len(pb.graph.node)}  initializers "
              f"{len(pa.graph.initializer)}/{len(pb.graph.initializer)} values same: {values[0] == values[1]}  "
              f"max |diff| {diff}")
    print(f"{count} files, {same} byte-identical, largest output difference {worst}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("write", "compare"):
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), sys.argv[3:])
    else:
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
