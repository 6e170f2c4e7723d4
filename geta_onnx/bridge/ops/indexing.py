"""Indexing ops: Gather, GatherElements, Slice, TopK, ArgMax, ArgMin, CumSum, Trilu."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .shape import runtime_ints


def _wrap_negative(indices: torch.Tensor, size: int) -> torch.Tensor:
    """ONNX indices may count from the end: [-size, size) -> [0, size), as int64."""
    indices = indices.long()
    return torch.where(indices < 0, indices + size, indices)


# ---- Gather / GatherElements ---------------------------------------------------------------------

class Gather(nn.Module):
    """out = data indexed along `axis` by every element of indices:
    shape data.shape[:axis] + indices.shape + data.shape[axis + 1:]."""

    def __init__(self, axis: int, may_be_negative: bool):
        super().__init__()
        self.axis, self.may_be_negative = axis, may_be_negative

    def forward(self, data, indices):
        axis = self.axis + data.dim() if self.axis < 0 else self.axis
        idx = _wrap_negative(indices, data.shape[axis]) if self.may_be_negative else indices.long()
        out = data.index_select(axis, idx.reshape(-1))  # backward: index_add, fine for embeddings
        return out.reshape(data.shape[:axis] + idx.shape + data.shape[axis + 1:])

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@converter("Gather", versions=(1, 11, 13), static=(1,))
def convert_gather(ctx: NodeContext):
    idx = ctx.const(1)
    return Gather(int(ctx.attr("axis", 0)), idx is None or bool((np.asarray(idx) < 0).any()))


class GatherElements(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, data, indices):
        return torch.gather(data, self.axis, _wrap_negative(indices, data.shape[self.axis]))

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@converter("GatherElements", versions=(11, 13), static=(1,))
def convert_gather_elements(ctx: NodeContext):
    return GatherElements(int(ctx.attr("axis", 0)))


# ---- Slice ----------------------------------------------------------------------------------

class Slice(nn.Module):
    """ONNX Slice. starts / ends / axes / steps are baked when constant. Per axis of size d:
    negative start / end get + d, then step > 0 clamps start and end to [0, d], step < 0
    clamps start to [0, d - 1] and end to [-1, d - 1] (so INT64 max / min mean "to the end").
    Negative steps run on the flipped axis, where they become positive."""

    def __init__(self, starts, ends, axes, steps):
        super().__init__()
        self.starts, self.ends, self.axes, self.steps = starts, ends, axes, steps

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        starts = runtime_ints(self.starts, starts)
        ends = runtime_ints(self.ends, ends)
        axes = runtime_ints(self.axes, axes) or list(range(len(starts)))
        steps = runtime_ints(self.steps, steps) or [1] * len(starts)
        index = [slice(None)] * x.dim()
        flip = []
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = axis + x.dim() if axis < 0 else axis
            d = x.shape[axis]
            start = start + d if start < 0 else start
            end = end + d if end < 0 else end
            if step > 0:
                index[axis] = slice(min(max(start, 0), d), min(max(end, 0), d), step)
            else:  # on the flipped axis position i is d - 1 - i
                start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
                index[axis] = slice(d - 1 - start, d - 1 - end, -step)
                flip.append(axis)
        if flip:
            x = x.flip(flip)
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"starts={self.starts}, ends={self.ends}, axes={self.axes}, steps={self.steps}"


@converter("Slice", versions=(1, 10, 11, 13), static=(1, 2, 3, 4))
def convert_slice(ctx: NodeContext):
    if ctx.since < 10:  # attributes; axes optional, no steps
        axes = ctx.attr("axes")
        return Slice(list(ctx.attr("starts")), list(ctx.attr("ends")), None if axes is None else list(axes), None)
    return Slice(*(ctx.const_ints(i) for i in range(1, 5)))


# ---- TopK / ArgMax / ArgMin --------------------------------------------------------------------

class TopK(nn.Module):
    """(values, int64 indices) of the k largest / smallest along `axis`. Always sorted: ONNX
    leaves the order unspecified when sorted=0, so sorted output is valid for both."""

    def __init__(self, k: int | None, axis: int, largest: bool):
        super().__init__()
        self.k, self.axis, self.largest = k, axis, largest

    def forward(self, x, k=None):
        k = self.k if self.k is not None else int(k.reshape(-1)[0])
        values, indices = torch.topk(x, k, dim=self.axis, largest=self.largest, sorted=True)
        return values, indices

    def extra_repr(self) -> str:
        return f"k={self.k}, axis={self.axis}, largest={self.largest}"


@converter("TopK", versions=(1, 10, 11), static=(1,))
def convert_topk(ctx: NodeContext):
    if ctx.since < 10:
        k = int(ctx.attr("k"))
    else:
        k = ctx.const_ints(1)
        k = None if k is None else k[0]
    return TopK(k, int(ctx.attr("axis", -1)), bool(ctx.attr("largest", 1)))


class ArgExtreme(nn.Module):
    """ArgMax / ArgMin as int64; select_last_index picks the last of equal extremes."""

    def __init__(self, largest: bool, axis: int, keepdims: bool, last: bool):
        super().__init__()
        self.largest, self.axis, self.keepdims, self.last = largest, axis, keepdims, last

    def forward(self, x):
        fn = torch.argmax if self.largest else torch.argmin
        if not self.last:  # torch returns the first extreme, as ONNX does by default
            return fn(x, dim=self.axis, keepdim=self.keepdims)
        idx = fn(x.flip(self.axis), dim=self.axis, keepdim=self.keepdims)
        return x.shape[self.axis] - 1 - idx

    def extra_repr(self) -> str:
        return f"largest={self.largest}, axis={self.axis}, keepdims={self.keepdims}, last={self.last}"


@converter(("ArgMax", "ArgMin"), versions=(1, 11, 12, 13))
def convert_arg_extreme(ctx: NodeContext):
    return ArgExtreme(ctx.op_type == "ArgMax", int(ctx.attr("axis", 0)), bool(ctx.attr("keepdims", 1)),
                      bool(ctx.attr("select_last_index", 0)))


# ---- CumSum / Trilu --------------------------------------------------------------------------

class CumSum(nn.Module):
    def __init__(self, axis: int | None, exclusive: bool, reverse: bool):
        super().__init__()
        self.axis, self.exclusive, self.reverse = axis, exclusive, reverse

    def forward(self, x, axis=None):
        a = self.axis if self.axis is not None else int(axis.reshape(-1)[0])
        if self.reverse:
            x = x.flip(a)
        y = torch.cumsum(x, a, dtype=x.dtype)  # dtype: torch would widen ints to int64
        if self.exclusive and x.shape[a] > 0:  # shift by one: y[j] = sum(x[:j]), y[0] = 0
            y = torch.cat([torch.zeros_like(y.narrow(a, 0, 1)), y.narrow(a, 0, x.shape[a] - 1)], a)
        return y.flip(a) if self.reverse else y

    def extra_repr(self) -> str:
        return f"axis={self.axis}, exclusive={self.exclusive}, reverse={self.reverse}"


@converter("CumSum", versions=(11, 14), static=(1,))
def convert_cumsum(ctx: NodeContext):
    axis = ctx.const_ints(1)
    return CumSum(None if axis is None else axis[0], bool(ctx.attr("exclusive", 0)), bool(ctx.attr("reverse", 0)))


class Trilu(nn.Module):
    """Upper / lower triangle of the last two dims, from diagonal k."""

    def __init__(self, upper: bool, k: int | None):
        super().__init__()
        self.upper, self.k = upper, k

    def forward(self, x, k=None):
        k = self.k if self.k is not None else (0 if k is None else int(k.reshape(-1)[0]))
        return torch.triu(x, k) if self.upper else torch.tril(x, k)

    def extra_repr(self) -> str:
        return f"upper={self.upper}, k={self.k}"


@converter("Trilu", versions=(14,), static=(1,))
def convert_trilu(ctx: NodeContext):
    k = ctx.const_ints(1) if ctx.has_input(1) else [0]
    return Trilu(bool(ctx.attr("upper", 1)), None if k is None else k[0])
