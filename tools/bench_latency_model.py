"""How well the latency model (geta_onnx/latency) predicts onnxruntime: predicted vs measured
time of pruned models, float and int8, at several pruning levels.

    python tools/bench_latency_model.py MODEL.onnx [--shape 3x224x224] [--batch 32] [--threads 2]
                                        [--levels 0,0.3,0.5,0.7] [--seeds 2] [--removed RUN/checkpoint.safetensors ...]

For each level and seed, random group scores pick the groups to remove (the unit-rounded
selection QASSO uses), prune_model removes them physically, and the pruned model is timed
in float and as the int8 QDQ model compress writes (latency.reference.int8_export: the real
export, every quantizer at 8 bits, calibrated on the example sample), next to the latency model's
prediction of both. The table build time is printed apart.

--removed adds a row per compress checkpoint given: the groups that trained run removed
(QASSO's state in the checkpoint; MODEL must be the file that run compressed), timed and
predicted the same way. Trained structures are where the prediction errs most (docs/latency.md).

All structures are timed in --rounds interleaved rounds, each relative to the unpruned int8
model in the same rounds (latency.build.timed_wholes); the int8 error is also printed for the
model fitted without onnxruntime's profile ("without the profile split", the fit by difference),
and at the end as shares of the unpruned model, which a host that changes speed moves least.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from geta_onnx.bridge import to_torch
    from geta_onnx.config import QuantConfig
    from geta_onnx.graph import load_model
    from geta_onnx.graph.feeds import example_feeds
    from geta_onnx.latency import LatencyModel, Target, build_latency_model
    from geta_onnx.latency.build import timed_wholes
    from geta_onnx.latency.reference import int8_export
    from geta_onnx.quant.calibrate import calibrate
    from geta_onnx.optim.selection import plan
    from geta_onnx.optim.slices import group_views
    from geta_onnx.prune.physical import prune_model
    from geta_onnx.qadg import analyze
    from geta_onnx.quant.sites import attach_quantizers
    from geta_onnx.train import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--shape", help="one sample's dims of the first input, e.g. 3x224x224")
    p.add_argument("--seq", type=int, default=128, help="symbolic sequence dims (transformers)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--unit", type=int, default=16)
    p.add_argument("--levels", default="0,0.3,0.5,0.7")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--table", help="latency table file (default: the cache)")
    p.add_argument("--thin-float", action="store_true", help="thin stems in float (the rule without the timing)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per structure (least counts)")
    p.add_argument("--removed", nargs="*", default=[],
                   help="checkpoints of compress runs of MODEL: their removed groups")
    a = p.parse_args()
    torch.manual_seed(0)
    model = load_model(a.model)
    shapes = None
    if a.shape:
        dims = tuple(int(d) for d in a.shape.split("x"))
        shapes = {model.inputs[0].name: (1, *dims)}
    sample = example_feeds(model, batch=1, shapes=shapes, seq=a.seq)
    module = to_torch(model)
    # thin stems in int8 unless --thin-float: compress decides them by timing the whole model
    # (docs/latency.md, "Precision by latency"), and keeps int8 on the Fashion-MNIST ResNet
    config = QuantConfig(float_thin_convs=a.thin_float)
    qplan = attach_quantizers(module, model, config)
    qadg = analyze(model)
    calibrate(module, qplan, [tuple(torch.from_numpy(v) for v in sample.values())], config)
    views = group_views(module, qadg.groups)
    t0 = time.perf_counter()
    lm = build_latency_model(model, qplan, qadg.prunable, sample, Target.here(a.threads, a.batch), unit=a.unit,
                             table_path=a.table,
                             int8_export_of=lambda removed: int8_export(module, qplan, qadg, model, removed))
    plain = LatencyModel(lm.layers, lm.table, lm.original_ms, lm.effects, **{**lm.inputs, "splits": None})
    print(f"{Path(a.model).name}: {len(lm.layers)} layers modelled, table ready in {time.perf_counter() - t0:.1f} s; "
          f"original {lm.original_ms:.3f} ms, layers (float) {lm.layers_float_ms:.3f} ms")
    for name, m in (("profile split", lm), ("without it", plain)):
        print(f"  {name}: " + ", ".join(
            f"{f}: scale {m.scale[f]:.3f}, rest {m.fixed[f]:.3f} fixed + {m.remainder[f]:.3f} ms shrinking"
            for f in ("float", "int8"))
            + "".join(f"; {f} residual " + ", ".join(f"{r:+.3f} ms at share {s:.2f}" for s, r in pts)
                      for f, pts in m.residual.items())
            + "".join(f"; {f} rest {rest:.3f} ms at the narrow probe's share {share:.2f} (the line: below {above:.2f})"
                      for f, (share, rest, above) in m.narrow.items()))
    feeds = {k: np.repeat(v, a.batch, axis=0) for k, v in sample.items()}
    structures = []  # (label, level, removed group ids)
    for level in [float(x) for x in a.levels.split(",") if x]:
        for seed in range(a.seeds if level > 0 else 1):
            rng = np.random.default_rng(seed)
            scores = {v.id: float(rng.random()) for v in views}
            structures.append((f"level {level:.2f} seed {seed}", level, plan(views, scores, round(level * len(views)),
                                                                            a.unit, set())))
    for path in a.removed:
        zeroed = load_checkpoint(path)["optimizer"]["qasso"]["zeroed"]
        structures.append((Path(path).parent.name, len(zeroed) / len(views), list(zeroed)))
    # every structure's float and int8 model, timed in interleaved rounds over all of them, the
    # least median of each: a host that runs slower for minutes at a time (docs/latency.md)
    # only ever adds time, and each structure gets a turn in its faster spells
    protos = {}
    for label, _, removed in structures:
        protos[(label, "float")] = prune_model(qadg, removed)
        int8 = int8_export(module, qplan, qadg, model, removed)
        if int8 is not None:
            protos[(label, "int8")] = int8
    # with an unpruned structure, every time is its least time times the median of the ratios in
    # the same rounds (build.timed_wholes): a slow spell that outlasts one model's rounds then
    # moves its time less than its least median alone
    unpruned = next(((label, "int8") for label, _, removed in structures
                     if not removed and (label, "int8") in protos), None)
    timed = timed_wholes(protos, feeds, a.threads, print, rounds=a.rounds, relative_to=unpruned)[0]
    rows = []
    for label, level, removed in structures:
        measured = {form: timed.get((label, form)) for form in ("float", "int8")}
        predicted = lm.forms_ms(lm.state(removed))
        plain_ms = plain.forms_ms(plain.state(removed))["int8"]
        row = [level, label, len(removed)]
        for form in ("float", "int8"):
            m = measured.get(form)
            row += [predicted[form], m, (predicted[form] / m - 1) * 100 if m else float("nan")]
        rows.append(row)
        plain_err = (plain_ms / measured["int8"] - 1) * 100 if measured.get("int8") else float("nan")
        print(f"  {label} removed {len(removed):4d} | " + " | ".join(
            f"{form} pred {row[3 + 3 * k]:8.3f} meas {row[4 + 3 * k] or float('nan'):8.3f} err {row[5 + 3 * k]:+6.1f}%"
            for k, form in enumerate(("float", "int8"))) + f" | int8 without the profile split {plain_err:+6.1f}%")
    base = next((r for r in rows if r[2] == 0 and r[7]), None)
    if base is not None:  # as shares of the unpruned model: what a budget in x of the original sees
        print("int8 as shares of the unpruned model (predicted / measured - 1): " + ", ".join(
            f"{r[1]} {((r[6] / base[6]) / (r[7] / base[7]) - 1) * 100:+.1f}%" for r in rows if r is not base and r[7]))
    errs = {f: [abs(r[5 if f == "float" else 8]) for r in rows if not np.isnan(r[5 if f == "float" else 8])]
            for f in ("float", "int8")}
    print("max |error|: " + ", ".join(f"{f} {max(e):.1f}%" for f, e in errs.items() if e))


if __name__ == "__main__":
    main()
