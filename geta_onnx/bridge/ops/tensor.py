"""Tensor sources and pass-throughs: Shape, Size, ConstantOfShape, Range, Constant,
Identity, Dropout."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .shape import runtime_ints


class Shape(nn.Module):
    """x.shape[start:end] as int64; Python slicing clamps start / end exactly as ONNX does."""

    def __init__(self, start: int | None, end: int | None):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x):
        return torch.tensor(x.shape[self.start:self.end], dtype=torch.int64, device=x.device)

    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}"


@converter("Shape", versions=(1, 13, 15, 19, 21))
def convert_shape(ctx: NodeContext):
    return Shape(ctx.attr("start"), ctx.attr("end"))  # start / end exist from Shape-15


class Size(nn.Module):
    def forward(self, x):
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)  # a 0-d int64


@converter("Size", versions=(1, 13, 19, 21))
def convert_size(ctx: NodeContext):
    return Size()


class ConstantOfShape(nn.Module):
    def __init__(self, shape: list[int] | None, value: float | int | bool, dtype: torch.dtype):
        super().__init__()
        self.shape, self.value, self.dtype = shape, value, dtype

    def forward(self, shape):
        dims = runtime_ints(self.shape, shape)
        return torch.full(dims, self.value, dtype=self.dtype, device=shape.device)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, value={self.value}, dtype={self.dtype}"


@converter("ConstantOfShape", versions=(9, 20, 21), static=(0,))
def convert_constant_of_shape(ctx: NodeContext):
    value = ctx.attr("value")  # a one-element tensor; default float32 0
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    if value.size != 1:
        raise ctx.fail(f"value must hold one element, got {value.size}")
    dtype = _torch_dtype(ctx, value)
    return ConstantOfShape(ctx.const_ints(0), value.reshape(-1)[0].item(), dtype)


class Range(nn.Module):
    """start, start + delta, ... up to (not including) limit, in the inputs' dtype."""

    def __init__(self, bounds: tuple | None):
        super().__init__()
        self.bounds = bounds  # (start, limit, delta) as Python numbers when constant

    def forward(self, start, limit, delta):
        bounds = self.bounds or (start.item(), limit.item(), delta.item())
        return torch.arange(*bounds, dtype=start.dtype, device=start.device)

    def extra_repr(self) -> str:
        return f"bounds={self.bounds}"


@converter("Range", versions=(11,), static=(0, 1, 2))
def convert_range(ctx: NodeContext):
    values = [ctx.const(i) for i in range(3)]
    bounds = None if any(v is None for v in values) else tuple(np.asarray(v).item() for v in values)
    return Range(bounds)


class Constant(nn.Module):
    """A Constant node the normaliser kept (it is a graph output). The value is a
    non-persistent buffer so that it follows .to(device); it is not a parameter."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value, persistent=False)

    def forward(self):
        return self.value


@converter("Constant", versions=(1, 9, 11, 12, 13, 19, 21))
def convert_constant(ctx: NodeContext):
    attrs = {a.name for a in ctx.node.attribute}
    if "value" in attrs:
        value = np.asarray(ctx.attr("value"))
    elif "value_float" in attrs or "value_floats" in attrs:
        value = np.asarray(ctx.attr("value_float", ctx.attr("value_floats")), dtype=np.float32)
    elif "value_int" in attrs or "value_ints" in attrs:
        value = np.asarray(ctx.attr("value_int", ctx.attr("value_ints")), dtype=np.int64)
    else:
        raise ctx.fail(f"Constant with {sorted(attrs)} is not supported (string and sparse values are not)")
    _torch_dtype(ctx, value)  # rejects strings and dtypes torch lacks
    return Constant(torch.from_numpy(np.array(value, copy=True)))


class Identity(nn.Module):
    def forward(self, x):
        return x


@converter("Identity", versions=(1, 13, 14, 16, 19, 21))
def convert_identity(ctx: NodeContext):
    return Identity()


class Dropout(nn.Module):
    """Dropout that follows module.train() / .eval() like torch: identity in eval mode.

    ONNX's training_mode input (Dropout-12+) is ignored: whether the bridged model trains
    is decided by PyTorch, not by the exported graph. With a mask output, forward returns
    (output, mask); the mask is bool from Dropout-10, the input's dtype before. In eval
    mode the mask is all True from Dropout-12 (the spec) and all False before, as
    onnxruntime fills it (the old specs leave it unfilled in inference).
    """

    def __init__(self, ratio: float | None, with_mask: bool, bool_mask: bool, eval_mask: bool):
        super().__init__()
        self.ratio, self.with_mask, self.bool_mask, self.eval_mask = ratio, with_mask, bool_mask, eval_mask

    def forward(self, x, ratio=None, training_mode=None):
        p = self.ratio if self.ratio is not None else float(ratio)
        if not (self.training and p > 0):
            out = x
            keep = torch.full_like(x, self.eval_mask, dtype=torch.bool) if self.with_mask else None
        elif not self.with_mask:
            return F.dropout(x, p, training=True)
        else:
            keep = torch.rand_like(x) >= p
            out = x * keep / (1.0 - p) if p < 1 else torch.zeros_like(x)
        if not self.with_mask:
            return out
        return out, (keep if self.bool_mask else keep.to(x.dtype))

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, with_mask={self.with_mask}"


@converter("Dropout", versions=(1, 6, 7, 10, 12, 13), static=(1, 2))
def convert_dropout(ctx: NodeContext):
    if ctx.since < 12:
        ratio = float(ctx.attr("ratio", 0.5))
    else:
        value = ctx.const(1)
        ratio = 0.5 if not ctx.has_input(1) else (None if value is None else float(np.asarray(value).item()))
    return Dropout(ratio, len(ctx.outputs) > 1, bool_mask=ctx.since >= 10, eval_mask=ctx.since >= 12)


def _torch_dtype(ctx: NodeContext, value: np.ndarray) -> torch.dtype:
    try:
        return torch.from_numpy(np.zeros(1, value.dtype)).dtype
    except TypeError:
        raise ctx.fail(f"values of dtype {value.dtype} are not supported") from None
