"""MobileNetV2 with torchvision's ImageNet weights (assets/mobilenetv2), its classifier replaced
by a 10-class head and fine-tuned here on Fashion-MNIST: images upscaled (bilinear) to
RES x RES, the gray channel replicated to RGB, ImageNet mean / std. Scored by top-1 on the
10k test set.

The resolution is a CPU budget choice (the benchmark should finish within an hour on 2
cores): MobileNetV2 is fully convolutional with a global pool, and 48 x 48 (1.7x the 28 x 28
originals, a 2 x 2 last feature map) costs 4.6 % of the 224 x 224 MACs. Measured training
steps (batch 64, 2 threads): torchvision fp32 0.19 s at 48 vs 0.42 s at 64; geta-onnx's
QASSO step 0.52 s vs 0.83 s (`tools/bench_qasso.py`), which put a 64 x 64 run near 1.6 h.
"""
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
FULL = {"resolution": 48, "fp32_epochs": 2, "epochs": 2, "limit": 0, "calibration": 256, "batch": 64}
QUICK = {"resolution": 32, "fp32_epochs": 1, "epochs": 1, "limit": 1000, "calibration": 32, "batch": 16}


def _export(net, path: Path, res: int) -> None:
    from samples.pretrained import export

    net.eval()
    export(net, (torch.zeros(2, 3, res, res),), path, input_names=["input"], output_names=["logits"],
           dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def prepare(work: Path, quick: bool) -> Bench:
    from samples.pretrained.mobilenetv2 import IMAGENET_MEAN, IMAGENET_STD, load
    from tools.fmnist_geta import train_fp32

    s = QUICK if quick else FULL
    res = s["resolution"]
    path = work / "mobilenetv2_fp32.onnx"
    data_kw = {"resize": True, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "limit": s["limit"]}
    cfg = DataConfig(batch_size=s["batch"], val_split=0.0, **data_kw)

    def make() -> dict:
        torch.manual_seed(0)
        net = load()
        net.classifier[1] = torch.nn.Linear(net.last_channel, 10)  # ImageNet head -> Fashion-MNIST classes
        _export(net, path, res)  # so the data is fitted to the model input (N, 3, res, res)
        data = load_data(DATA, cfg, model=load_model(path), seed=0)
        start = time.perf_counter()
        acc = train_fp32(net, data, s["fp32_epochs"], lr=1e-3)
        _export(net, path, res)
        return {"fp32_train_seconds": time.perf_counter() - start, "fp32_torch_top1": acc, **s}

    prep = cached(work, {"model": "mobilenetv2", **s}, make)
    data = load_data(DATA, cfg, model=load_model(path), seed=0)
    geta_data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_kw.items() if k != "limit" or v}
    return Bench(
        name="mobilenetv2", title=f"MobileNetV2 (ImageNet weights) fine-tuned on Fashion-MNIST at {res}x{res} RGB",
        model=path, data_spec=DATA, data=data,
        calibration=calibration_batches(data, s["calibration"], ["input"]),
        quality=lambda p: {**evaluate_onnx(p, data), "percent": True}, quality_label="top-1",
        epochs=s["epochs"], lr=5e-4, batch_size=s["batch"], finetune_loss="task+kd", geta_lr=5e-4,
        geta_config={"data": geta_data},
        notes=[f"data `{DATA}` upscaled to {res}x{res}, gray replicated to 3 channels, ImageNet mean / std "
               f"(geta-onnx gets the same through `--config`: [data] resize, mean, std): {data.n_train} training "
               f"images, quality = top-1 on {data.n_eval} test images",
               f"fp32 original: torchvision MobileNetV2 ImageNet weights, new 10-class head, fine-tuned "
               f"{s['fp32_epochs']} epochs (Adam 1e-3, one-cycle, batch {s['batch']}), exported with BatchNorm kept"],
        prep=prep)
