"""Small building blocks shared by converters."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Lambda(nn.Module):
    """A stateless op: forward(*inputs) = fn(*inputs). `label` shows in repr and errors."""

    def __init__(self, fn: Callable[..., torch.Tensor], label: str = ""):
        super().__init__()
        self.fn = fn
        self.label = label or getattr(fn, "__name__", "op")

    def forward(self, *args):
        return self.fn(*args)

    def extra_repr(self) -> str:
        return self.label


def onnx_axis(axis: int, rank: int) -> int:
    """A non-negative axis index from an ONNX (possibly negative) axis."""
    return axis + rank if axis < 0 else axis
