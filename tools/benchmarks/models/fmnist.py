"""Fashion-MNIST ResNet-style CNN (samples/fashion_mnist's ResNetFM, widths 32 / 64 / 128),
trained here in fp32 (Adam + one-cycle), scored by top-1 on the 10k test set."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from geta_onnx.bench import evaluate_onnx
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.train import load_data

from . import Bench, cached, calibration_batches

DATA = "idx:/usr/share/datasets/fashion-mnist"
FULL = {"width": 32, "fp32_epochs": 8, "epochs": 6, "limit": 0, "calibration": 256, "batch": 128}
QUICK = {"width": 32, "fp32_epochs": 2, "epochs": 1, "limit": 2000, "calibration": 64, "batch": 32}


def prepare(work: Path, quick: bool, fp32: Path | None = None, epochs: int | None = None) -> Bench:
    """fp32: a trained ResNetFM ONNX to use instead of training one here (e.g. the output of
    `python -m samples.fashion_mnist`); epochs: fine-tuning / compress epochs instead of 6."""
    from samples.fashion_mnist import ResNetFM, export, train_fp32

    s = dict(QUICK if quick else FULL, **({"epochs": epochs} if epochs else {}))
    path = Path(fp32) if fp32 else work / "fmnist_fp32.onnx"
    cfg = DataConfig(batch_size=s["batch"], val_split=0.0, limit=s["limit"])

    def make() -> dict:
        torch.manual_seed(0)
        net = ResNetFM(s["width"])
        export(net, path)  # untrained: only so the data is fitted to the model input (N, 1, 28, 28)
        data = load_data(DATA, cfg, model=load_model(path), seed=0)
        start = time.perf_counter()
        acc = train_fp32(net, data, s["fp32_epochs"])
        export(net, path)
        return {"fp32_train_seconds": time.perf_counter() - start, "fp32_torch_top1": acc, **s}

    prep = {"fp32_onnx": str(path), "provided": True, **s} if fp32 else cached(work, {"model": "fmnist", **s}, make)
    data = load_data(DATA, cfg, model=load_model(path), seed=0)
    return Bench(
        name="fmnist", title=f"Fashion-MNIST ResNet-style CNN (widths {s['width']}/{2 * s['width']}/{4 * s['width']})",
        model=path, data_spec=DATA, data=data,
        calibration=calibration_batches(data, s["calibration"], ["image"]),
        quality=lambda p: {**evaluate_onnx(p, data), "percent": True}, quality_label="top-1",
        epochs=s["epochs"], lr=1e-3, batch_size=s["batch"], finetune_loss="task+kd", geta_lr=1e-3,
        geta_config={"data": {"limit": s["limit"]}} if s["limit"] else {},
        latency_shapes=None,
        notes=[f"data `{DATA}` (Debian package dataset-fashion-mnist): {data.n_train} training images"
               f"{' (seeded subset)' if s['limit'] else ''}, quality = top-1 on {data.n_eval} test images",
               f"fp32 original: `{path.name}` given with --fp32-onnx (trained elsewhere)" if fp32 else
               f"fp32 original: ResNetFM trained {s['fp32_epochs']} epochs (Adam 2e-3, one-cycle, batch {s['batch']}), "
               "exported with BatchNorm kept"],
        prep=prep)
