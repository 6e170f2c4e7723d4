"""Activations: Relu LeakyRelu PRelu Elu Selu Sigmoid HardSigmoid HardSwish Tanh Softplus
Softsign Gelu, and the normalising Softmax LogSoftmax Hardmax.

Attribute defaults are ONNX's (float32 values, e.g. Selu's alpha/gamma), not torch's, so
the modules pass them explicitly instead of calling F.selu and friends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .base import Lambda
from .elementwise import support_unsigned

_PLAIN = {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softplus": F.softplus,
          "Softsign": F.softsign, "HardSwish": F.hardswish}  # HardSwish: x * HardSigmoid(x; 1/6, 1/2)


@converter("Relu", versions=(1, 6, 13, 14))
@converter(("Sigmoid", "Tanh"), versions=(1, 6, 13))
@converter(("Softplus", "Softsign"), versions=(1,))
@converter("HardSwish", versions=(14,))
def convert_plain(ctx: NodeContext) -> nn.Module:
    return Lambda(_PLAIN[ctx.op_type], ctx.op_type)


class Activation(nn.Module):
    """One of the parametrised activations; `alpha`, `beta` / `gamma` are ONNX attributes."""

    def __init__(self, kind: str, alpha: float, beta: float = 0.0):
        super().__init__()
        self.kind, self.alpha, self.beta = kind, alpha, beta

    def forward(self, x):
        if self.kind == "LeakyRelu":  # x if x >= 0 else alpha * x
            return F.leaky_relu(x, self.alpha)
        if self.kind == "Elu":  # x if x > 0 else alpha * (exp(x) - 1)
            return F.elu(x, self.alpha)
        if self.kind == "Selu":  # gamma * Elu(x; alpha); beta holds gamma
            return self.beta * F.elu(x, self.alpha)
        # HardSigmoid: max(0, min(1, alpha * x + beta))
        return torch.clamp(x * self.alpha + self.beta, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"{self.kind}, alpha={self.alpha}, beta={self.beta}"


@converter("LeakyRelu", versions=(1, 6, 16))
@converter(("Elu", "Selu", "HardSigmoid"), versions=(1, 6))
def convert_activation(ctx: NodeContext) -> nn.Module:
    op = ctx.op_type
    if op == "LeakyRelu":
        return Activation(op, ctx.attr("alpha", 0.01))
    if op == "Elu":
        return Activation(op, ctx.attr("alpha", 1.0))
    if op == "Selu":
        return Activation(op, ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875))
    return Activation(op, ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5))


class PRelu(nn.Module):
    """x if x >= 0 else slope * x. The slope broadcasts unidirectionally to x's shape
    (ONNX: e.g. (C, 1, 1) against NCHW, or (C,) against (N, ..., C)), which torch.where
    does; F.prelu would only accept a (C,) slope on axis 1."""

    def forward(self, x, slope):
        return torch.where(x < 0, x * slope, x)


@converter("PRelu", versions=(1, 6, 7, 9, 16), weights=(1,))
def convert_prelu(ctx: NodeContext) -> nn.Module:
    return support_unsigned(ctx, PRelu())  # PRelu-9 admits uint32 / uint64


class Gelu(nn.Module):
    def __init__(self, approximate: str):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


@converter("Gelu", versions=(20,))
def convert_gelu(ctx: NodeContext) -> nn.Module:
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.fail(f"approximate='{approximate}' is not defined (expected 'none' or 'tanh')")
    return Gelu(approximate)


# ---- Softmax family ---------------------------------------------------------------------------
def _hardmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """1 at the first maximum along dim, 0 elsewhere, in x's dtype (no gradient)."""
    return torch.zeros_like(x).scatter_(dim, x.argmax(dim, keepdim=True), 1)


_NORMALISE = {"Softmax": torch.softmax, "LogSoftmax": torch.log_softmax, "Hardmax": _hardmax}


class Normalise(nn.Module):
    """Softmax / LogSoftmax / Hardmax along `axis`.

    Opset >= 13 normalises over the single axis. Before opset 13 the input is coerced to
    2-D, (prod(dims before axis), prod(dims from axis)), and normalised over the second
    dim: over the flattened trailing dims, which only equals the single-axis form when
    axis is the last dim.
    """

    def __init__(self, op: str, axis: int, coerce_2d: bool):
        super().__init__()
        self.op, self.axis, self.coerce_2d = op, axis, coerce_2d
        self.fn = _NORMALISE[op]

    def forward(self, x):
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if not self.coerce_2d or axis == x.dim() - 1:
            return self.fn(x, axis)
        shape = x.shape
        flat = x.reshape(shape[:axis].numel(), shape[axis:].numel())
        return self.fn(flat, 1).reshape(shape)

    def extra_repr(self) -> str:
        return f"{self.op}, axis={self.axis}" + (", coerced to 2-D" if self.coerce_2d else "")


@converter(("Softmax", "LogSoftmax", "Hardmax"), versions=(1, 11, 13))
def convert_normalise(ctx: NodeContext) -> nn.Module:
    legacy = ctx.since < 13
    return Normalise(ctx.op_type, ctx.attr("axis", 1 if legacy else -1), coerce_2d=legacy)
