#!/usr/bin/env python
"""Parity and task figures of the real pretrained networks through the bridge.

    python tools/pretrained_report.py [--only mobilenetv2,minilm,crepe]

For each prepared asset (tools/prepare_assets.py): the bridged module in eval mode vs
onnxruntime (optimisations off, and on) and vs the original PyTorch module (max abs and
relative difference, relative = max|diff| / max|reference|), the task checks (ImageNet
top-1, sentence similarity, pitch in Hz), gradient coverage and a few SGD steps in train
mode next to the same steps on the original. Prints Markdown.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from geta_onnx.bridge import compare_outputs, to_torch  # noqa: E402
from samples import pretrained as P  # noqa: E402
from samples.pretrained import crepe, minilm, mobilenetv2  # noqa: E402

MODELS = {"mobilenetv2": mobilenetv2, "minilm": minilm, "crepe": crepe}


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f}"


def report(name: str) -> list[str]:
    mod = MODELS[name]
    folder = P.assets_dir() / name
    lines = [f"### {name}", ""]
    files = ", ".join(f"{p.name} {_mib(p)} MiB" for p in sorted(folder.iterdir()) if p.is_file())
    lines.append(f"- assets ({folder}): {files}")

    reference = mod.load()
    feeds = mod.parity_feeds()
    t0 = time.perf_counter()
    from geta_onnx.graph import load_model

    onnx_model = load_model(P.onnx_path(name))
    t1 = time.perf_counter()
    module = to_torch(onnx_model).eval()
    t2 = time.perf_counter()
    ops: dict[str, int] = {}
    for n in onnx_model.nodes:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_params = sum(p.numel() for p in module.parameters())
    n_ref = sum(p.numel() for p in reference.parameters())
    matched, total, unmatched = P.match_parameters(reference, module)
    lines.append(f"- graph after normalisation: {len(onnx_model.nodes)} nodes ({', '.join(f'{k} {v}' for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))})")
    lines.append(f"- load_model {t1 - t0:.2f} s, to_torch {t2 - t1:.2f} s; bridge parameters {n_params:,} "
                 f"(original {n_ref:,}); {matched}/{total} original tensors found among them"
                 + (f", missing {unmatched[:4]}" if unmatched else ""))

    shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in feeds.items())
    ort = P.run_ort(name, feeds)
    ort_opt = P.run_ort(name, feeds, optimize=True)
    ref_out = P.run_torch(reference, feeds, mod.INPUT_NAMES)
    t3 = time.perf_counter()
    got = P.run_torch(module, feeds, module.input_names)
    t4 = time.perf_counter()
    lines += ["", f"inputs: {shapes}; bridge forward {1e3 * (t4 - t3):.0f} ms", "",
              "| output | max abs vs ORT | rel vs ORT | max abs vs ORT (optimised) | max abs vs PyTorch | rel vs PyTorch | ORT vs PyTorch | max abs ref |",
              "|---|---|---|---|---|---|---|---|"]
    names = mod.OUTPUT_NAMES
    d_ort = compare_outputs(names, got, ort)
    d_opt = compare_outputs(names, got, ort_opt)
    d_pt = compare_outputs(names, got, ref_out)
    d_x = compare_outputs(names, ort, ref_out)
    for i, n in enumerate(names):
        scale = float(np.max(np.abs(ref_out[i])))
        lines.append(f"| {n} | {d_ort[i].max_abs:.3g} | {d_ort[i].max_rel:.3g} | {d_opt[i].max_abs:.3g} | "
                     f"{d_pt[i].max_abs:.3g} | {d_pt[i].max_rel:.3g} | {d_x[i].max_abs:.3g} | {scale:.3g} |")
    lines.append("")
    lines += task_lines(name, got, ref_out, ort)

    # gradients: every parameter reached, with finite and non-zero values
    m = to_torch(onnx_model).eval()
    args = tuple(torch.from_numpy(np.asarray(feeds[k])) for k in m.input_names)
    out = m(*args)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(0)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs if o.is_floating_point()).backward()
    params = list(m.named_parameters())
    reached = sum(1 for _, p in params if p.grad is not None and torch.isfinite(p.grad).all() and torch.any(p.grad != 0))
    lines.append(f"- backward: {reached}/{len(params)} parameters get a finite non-zero gradient")

    cfg = mod.TRAIN
    target = P.perturbed_target(torch.from_numpy(got[cfg["output"]]), cfg["noise"])
    bridge_module = to_torch(onnx_model)
    state_before = {q: b.clone() for q, b in bridge_module.named_buffers() if q.startswith("state.")}
    t5 = time.perf_counter()
    lb = P.sgd_losses(bridge_module, args, target, output=cfg["output"], lr=cfg["lr"], steps=cfg["steps"])
    t6 = time.perf_counter()
    lr_ = P.sgd_losses(copy.deepcopy(reference), args, target, output=cfg["output"], lr=cfg["lr"], steps=cfg["steps"])
    t7 = time.perf_counter()
    moved = sum(1 for q, b in bridge_module.named_buffers() if q in state_before and not torch.equal(b, state_before[q]))
    rel = max(abs(a - b) / abs(b) for a, b in zip(lb, lr_))
    lines.append(f"- SGD in train mode (MSE to output {names[cfg['output']]} + {cfg['noise']:g} noise, lr {cfg['lr']:g}): "
                 f"bridge losses {[float(f'{v:.4g}') for v in lb]} ({t6 - t5:.1f} s), original "
                 f"{[float(f'{v:.4g}') for v in lr_]} ({t7 - t6:.1f} s); max rel difference {rel:.2g}; "
                 f"loss ratio last/first {lb[-1] / lb[0]:.3f}; running-stat buffers changed: {moved}/{len(state_before)}")
    return lines


def task_lines(name: str, got, ref_out, ort) -> list[str]:
    if name == "mobilenetv2":
        photos = list(mobilenetv2.sample_photos())
        labels = photos + ["gaussian seed 0 #0", "gaussian seed 0 #1"]
        top = got[0].argmax(1)
        same = (top == ref_out[0].argmax(1)).all() and (top == ort[0].argmax(1)).all()
        desc = "; ".join(f"{lab}: {int(k)} ({mobilenetv2.CLASS_NAMES.get(int(k), '?')}, logit {got[0][i, k]:.2f})"
                         for i, (lab, k) in enumerate(zip(labels, top)))
        return [f"- top-1 through the bridge: {desc}", f"- same top-1 as PyTorch and onnxruntime on all {len(top)} inputs: {bool(same)}"]
    if name == "minilm":
        e, r = got[1], ref_out[1]
        cos = np.sum(e * r, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))
        rep = minilm.similarity_report(e)
        return [f"- cosine(bridge, PyTorch) per sentence: min {cos.min():.9f}",
                f"- paraphrase similarity {[round(v, 3) for v in rep['paraphrase']]} vs best unrelated pair "
                f"{rep['max_unrelated']:.3f}; nearest neighbour is the paraphrase for every sentence: {rep['nearest_is_paraphrase']}"]
    if name == "crepe":
        out = []
        module = to_torch(__import__("geta_onnx.graph", fromlist=["load_model"]).load_model(P.onnx_path("crepe"))).eval()
        for f in (110.0, 220.0, 440.0, 880.0):
            frames = {"frames": crepe.tone_frames(f, 4)}
            p = P.run_torch(module, frames, module.input_names)[0]
            hz = crepe.decode(p)
            out.append(f"- {f:g} Hz tone through the bridge: {np.round(hz, 2).tolist()} Hz (weighted argmax), "
                       f"max error {crepe.cents_error(hz, f).max():.1f} cents; argmax "
                       f"{crepe.cents_error(crepe.decode(p, 'argmax'), f).max():.1f} cents")
        return out
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(MODELS)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    names = [n.strip() for n in args.only.split(",")] if args.only else list(MODELS)
    print(f"## Pretrained networks through the bridge (torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s))\n")
    status = 0
    for name in names:
        if name not in MODELS:
            print(f"unknown model {name!r}; choose from {', '.join(MODELS)}", file=sys.stderr)
            return 2
        missing = P.missing_assets(name)
        if missing:
            print(f"### {name}\n\nskipped: {', '.join(missing)} absent; run python tools/prepare_assets.py --only {name}\n")
            continue
        t0 = time.perf_counter()
        try:
            lines = report(name)
        except Exception as e:  # noqa: BLE001 - a report, not a test: say what failed and go on
            status = 1
            lines = [f"### {name}", "", f"FAILED: {type(e).__name__}: {e}", "", "```",
                     traceback.format_exc(limit=4).rstrip(), "```"]
        lines.append(f"- report time {time.perf_counter() - t0:.1f} s")
        print("\n".join(lines) + "\n", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
