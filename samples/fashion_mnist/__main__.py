"""python -m samples.fashion_mnist: fp32 training (unless --fp32-onnx), compress, gate."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from samples.fashion_mnist import DATA, ResNetFM, export, train_fp32
from samples.pipeline import compress_and_gate

CONFIG = Path(__file__).with_name("compress.toml")


def fp32_model(out: Path, width: int, epochs: int) -> Path:
    from geta_onnx.config import DataConfig
    from geta_onnx.graph import load_model
    from geta_onnx.train import load_data

    torch.manual_seed(0)
    path = out / "resnet_fp32.onnx"
    model = ResNetFM(width)
    export(model, path)  # untrained: only so the data is fitted to the model's input (N, 1, 28, 28)
    data = load_data(DATA, DataConfig(batch_size=128, val_split=0.0), model=load_model(path), seed=0)
    start = time.perf_counter()
    acc = train_fp32(model, data, epochs)
    export(model, path)
    print(f"fp32: top-1 {acc:.4f} after {epochs} epochs ({time.perf_counter() - start:.0f} s); wrote {path}", flush=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/fmnist")
    p.add_argument("--width", type=int, default=32, help="channels of the first stage (then 2x, 4x)")
    p.add_argument("--fp32-epochs", type=int, default=6)
    p.add_argument("--fp32-onnx", help="reuse a trained fp32 model instead of training one")
    p.add_argument("--config", default=str(CONFIG), help="compress settings (TOML)")
    p.add_argument("--device", default="cpu")
    a, extra = p.parse_known_args()  # anything else goes to compress, e.g. --group-divisible 8
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model = Path(a.fp32_onnx) if a.fp32_onnx else fp32_model(out, a.width, a.fp32_epochs)
    return compress_and_gate(model, DATA, out / "resnet_geta.onnx", a.config, ["--device", a.device, *extra],
                             max_accuracy_drop=0.01, min_speedup=4)


if __name__ == "__main__":
    sys.exit(main())
