"""Fixed int8 grids: weights whose deployed format is int8 with steps taken from their own
range, where no kernel gives a width to learn (embedding tables, quant/tables.py; recurrent
weights, quant/recurrent.py).

    steps = int8_steps(w, dims)          # max |w| over `dims` / 127, 1 where that is 0
    ints = int8_integers(w, steps)       # round(w / steps) in [-127, 127], as float32
    y = StraightThrough.apply(x, q)      # q forward, the gradient of x backward

Symmetric, zero point 0: levels [-127, 127] (onnxruntime's int8 weights; -128 unused, so the
grid is symmetric about 0 and a zero weight stays exactly 0).
"""
from __future__ import annotations

import torch

LEVELS = 127


def int8_steps(w: torch.Tensor, dims) -> torch.Tensor:
    """float32 steps: max |w| over `dims` (kept as size-1 axes) / 127; 1 where the maximum is 0
    (a zeroed channel keeps a valid step and stays zero)."""
    m = torch.amax(w.detach().float().abs(), dim=dims, keepdim=True)
    return torch.where(m > 0, m / LEVELS, torch.ones_like(m))


def int8_integers(w: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The integers of `w` on the grid `steps` (broadcast), in [-127, 127], as float32."""
    return torch.clamp(torch.round(w.detach().float() / steps), -LEVELS, LEVELS)


class StraightThrough(torch.autograd.Function):
    """forward(x, q) = q (the rounded values, bitwise); backward passes the gradient to x."""

    @staticmethod
    def forward(ctx, x, quantized):
        return quantized

    @staticmethod
    def backward(ctx, grad):
        return grad, None
