"""Spatial rearrangements: Pad, DepthToSpace, SpaceToDepth."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .shape import runtime_ints

# ONNX mode -> torch F.pad mode, for the fast path of non-constant modes
_TORCH_MODE = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _source_index(mode: str, size: int, begin: int, end: int, device) -> torch.Tensor:
    """For one axis of length `size` padded by (begin, end): the input position each output
    position reads from. Negative pads crop first; the padding then repeats the cropped
    data (onnxruntime's order, which matters for wrap)."""
    lo, hi = max(-begin, 0), size - max(-end, 0)  # the kept range [lo, hi)
    n = hi - lo
    j = torch.arange(-max(begin, 0), n + max(end, 0), device=device)  # positions relative to lo
    if mode == "edge":
        j = j.clamp(0, n - 1)
    elif mode == "wrap":
        j = j.remainder(n)
    else:  # reflect without repeating the border: period 2 * (n - 1), mirrored in its 2nd half
        period = max(2 * (n - 1), 1)
        j = j.remainder(period)
        j = torch.where(j < n, j, period - j)
    return j + lo


class Pad(nn.Module):
    """ONNX Pad. pads = [begin of each padded axis ..., end of each padded axis ...];
    negative pads crop. Constant mode runs through F.pad (which crops too); reflect / edge /
    wrap use F.pad when torch supports the case (non-negative pads of the trailing
    rank - 2 dims of a 3-5 d input, smaller than the dims) and an index_select per padded
    axis otherwise."""

    def __init__(self, mode: str, pads: list[int] | None, value, axes: list[int] | None):
        super().__init__()
        self.mode, self.pads, self.value, self.axes = mode, pads, value, axes

    def forward(self, x, pads=None, value=None, axes=None):
        pads = runtime_ints(self.pads, pads)
        rank = x.dim()
        axes = runtime_ints(self.axes, axes)
        axes = [a + rank if a < 0 else a for a in axes] if axes is not None else list(range(rank))
        begin, end = [0] * rank, [0] * rank
        for i, a in enumerate(axes):
            begin[a], end[a] = pads[i], pads[i + len(axes)]
        if self.mode == "constant":
            fill = self.value if self.value is not None else (0 if value is None else value.item())
            return F.pad(x, _torch_pads(begin, end), value=fill)
        if self._torch_can_pad(x, begin, end):
            spatial = slice(2, rank)
            return F.pad(x, _torch_pads(begin[spatial], end[spatial]), mode=_TORCH_MODE[self.mode])
        for a in range(rank):
            if begin[a] or end[a]:
                x = x.index_select(a, _source_index(self.mode, x.shape[a], begin[a], end[a], x.device))
        return x

    def _torch_can_pad(self, x, begin, end) -> bool:
        if not 3 <= x.dim() <= 5 or any(begin[:2]) or any(end[:2]) or min(begin + end) < 0:
            return False
        limit = 0 if self.mode == "reflect" else 1  # reflect needs pad < dim, circular pad <= dim
        return all(max(b, e) < d + limit for b, e, d in zip(begin[2:], end[2:], x.shape[2:]))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, pads={self.pads}, value={self.value}, axes={self.axes}"


def _torch_pads(begin: list[int], end: list[int]) -> list[int]:
    """F.pad order: last dim first, (begin, end) for each dim."""
    return [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]


@converter("Pad", versions=(1, 2, 11, 13, 18, 19, 21), static=(1, 2, 3))
def convert_pad(ctx: NodeContext):
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap") or (mode == "wrap" and ctx.since < 19):
        raise ctx.fail(f"unsupported mode '{mode}'")
    if ctx.since < 11:  # pads ("paddings" in Pad-1) and value are attributes
        pads = ctx.attr("pads" if ctx.since >= 2 else "paddings")
        return Pad(mode, [int(p) for p in pads], float(ctx.attr("value", 0.0)), None)
    value = ctx.const(2) if ctx.has_input(2) else np.zeros(())
    value = None if value is None else np.asarray(value).reshape(-1)[0].item()
    return Pad(mode, ctx.const_ints(1), value, ctx.const_ints(3))  # axes: Pad-18+


class DepthToSpace(nn.Module):
    """(N, C, H, W) -> (N, C / b^2, H * b, W * b). DCR reads the channels as (b, b, C'),
    CRD as (C', b, b) (which is torch's pixel_shuffle)."""

    def __init__(self, block: int, crd: bool):
        super().__init__()
        self.block, self.crd = block, crd

    def forward(self, x):
        n, c, h, w = x.shape
        b = self.block
        if self.crd:
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        else:
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (b * b), h * b, w * b)

    def extra_repr(self) -> str:
        return f"block={self.block}, mode={'CRD' if self.crd else 'DCR'}"


@converter("DepthToSpace", versions=(1, 11, 13))
def convert_depth_to_space(ctx: NodeContext):
    mode = ctx.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise ctx.fail(f"unknown mode '{mode}'")
    return DepthToSpace(int(ctx.attr("blocksize")), mode == "CRD")


class SpaceToDepth(nn.Module):
    """(N, C, H, W) -> (N, C * b^2, H / b, W / b); output channels are ordered (b, b, C)."""

    def __init__(self, block: int):
        super().__init__()
        self.block = block

    def forward(self, x):
        n, c, h, w = x.shape
        b = self.block
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)

    def extra_repr(self) -> str:
        return f"block={self.block}"


@converter("SpaceToDepth", versions=(1, 13))
def convert_space_to_depth(ctx: NodeContext):
    return SpaceToDepth(int(ctx.attr("blocksize")))
