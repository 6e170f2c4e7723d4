"""Per-batch transforms that make raw samples fit a model input, planned once from shapes.

The plan is built from the data's sample shape and dtype and (when known) the model input's
shape and dtype; it then runs on every batch as a few cheap tensor ops. In order:
dtype -> scale -> layout (channels-last images to channels-first, add a channel axis,
replicate 1 channel to 3, resize) -> per-channel mean / std -> flatten.
Integer data that feeds an integer input (token ids) only becomes int64 (or the input's
integer dtype): never scaled or normalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import DataError

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """A model input as the data sees it: shape without the batch axis (None: any size)."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype


def matches(shape: tuple[int, ...], want: tuple[Dim, ...] | None) -> bool:
    """True when a sample shape can feed `want` (symbolic / unknown dims match anything)."""
    if want is None:
        return True
    return len(shape) == len(want) and all(not isinstance(w, int) or w == s for s, w in zip(shape, want))


def fmt_shape(shape) -> str:
    return "(N, " + ", ".join("?" if d is None else str(d) for d in shape) + ")"


@dataclass
class Transform:
    """Tensor batch (N, ...) -> tensor batch fitted to the model input."""

    ops: list = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    out_dtype: torch.dtype = torch.float32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x)
        return x


# ---- the ops (module-level so DataLoader workers can pickle a plan) ------------------------
def _cast(x, dtype):
    return x.to(dtype)


def _affine(x, shift, scale):  # (x - shift) / scale, broadcast per channel
    return (x - shift) / scale


def _permute(x, dims):
    return x.permute(*dims)


def _unsqueeze(x, dim):
    return x.unsqueeze(dim)


def _repeat(x, reps):
    return x.repeat(*reps)


def _resize(x, size):  # (N, C, H, W) -> (N, C, *size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


def plan(label: str, shape: tuple[int, ...], dtype: np.dtype, want: InputSpec | None, cfg: DataConfig, *,
         channels_last: bool = False, value_range: tuple[float, float] | None = None) -> Transform:
    """shape: one sample (no batch axis); value_range: (min, max) of the training data, for
    scale = "unit". Raises DataError naming both shapes when the data cannot feed `want`."""
    t, shape, dtype = Transform(), tuple(int(d) for d in shape), np.dtype(dtype)
    want_shape = want.shape if want is not None else None
    if (want is not None and want.dtype.kind in "iub") or (want is None and dtype.kind in "iub" and dtype != np.uint8):
        if dtype.kind == "f":
            raise DataError(f"{label}: model input '{want.name}' takes integers (e.g. token ids), the data holds "
                            f"{dtype}; store the ids as an integer array")
        t.out_dtype = getattr(torch, want.dtype.name) if want is not None else torch.int64
        t.ops.append(partial(_cast, dtype=t.out_dtype))
        return _finish(t, label, shape, want)

    t.out_dtype = getattr(torch, want.dtype.name) if want is not None else torch.float32
    t.ops.append(partial(_cast, dtype=t.out_dtype))
    if cfg.scale == "unit":
        lo, hi = value_range if value_range is not None else (0.0, 255.0)
        t.ops.append(partial(_affine, shift=lo, scale=max(hi - lo, 1e-12)))
    elif cfg.scale == "auto" and dtype == np.uint8:
        t.ops.append(partial(_affine, shift=0.0, scale=255.0))

    # layout: channels-last images become channels-first unless the model reads (H, W, C)
    if channels_last and len(shape) == 3 and not (want_shape is not None and matches(shape, want_shape)):
        t.ops.append(partial(_permute, dims=(0, 3, 1, 2)))
        shape = (shape[2], shape[0], shape[1])
    if want_shape is not None and not matches(shape, want_shape):
        shape = _adapt(t, shape, want_shape, cfg)

    # per-channel normalisation along the channel axis: 0 for (C, ...) samples, else the last
    if cfg.mean:
        mean, std = list(cfg.mean), list(cfg.std) or [1.0] * len(cfg.mean)
        view = [1] * (len(shape) + 1)  # broadcast over (N, *sample)
        if len(mean) > 1:
            if len(shape) >= 2 and shape[0] == len(mean):
                view[1] = len(mean)
            elif len(shape) >= 1 and shape[-1] == len(mean):
                view[-1] = len(mean)
            else:
                raise DataError(f"{label}: {len(mean)} mean / std values but samples {fmt_shape(shape)} have no axis "
                                "of that size; give one value per channel (or one for all)")
        t.ops.append(partial(_affine, shift=torch.tensor(mean, dtype=t.out_dtype).view(view),
                             scale=torch.tensor(std, dtype=t.out_dtype).view(view)))

    # an MLP input: flatten when the element count matches a static 1-D input
    if want_shape is not None and len(want_shape) == 1 and len(shape) > 1 and isinstance(want_shape[0], int) \
            and int(np.prod(shape)) == want_shape[0]:
        t.ops.append(_flatten)
        shape = (want_shape[0],)
    return _finish(t, label, shape, want)


def _adapt(t: Transform, shape: tuple[int, ...], want: tuple[Dim, ...], cfg: DataConfig) -> tuple[int, ...]:
    """Cheap fixes for image data: add a channel axis, replicate gray to RGB, resize."""
    if len(shape) == 2 and len(want) == 3:  # (H, W) -> (1, H, W), or (H, W, 1) for a channels-last input
        if want[-1] in (1, 3) and want[0] not in (1, 3):
            t.ops.append(partial(_unsqueeze, dim=-1))
            shape = shape + (1,)
        else:
            t.ops.append(partial(_unsqueeze, dim=1))
            shape = (1,) + shape
    if len(shape) == 3 and len(want) == 3:
        if shape[0] == 1 and want[0] == 3:  # gray -> RGB, (N, 1, H, W) -> (N, 3, H, W)
            t.ops.append(partial(_repeat, reps=(1, 3, 1, 1)))
            shape = (3,) + shape[1:]
        elif shape[-1] == 1 and want[-1] == 3 and want[0] != 3:  # channels-last gray -> RGB
            t.ops.append(partial(_repeat, reps=(1, 1, 1, 3)))
            shape = shape[:2] + (3,)
        spatial = want[1:]
        static = all(isinstance(d, int) for d in spatial)
        if cfg.resize and static and shape[1:] != spatial and matches(shape[:1], want[:1]):
            t.ops.append(partial(_resize, size=tuple(spatial)))
            shape = shape[:1] + tuple(spatial)
    return shape


def _finish(t: Transform, label: str, shape: tuple[int, ...], want: InputSpec | None) -> Transform:
    if want is not None and not matches(shape, want.shape):
        rank = len(want.shape) if want.shape is not None else None
        hint = ("set resize = true to resize images" if rank == 3 and len(shape) == 3
                else "flattening needs the same element count" if rank == 1
                else "reshape the data to the model's input")
        raise DataError(f"{label}: samples of shape {fmt_shape(shape)} cannot feed model input '{want.name}' of shape "
                        f"{fmt_shape(want.shape)}; {hint}")
    t.out_shape = shape
    return t
