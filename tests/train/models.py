"""Tiny ONNX models and data files for the training tests, built in code (seeded)."""
from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geta_onnx.bridge import to_torch
from geta_onnx.graph import load_model

SEED = 0


class TinyCNN(nn.Module):
    """(N, 1, 8, 8) -> (N, 3) class logits; dropout exercises the RNG in exact-resume tests."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.fc(nn.functional.dropout(x, 0.1, self.training))


class TinyTokens(nn.Module):
    """(N, T) int64 token ids -> (N, T, 6) embeddings: a label-free regression output."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 6)

    def forward(self, ids):
        return self.proj(self.emb(ids))


def export(net: nn.Module, example: torch.Tensor, path: Path, *, train_mode: bool = False,
           preserve: bool = False) -> Path:
    """Legacy exporter, dynamic batch; train_mode keeps BatchNorm unfused (trainable);
    preserve keeps it unfused as an inference node (eval uses the running statistics)."""
    torch.manual_seed(SEED)
    for p in net.parameters():  # random weights: the exporter would merge identical initializers
        nn.init.normal_(p, std=0.3)
    mode = (torch.onnx.TrainingMode.PRESERVE if preserve else
            torch.onnx.TrainingMode.TRAINING if train_mode else torch.onnx.TrainingMode.EVAL)
    train_mode = train_mode or preserve
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, training=mode,
                          do_constant_folding=not train_mode)
    return path


def cnn_model(folder: Path) -> Path:
    return export(TinyCNN(), torch.randn(2, 1, 8, 8), folder / "cnn.onnx", train_mode=True)


def eval_bn_model(folder: Path) -> Path:
    """TinyCNN whose BatchNorm evaluates with its running statistics (training_mode=0)."""
    return export(TinyCNN(), torch.randn(2, 1, 8, 8), folder / "cnn_eval_bn.onnx", preserve=True)


def token_model(folder: Path) -> Path:
    return export(TinyTokens(), torch.randint(0, 11, (2, 5)), folder / "tokens.onnx")


def bridged(path: Path):
    """(OnnxModel, OnnxModule) of an .onnx file."""
    model = load_model(path)
    return model, to_torch(model)


def blobs(n: int = 96, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """A learnable 3-class problem: (n, 1, 8, 8) float32 images whose class sets a bright
    quadrant, plus noise; labels int64 (n,)."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    x = r.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 1.0
    return x, y.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """An IDX file: 0, 0, dtype code (0x08 = uint8), rank, big-endian dims, then the data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path
