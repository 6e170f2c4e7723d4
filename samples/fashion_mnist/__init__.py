"""Fashion-MNIST sample: a ResNet-style CNN trained in fp32 here, then ONE `geta-onnx compress`
run, then `geta-onnx gate`, end to end.

    apt-get install dataset-fashion-mnist                   # the data (Debian, Expat license)
    python -m samples.fashion_mnist --out runs/fmnist       # fp32 training, compress, gate
    python -m samples.fashion_mnist --out runs/fmnist --fp32-onnx runs/fmnist/resnet_fp32.onnx   # reuse

The compress settings are samples/fashion_mnist/compress.toml; the gate budgets are the
issue's: accuracy drop <= 1 point, speedup >= 4x at batch 1 and 32. Measured on 2 cores with
`--fp32-epochs 3 --epochs 5` (about an hour): 91.90 % -> 91.20 %, 4.1x / 6.5x at batch 1 / 32,
the gate passes (docs/measurements.md).
"""
from __future__ import annotations

import torch
from torch import nn

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
    """ResNet-style for 28x28x1: stem, three stages (w, 2w, 4w), global pool, linear.
    Width 32: 80.5 M MACs per image (the model of deployment.md's measurements)."""

    def __init__(self, w: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def train_fp32(model: nn.Module, data, epochs: int, lr: float = 2e-3) -> float:
    """Adam with a one-cycle schedule; returns top-1 on data.eval."""
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


def export(model: nn.Module, path) -> None:
    """Legacy exporter, BatchNorm kept (PRESERVE), dynamic batch; input 'image' (N, 1, 28, 28)."""
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
