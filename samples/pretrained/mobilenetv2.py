"""torchvision's MobileNetV2 (width 1.0) with its exact state-dict naming, no torchvision.

Weights: torchvision's ImageNet file mobilenet_v2-b0353104.pth (top-1 71.9 %), loaded
with torch.load(weights_only=True). Input: (N, 3, 224, 224) RGB in [0, 1] normalised
with IMAGENET_MEAN / IMAGENET_STD; output: (N, 1000) logits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import asset_path, export

WEIGHTS = "mobilenet_v2-b0353104.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation(norm=BatchNorm2d, activation=ReLU6): keys 0, 1."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        inp = _make_divisible(32 * width_mult, 8)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), 8)
        features: list[nn.Module] = [ConvBNReLU6(3, inp, stride=2)]
        for t, c, n, s in self.SETTING:
            out = _make_divisible(c * width_mult, 8)
            for i in range(n):
                features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        features.append(ConvBNReLU6(inp, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def load(weights: str | Path | None = None) -> MobileNetV2:
    """The pretrained network in eval mode."""
    path = Path(weights) if weights else asset_path("mobilenetv2", WEIGHTS)
    model = MobileNetV2()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(image: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """An (H, W, 3) uint8 RGB photo -> (3, size, size) float32 as torchvision's ImageNet
    eval transform: shorter side to `resize` (bilinear), centre crop, mean/std."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-learn's two bundled photos (china.jpg, flower.jpg), preprocessed: name -> (3, 224, 224)."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return {Path(f).name: preprocess(img) for f, img in zip(data.filenames, data.images)}


def example_input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def export_onnx(path: str | Path, model: MobileNetV2 | None = None, opset: int = 17) -> Path:
    model = model or load()
    return export(model, (example_input(2),), path, input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset=opset)


# --------------------------------------------------------------------------- evidence
INPUT_NAMES = ["input"]
OUTPUT_NAMES = ["logits"]
# the distillation run of the tests / report: logits + 10 % noise, 5 SGD steps in train mode
TRAIN = {"output": 0, "noise": 0.1, "lr": 1e-3, "steps": 5}
# a few ImageNet-1k class names (index: name), enough to read the photos' predictions
CLASS_NAMES = {
    309: "bee", 442: "bell cote", 449: "boathouse", 483: "castle", 497: "church", 500: "cliff dwelling",
    538: "dome", 599: "honeycomb", 663: "monastery", 668: "mosque", 687: "pipe organ", 698: "palace",
    832: "stupa", 873: "triumphal arch", 900: "water tower", 947: "mushroom", 975: "lakeside", 985: "daisy",
    995: "earthstar", 996: "hen-of-the-woods",
}
# china.jpg shows a temple / palace building among trees: any of these is a plausible top-1
CHINA_PLAUSIBLE = {442, 449, 483, 497, 500, 538, 663, 668, 698, 832, 873, 900, 975}


def parity_feeds(seed: int = 0) -> dict[str, np.ndarray]:
    """The two scikit-learn photos followed by two seeded Gaussian images: (4, 3, 224, 224)."""
    photos = np.stack(list(sample_photos().values()))
    return {"input": np.concatenate([photos, example_input(2, seed).numpy()]).astype(np.float32)}
