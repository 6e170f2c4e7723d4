"""ai.onnx.ml ops that scikit-learn exports (skl2onnx) put around a network: the input
Scaler of a StandardScaler pipeline and the ArrayFeatureExtractor that maps argmax to a
class label. Semantics follow onnxruntime's kernels (onnxruntime/core/providers/cpu/ml)."""
from __future__ import annotations

import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter


class Scaler(nn.Module):
    """y = (x - offset) * scale, per feature on the last axis (or one value for all), in
    float32 whatever the input's numeric type."""

    def __init__(self, offset: list[float], scale: list[float]):
        super().__init__()
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

    def forward(self, x):
        return (x.float() - self.offset) * self.scale


@converter("Scaler", versions=(1,), domain="ai.onnx.ml")
def convert_scaler(ctx: NodeContext):
    offset = [float(v) for v in ctx.attr("offset", [0.0])]
    scale = [float(v) for v in ctx.attr("scale", [1.0])]
    return Scaler(offset, scale)


class ArrayFeatureExtractor(nn.Module):
    """z[..., j] = x[..., y.flat[j]]: the last axis indexed by every index; a 1-D x gives
    [1, len(y)] (onnxruntime's shape)."""

    def forward(self, x, y):
        out = x.index_select(-1, y.reshape(-1).long())
        return out.reshape(1, -1) if x.dim() == 1 else out


@converter("ArrayFeatureExtractor", versions=(1,), domain="ai.onnx.ml", static=(0,))
def convert_array_feature_extractor(ctx: NodeContext):
    return ArrayFeatureExtractor()
