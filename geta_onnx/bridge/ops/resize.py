"""Resize and the deprecated Upsample.

ONNX Resize is separable: every resized axis maps output position x to an input
coordinate (coordinate_transformation_mode), then reads it as nearest / linear (2 taps) /
cubic (4 taps). The generic path here does exactly that, axis by axis, with index_select
and the same float32 arithmetic as onnxruntime, so every mode combination it accepts
matches onnxruntime's indices exactly. Where F.interpolate computes the same thing (the
common CNN cases: nearest x2^k, bilinear / trilinear / bicubic with half-pixel or
align-corners coordinates) it is used instead, being one fused kernel.

Output sizes and scales follow onnxruntime: with scales, out = int(float32(scale) * in)
and the coordinates use the given scale; with sizes, scale = float32(out) / float32(in).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter

_COORDS = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
           "tf_half_pixel_for_nn", "tf_crop_and_resize"}
_NEAREST = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple"}  # simple: Resize-10, Upsample
_F32 = np.float32


def source_coords(mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float], device) -> torch.Tensor:
    """Input coordinate of each output position along one axis, in float32 (onnxruntime's order of operations)."""
    x = torch.arange(out_len, dtype=torch.float32, device=device)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "align_corners":
        return x * 0 if out_len == 1 else x * float(in_len - 1) / float(out_len - 1)
    if mode == "pytorch_half_pixel" and out_len == 1:
        return x * 0
    if mode == "half_pixel_symmetric":  # centre the resized image when out != in * scale
        adjustment = _F32(out_len) / (_F32(scale) * _F32(in_len))
        offset = float(_F32(in_len) / _F32(2) * (_F32(1) - adjustment))
        return (offset + (x.double() + 0.5) / scale - 0.5).float()  # onnxruntime uses double here
    if mode == "tf_crop_and_resize":
        start, end = _F32(roi[0]), _F32(roi[1])
        if out_len == 1:
            return x * 0 + float(_F32(0.5 * float(start + end) * (in_len - 1)))
        return float(start * _F32(in_len - 1)) + x * float(end - start) * float(in_len - 1) / float(out_len - 1)
    return (x + 0.5) / scale - 0.5  # half_pixel, pytorch_half_pixel


def nearest_index(coords: torch.Tensor, mode: str, downsampling: bool, in_len: int) -> torch.Tensor:
    floor = torch.floor(coords)
    frac = coords - floor  # exact in float32
    if mode == "round_prefer_floor":
        idx = floor + (frac > 0.5)
    elif mode == "round_prefer_ceil":
        idx = floor + (frac >= 0.5)
    elif mode == "ceil" or (mode == "simple" and downsampling):
        idx = torch.ceil(coords)
    else:  # floor, or simple when upsampling (a truncation; coordinates are >= 0 there)
        idx = floor
    return idx.clamp(0, in_len - 1).long()


def cubic_weights(t: torch.Tensor, a: float) -> list[torch.Tensor]:
    """Keys cubic kernel weights of the 4 taps floor(c) - 1 .. floor(c) + 2 for fraction t."""
    def near(s):  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s):  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


class Resize(nn.Module):
    def __init__(self, *, mode: str, coord: str, nearest: str, cubic_a: float, exclude_outside: bool,
                 extrapolation: float, slots: tuple, scales, sizes, roi, axes, policy: str):
        super().__init__()
        self.mode, self.coord, self.nearest, self.cubic_a = mode, coord, nearest, cubic_a
        self.exclude_outside, self.extrapolation, self.policy = exclude_outside, extrapolation, policy
        self.slots = slots  # positions of (roi, scales, sizes) in forward's inputs, None if absent
        self.scales, self.sizes, self.roi, self.axes = scales, sizes, roi, axes  # baked, or None
        self.allow_fast = True  # tests switch F.interpolate off to check the generic path

    # ---- output sizes and scales ----------------------------------------------------------
    def _input(self, inputs, which: int, baked, cast):
        if baked is not None:
            return baked
        slot = self.slots[which]
        if slot is None or slot > len(inputs) or inputs[slot - 1] is None or inputs[slot - 1].numel() == 0:
            return None
        return [cast(v) for v in inputs[slot - 1].reshape(-1).tolist()]

    def _plan(self, shape, inputs):
        """(out sizes, float32 scales, roi pairs) for every dim."""
        rank = len(shape)
        axes = [a + rank if a < 0 else a for a in self.axes] if self.axes else list(range(rank))
        scales, outs = [1.0] * rank, list(shape)
        sizes = self._input(inputs, 2, self.sizes, int)
        if sizes is not None:
            ratio = {a: float(_F32(s) / _F32(shape[a])) if shape[a] else 1.0 for a, s in zip(axes, sizes)}
            if self.policy == "stretch":
                for a, s in zip(axes, sizes):
                    scales[a], outs[a] = ratio[a], s
            else:  # keep the aspect ratio: one scale for every axis, sizes rounded half away from 0
                one = min(ratio.values()) if self.policy == "not_larger" else max(ratio.values())
                for a in axes:
                    scales[a], outs[a] = one, int(math.floor(float(_F32(one) * _F32(shape[a])) + 0.5))
        else:
            given = self._input(inputs, 1, self.scales, float)
            if given is None:
                raise RuntimeError("Resize needs scales or sizes")
            for a, s in zip(axes, given):
                scales[a], outs[a] = float(_F32(s)), int(_F32(s) * _F32(shape[a]))
        roi = self._input(inputs, 0, self.roi, float) if self.coord == "tf_crop_and_resize" else None
        pairs = [(0.0, 1.0)] * rank
        if roi:  # [starts of each axis ..., ends of each axis ...]
            for i, a in enumerate(axes):
                pairs[a] = (roi[i], roi[i + len(axes)])
        return outs, scales, pairs

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x, *inputs):
        outs, scales, roi = self._plan(tuple(x.shape), inputs)
        dims = self._resized_dims(scales)
        fast = self._interpolate_mode(x, dims, outs, scales) if self.allow_fast else None
        if fast is not None:
            align = self.coord == "align_corners" if self.mode != "nearest" else None
            return F.interpolate(x, size=outs[2:], mode=fast, align_corners=align)
        for a in dims:
            x = self._resize_axis(x, a, outs[a], scales[a], roi[a])
        return x

    def _resized_dims(self, scales: list[float]) -> list[int]:
        """The dims onnxruntime transforms. A dim with scale 1 (so out == in) is left alone
        by nearest; linear / cubic kernels transform the 2 innermost dims of a 2-d / 4-d
        tensor (H, W of NHWC when the last scale is 1 instead), the 3 innermost of a 3-d /
        5-d one, whatever their scale. Only the tf_* modes do not map a scale-1 dim to
        itself, so elsewhere scale-1 dims are skipped too."""
        rank = len(scales)
        resized = [a for a in range(rank) if scales[a] != 1.0]
        if self.mode == "nearest" or self.coord not in ("tf_half_pixel_for_nn", "tf_crop_and_resize"):
            return resized
        if rank == 4 and scales[1] != 1.0 and scales[3] == 1.0:
            inner = {1, 2}
        else:
            inner = set(range(rank - (3 if rank in (3, 5) else 2), rank))
        return sorted(inner.union(resized))

    def _interpolate_mode(self, x, dims, outs, scales) -> str | None:
        """The F.interpolate mode computing exactly this resize, or None."""
        spatial = x.dim() - 2
        if not dims or not x.is_floating_point() or not 1 <= spatial <= 3 or min(dims) < 2 or x.numel() == 0:
            return None
        if any(_F32(outs[a]) / _F32(x.shape[a]) != _F32(scales[a]) for a in dims):
            return None  # coordinates would use out / in instead of the given scale
        if self.mode == "nearest":  # exact only for power-of-two ratios (exact reciprocals)
            if not all(outs[a] % x.shape[a] == 0 and _is_pow2(outs[a] // x.shape[a]) for a in dims):
                return None
            if self.coord == "asymmetric" and self.nearest in ("floor", "simple"):
                return "nearest"
            if self.coord in ("half_pixel", "pytorch_half_pixel") and self.nearest.startswith("round"):
                return "nearest-exact"  # floor((x + 0.5) / s); no .5 ties occur for 2^k upsampling
            return None
        if self.coord not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return None
        if self.coord == "pytorch_half_pixel" and any(outs[a] == 1 for a in dims):
            return None
        if self.mode == "linear":
            return ("linear", "bilinear", "trilinear")[spatial - 1]
        if spatial == 2 and self.cubic_a == -0.75 and not self.exclude_outside:
            return "bicubic"
        return None

    def _resize_axis(self, x, axis: int, out_len: int, scale: float, roi):
        in_len = x.shape[axis]
        coords = source_coords(self.coord, out_len, in_len, scale, roi, x.device)
        view = [-1] + [1] * (x.dim() - axis - 1)  # broadcasts per-position weights along `axis`

        def take(idx):
            return x.index_select(axis, idx)

        if self.mode == "nearest":
            y = take(nearest_index(coords, self.nearest, scale < 1, in_len))
        elif self.mode == "linear":
            c = coords.clamp(0, in_len - 1)
            i0 = c.floor().clamp(max=in_len - 1)
            i1 = (i0 + 1).clamp(max=in_len - 1)
            w0, w1 = (i1 - c).abs(), (c - i0).abs()
            same = i0 == i1  # at the last position both taps are the same pixel
            w0, w1 = torch.where(same, 0.5, w0), torch.where(same, 0.5, w1)
            y = take(i0.long()) * w0.to(x.dtype).view(view) + take(i1.long()) * w1.to(x.dtype).view(view)
        else:  # cubic
            base = coords.floor()
            taps = [base + k for k in (-1, 0, 1, 2)]
            weights = cubic_weights(coords - base, self.cubic_a)
            if self.exclude_outside:  # drop taps outside the image and renormalise
                weights = [torch.where((t < 0) | (t > in_len - 1), 0.0, w) for t, w in zip(taps, weights)]
                total = sum(weights)
                weights = [w / total for w in weights]
            y = sum(take(t.clamp(0, in_len - 1).long()) * w.to(x.dtype).view(view) for t, w in zip(taps, weights))
        if self.coord == "tf_crop_and_resize":  # outside the input: extrapolation_value
            outside = ((coords < 0) | (coords > in_len - 1)).view(view)
            y = torch.where(outside, torch.tensor(self.extrapolation, dtype=y.dtype, device=y.device), y)
        return y

    def extra_repr(self) -> str:
        return f"mode={self.mode}, coord={self.coord}, nearest={self.nearest}, scales={self.scales}, sizes={self.sizes}"


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _const_list(ctx: NodeContext, i: int | None, cast):
    """A constant input as a list (None when absent, empty or computed at run time)."""
    value = None if i is None else ctx.const(i)
    if value is None or np.asarray(value).size == 0:
        return None
    return [cast(v) for v in np.asarray(value).reshape(-1)]


def _check_dtype(ctx: NodeContext, mode: str) -> None:
    info = ctx.model.info(ctx.inputs[0])
    if mode != "nearest" and info is not None and info.elem_type and not info.is_float:
        raise ctx.fail(f"{mode} resize of a non-float tensor is not supported")


@converter("Resize", versions=(10, 11, 13, 18, 19), static=(1, 2, 3))
def convert_resize(ctx: NodeContext):
    mode = ctx.attr("mode", "nearest")
    if ctx.since == 10:  # (X, scales); asymmetric coordinates and the old nearest rounding
        coord, nearest, slots = "asymmetric", "simple", (None, 1, None)
    else:
        coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest = ctx.attr("nearest_mode", "round_prefer_floor")
        slots = (1, 2, 3)
    if mode not in ("nearest", "linear", "cubic") or coord not in _COORDS or nearest not in _NEAREST:
        raise ctx.fail(f"unsupported mode={mode} / coordinate_transformation_mode={coord} / nearest_mode={nearest}")
    if ctx.attr("antialias", 0) and mode != "nearest":
        raise ctx.fail("antialias=1 is not supported")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise ctx.fail(f"unknown keep_aspect_ratio_policy '{policy}'")
    _check_dtype(ctx, mode)
    roi_i, scales_i, sizes_i = slots
    return Resize(mode=mode, coord=coord, nearest=nearest, cubic_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                  exclude_outside=bool(ctx.attr("exclude_outside", 0)),
                  extrapolation=float(ctx.attr("extrapolation_value", 0.0)), slots=slots,
                  scales=_const_list(ctx, scales_i, float), sizes=_const_list(ctx, sizes_i, int),
                  roi=_const_list(ctx, roi_i, float), axes=ctx.attr("axes"), policy=policy)


@converter("Upsample", versions=(1, 7, 9, 10), static=(1,))
def convert_upsample(ctx: NodeContext):
    """Deprecated since opset 10 (onnxruntime and the checker refuse it there, but the
    registry still resolves it): asymmetric coordinates, nearest truncates."""
    mode = {"bilinear": "linear"}.get(ctx.attr("mode", "nearest"), ctx.attr("mode", "nearest"))
    if mode not in ("nearest", "linear"):
        raise ctx.fail(f"unsupported mode '{mode}'")
    _check_dtype(ctx, mode)
    if ctx.since == 1:
        scales = [1.0, 1.0, float(ctx.attr("height_scale")), float(ctx.attr("width_scale"))]
    elif ctx.since == 7:
        scales = [float(s) for s in ctx.attr("scales")]
    else:
        scales = _const_list(ctx, 1, float)
    slots = (None, None if ctx.since < 9 else 1, None)
    return Resize(mode=mode, coord="asymmetric", nearest="simple", cubic_a=-0.75, exclude_outside=False,
                  extrapolation=0.0, slots=slots, scales=scales, sizes=None, roi=None, axes=None, policy="stretch")
