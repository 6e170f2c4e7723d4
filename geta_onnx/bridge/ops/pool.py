"""Pooling: MaxPool, AveragePool, LpPool and their Global variants.

Window geometry follows onnxruntime (checked by the differential tests):
    eff    = (kernel - 1) * dilation + 1
    out    = floor((size + begin + end - eff) / stride) + 1            (ceil_mode=0)
    out    = ceil(...) + 1, minus 1 if the last window would start at or
             after size + begin, i.e. inside the end padding           (ceil_mode=1)
torch applies the same rule for symmetric pads, so symmetric pads up to half the window
take torch's fused kernels. Everything else (asymmetric pads, pads over half the window,
ceil-mode extra windows with asymmetric pads, dilated average pools) is padded
explicitly to exactly the length the `out` windows cover, then pooled without padding.

auto_pad SAME with dilations follows onnxruntime, which sizes the pads for the
undilated kernel (so the output is smaller than ceil(size / stride)); the ONNX spec and
shape inference use the dilated kernel. See Padding in conv.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .conv import Padding, spatial_attrs, torch_pad

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _Pool(nn.Module):
    """Shared geometry of the windowed pools (see the module docstring)."""

    def __init__(self, padding: Padding, ceil_mode: bool):
        super().__init__()
        self.pad, self.ceil_mode = padding, ceil_mode
        self.kernel, self.strides = tuple(padding.kernel), tuple(padding.strides)
        self.dilations = tuple(padding.dilations)
        self.torch_ceil = ceil_mode and padding.static  # ceil_mode for torch's fused kernels

    def geometry(self, sizes):
        """begin pads, declared end pads, end pads the `out` windows exactly need."""
        begin, end = self.pad(sizes)
        needed = []
        for n, b, e, k, s, d in zip(sizes, begin, end, self.kernel, self.strides, self.dilations):
            n, eff = int(n), (k - 1) * d + 1
            span = n + b + e - eff
            if self.torch_ceil:  # (SAME pads already fit ceil(n / s) windows)
                out = -(-span // s) + 1
                if (out - 1) * s >= n + b:  # that window would start in the end padding
                    out -= 1
            else:
                out = span // s + 1
            needed.append((out - 1) * s + eff - n - b)  # may be < e (tail ignored) or > e (ceil)
        return begin, end, needed

    def fused(self, begin, end) -> bool:
        """Whether torch's own padding / ceil_mode reproduce the ONNX windows."""
        return begin == end and all(b <= k // 2 for b, k in zip(begin, self.kernel))  # torch's limit

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, strides={self.strides}, dilations={self.dilations}, "
                f"ceil_mode={self.ceil_mode}, auto_pad={self.pad.auto_pad}")


class MaxPool(_Pool):
    def __init__(self, padding: Padding, ceil_mode: bool, storage_order: int, indices: bool):
        super().__init__(padding, ceil_mode)
        self.storage_order, self.indices = storage_order, indices

    def forward(self, x):
        dtype = x.dtype
        if not dtype.is_floating_point:  # int8 / uint8: exact in float32, torch pools floats only
            x = x.float()
        sizes = [int(n) for n in x.shape[2:]]
        begin, end, needed = self.geometry(sizes)
        fn = _MAX[len(sizes)]
        if self.fused(begin, end):
            out = fn(x, self.kernel, self.strides, begin, self.dilations, self.torch_ceil, return_indices=self.indices)
            offset, padded = [0] * len(sizes), sizes
        else:  # -inf never wins a max: the padding is ignored as ONNX requires
            x = F.pad(x, torch_pad(begin, needed), value=float("-inf"))
            out = fn(x, self.kernel, self.strides, 0, self.dilations, False, return_indices=self.indices)
            offset, padded = begin, [n + b + e for n, b, e in zip(sizes, begin, needed)]
        if not self.indices:
            return out.to(dtype)
        y, idx = out
        return y.to(dtype), self._onnx_indices(idx, sizes, padded, offset)

    def _onnx_indices(self, idx, sizes, padded, offset):
        """torch's per-plane indices into the (padded) input -> ONNX indices: into the
        whole unpadded input, row-major (storage_order 0) or column-major over the
        spatial dims (storage_order 1), plus the (n, c) plane offset."""
        flat, coords = idx, []
        for n in reversed(padded):  # unravel, last dim fastest
            coords.append(flat % n)
            flat = torch.div(flat, n, rounding_mode="floor")
        coords = [c - o for c, o in zip(reversed(coords), offset)]
        order = range(len(sizes)) if self.storage_order == 0 else reversed(range(len(sizes)))
        out = torch.zeros_like(idx)
        for i in order:
            out = out * sizes[i] + coords[i]
        plane = 1
        for n in sizes:
            plane *= n
        n_planes = idx.shape[0] * idx.shape[1]
        base = torch.arange(n_planes, device=idx.device).reshape(idx.shape[:2] + (1,) * len(sizes))
        return out + base * plane


def _window_mean(t, kernel, strides, dilations):
    """Mean over every (dilated) window of an unpadded tensor (N, C, spatial...)."""
    if all(d == 1 for d in dilations):
        return _AVG[len(kernel)](t, kernel, strides)
    # torch's avg_pool has no dilation: a depthwise conv with a 1/k kernel on (N*C, 1, ...)
    n, c = t.shape[:2]
    w = torch.full((1, 1) + tuple(kernel), 1.0 / _volume(kernel), dtype=t.dtype, device=t.device)
    y = _CONV[len(kernel)](t.reshape((n * c, 1) + t.shape[2:]), w, None, strides, 0, dilations)
    return y.reshape((n, c) + y.shape[2:])


def _volume(kernel) -> int:
    v = 1
    for k in kernel:
        v *= k
    return v


class AveragePool(_Pool):
    """Window sum / number of counted cells. count_include_pad=0 counts input cells only;
    =1 also counts the declared pads, but never the cells past them that ceil_mode adds."""

    def __init__(self, padding: Padding, ceil_mode: bool, count_include_pad: bool):
        super().__init__(padding, ceil_mode)
        self.count_include_pad = count_include_pad

    def forward(self, x):
        sizes = [int(n) for n in x.shape[2:]]
        begin, end, needed = self.geometry(sizes)
        if self.fused(begin, end) and all(d == 1 for d in self.dilations):
            return _AVG[len(sizes)](x, self.kernel, self.strides, begin, self.torch_ceil, self.count_include_pad)
        xp = F.pad(x, torch_pad(begin, needed))
        # the counted cells as a 0/1 mask over the padded extent; mean(x) / mean(mask) in
        # every window is sum(x) / count
        mask = torch.ones((1, 1) + tuple(sizes), dtype=x.dtype, device=x.device)
        if self.count_include_pad:
            mask = F.pad(mask, torch_pad(begin, end), value=1.0)
            mask = F.pad(mask, torch_pad([0] * len(sizes), [n - e for n, e in zip(needed, end)]))
        else:
            mask = F.pad(mask, torch_pad(begin, needed))
        count = _window_mean(mask, self.kernel, self.strides, self.dilations)
        return _window_mean(xp, self.kernel, self.strides, self.dilations) / count

    def extra_repr(self) -> str:
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"


class LpPool(_Pool):
    """(sum |x|^p over each window) ^ (1/p); zero padding adds nothing to the sum."""

    def __init__(self, padding: Padding, ceil_mode: bool, p: float):
        super().__init__(padding, ceil_mode)
        self.p = p

    def forward(self, x):
        sizes = [int(n) for n in x.shape[2:]]
        begin, _, needed = self.geometry(sizes)
        xp = F.pad(x.abs().pow(self.p), torch_pad(begin, needed))
        return (_window_mean(xp, self.kernel, self.strides, self.dilations) * _volume(self.kernel)).pow(1.0 / self.p)


def _padding(ctx: NodeContext) -> Padding:
    kernel, strides, dilations = spatial_attrs(ctx, kernel_from_weight=None)
    return Padding(ctx, kernel, strides, dilations, same_dilated=False)  # as onnxruntime


@converter("MaxPool", versions=(1, 8, 10, 11, 12))
def convert_max_pool(ctx: NodeContext) -> nn.Module:
    storage_order = int(ctx.attr("storage_order", 0))
    if storage_order not in (0, 1):
        raise ctx.fail(f"storage_order {storage_order} is not 0 or 1")
    indices = len(ctx.outputs) > 1 and bool(ctx.outputs[1])
    return MaxPool(_padding(ctx), bool(ctx.attr("ceil_mode", 0)), storage_order, indices)


@converter("AveragePool", versions=(1, 7, 10, 11, 19))
def convert_average_pool(ctx: NodeContext) -> nn.Module:
    return AveragePool(_padding(ctx), bool(ctx.attr("ceil_mode", 0)), bool(ctx.attr("count_include_pad", 0)))


@converter("LpPool", versions=(1, 2, 11, 18))
def convert_lp_pool(ctx: NodeContext) -> nn.Module:
    return LpPool(_padding(ctx), bool(ctx.attr("ceil_mode", 0)), float(ctx.attr("p", 2)))


class GlobalPool(nn.Module):
    """Reduce every spatial dim (2 ...) to size 1."""

    def __init__(self, kind: str, p: float = 2.0):
        super().__init__()
        self.kind, self.p = kind, p

    def forward(self, x):
        dims = tuple(range(2, x.dim()))
        if self.kind == "avg":
            return x.mean(dims, keepdim=True)
        if self.kind == "max":
            return x.amax(dims, keepdim=True)
        return x.abs().pow(self.p).sum(dims, keepdim=True).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return self.kind if self.kind != "lp" else f"lp, p={self.p}"


@converter("GlobalAveragePool", versions=(1,))
def convert_global_average_pool(ctx: NodeContext) -> nn.Module:
    return GlobalPool("avg")


@converter("GlobalMaxPool", versions=(1,))
def convert_global_max_pool(ctx: NodeContext) -> nn.Module:
    return GlobalPool("max")


@converter("GlobalLpPool", versions=(1, 2))
def convert_global_lp_pool(ctx: NodeContext) -> nn.Module:
    return GlobalPool("lp", float(ctx.attr("p", 2)))
