"""The bundled sample: scikit-learn's 8x8 digits (1,797 images, BSD-3) and a small BatchNorm
CNN trained in fp32 (seeded), exported with the legacy exporter. The README's first command
compresses the committed files; the tests rebuild them from scratch.

    python -m samples.digits.make samples/digits    # rewrite digits_cnn.onnx and digits.npz (needs scikit-learn)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(1, width), *block(width, width), nn.MaxPool2d(2),
                                      *block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x):
        return self.head(self.features(x))


# The bundled sample's width. At 8x8 pixels a width-32 net is all per-op overhead in
# onnxruntime (0.2 ms at batch 32): whether pruning + int8 beat it depended on the CPU (1.65x on
# one machine, 0.77x on another). At width 128 the convs carry the time, so removing half the
# channel groups pays on any CPU (docs/measurements.md).
SAMPLE_WIDTH = 128


def digits_arrays(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 1437 / 360 images (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1437], y[:1437], x[1437:], y[1437:]


def train_fp32(epochs: int = 15, seed: int = 0, width: int = 32) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_arrays(seed)
    model = DigitsCNN(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1) == torch.from_numpy(yte)).float().mean())
    return model, acc


def write_problem(folder: Path, seed: int = 0, width: int = 32) -> tuple[Path, Path, float]:
    """(model.onnx, data.npz, fp32 test accuracy). The tests use width 32 (fast); the bundled
    sample SAMPLE_WIDTH."""
    model, acc = train_fp32(seed=seed, width=width)
    xtr, ytr, xte, yte = digits_arrays(seed)
    onnx_path, npz_path = folder / "digits_cnn.onnx", folder / "digits.npz"
    torch.onnx.export(model, (torch.from_numpy(xte[:2]),), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
    np.savez_compressed(npz_path, x=xtr, y=ytr, eval_x=xte, eval_y=yte)
    return onnx_path, npz_path, acc


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "samples/digits")
    out.mkdir(parents=True, exist_ok=True)
    model_path, data_path, accuracy = write_problem(out, width=SAMPLE_WIDTH)
    print(f"wrote {model_path} (fp32 test accuracy {accuracy:.2%}) and {data_path}")
