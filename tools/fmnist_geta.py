"""Fashion-MNIST evidence for GETA training: a ResNet-style CNN trained in fp32, exported
to ONNX, then ONE GETA run at 50 % group sparsity with weight bits in [4, 8].

    apt-get install dataset-fashion-mnist     # the data (Debian package, Expat license)
    python tools/fmnist_geta.py [--width 16] [--fp32-epochs 4] [--geta-epochs 6] [--out runs/fmnist]

Prints fp32 accuracy, compressed accuracy, relative BOPs, group sparsity and wall times.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geta_onnx.config import DataConfig, OptimConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig  # noqa: E402
from geta_onnx.bridge import to_torch  # noqa: E402
from geta_onnx.geta import run_geta  # noqa: E402
from geta_onnx.graph import load_model  # noqa: E402
from geta_onnx.train import load_data  # noqa: E402

DATA = "idx:/usr/share/datasets/fashion-mnist"


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class ResNetFM(nn.Module):
    """ResNet-style for 28x28x1: stem, three stages (w, 2w, 4w), global pool, linear."""

    def __init__(self, w: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def train_fp32(model: nn.Module, data, epochs: int, lr: float = 2e-3) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(data.train))
    for _ in range(epochs):
        model.train()
        for (x,), y in data.train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return accuracy(model, data.eval)


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    hits = total = 0
    for (x,), y in loader:
        hits += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return hits / total


def export(model: nn.Module, path: Path) -> None:
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--fp32-epochs", type=int, default=4)
    p.add_argument("--geta-epochs", type=int, default=6)
    p.add_argument("--out", default="runs/fmnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp32-onnx", help="reuse a trained fp32 export of an earlier run instead of training again")
    p.add_argument("--loss", default="auto", help="auto (task), task+kd (with distillation from the fp32 model), kd")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(a.fp32_onnx) if a.fp32_onnx else out / "resnet_fmnist.onnx"
    if a.fp32_onnx:
        onnx_model = load_model(path)
        data = load_data(DATA, DataConfig(batch_size=128, val_split=0.0), model=onnx_model, seed=0)
        fp32_acc, fp32_s = accuracy(to_torch(onnx_model), data.eval), 0.0
    else:
        model = ResNetFM(a.width)
        export(model, path)  # untrained: only so the data is fitted to the model's input (N, 1, 28, 28)
        data = load_data(DATA, DataConfig(batch_size=128, val_split=0.0), model=load_model(path), seed=0)
        start = time.perf_counter()
        fp32_acc = train_fp32(model, data, a.fp32_epochs)
        fp32_s = time.perf_counter() - start
        export(model, path)
        onnx_model = load_model(path)
    print(f"fp32: top-1 {fp32_acc:.4f} ({fp32_s:.0f} s)", flush=True)
    start = time.perf_counter()
    result = run_geta(onnx_model, data, quant=QuantConfig(weight_bits=(4, 8), act_bits=(4, 8)),
                      prune=PruneConfig(target_sparsity=0.5, group_divisible=8),
                      optim=OptimConfig(optimizer="adam", lr=1e-3),
                      schedule=ScheduleConfig(epochs=a.geta_epochs),
                      train_config=TrainConfig(progress=False, loss=a.loss))
    geta_s = time.perf_counter() - start
    report = {
        "width": a.width, "loss": a.loss, "fp32_accuracy": fp32_acc, "fp32_epochs": a.fp32_epochs, "fp32_seconds": fp32_s,
        "compressed_accuracy": result.metrics.get("accuracy"), "geta_epochs": a.geta_epochs, "geta_seconds": geta_s,
        "relative_bops": result.relative_bops, "group_sparsity": result.metrics["group_sparsity"],
        "removed_groups": result.metrics["removed_groups"], "prunable_groups": result.metrics["prunable_groups"],
        "bits": result.bits, "history": [h["eval"] for h in result.train.history],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("bits", "history")}, indent=2))


if __name__ == "__main__":
    main()
