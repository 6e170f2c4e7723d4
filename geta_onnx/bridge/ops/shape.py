"""Shape and layout ops: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split,
Expand, Tile.

Shape-like inputs (Reshape's shape, Squeeze's axes, Split's sizes ...) are static slots:
when they are constants (the usual case after graph.normalize) they are baked into the
module at build time as Python ints; when the graph computes them at run time (e.g.
Shape -> Gather -> Concat around a dynamic batch dimension) forward reads the tensor,
which costs one host synchronisation per call.
"""
from __future__ import annotations

import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter


def runtime_ints(baked: list[int] | None, tensor: torch.Tensor | None) -> list[int] | None:
    """The build-time value if there is one, else the runtime tensor's values (or None)."""
    if baked is not None:
        return baked
    if tensor is None:
        return None
    return [int(v) for v in tensor.reshape(-1).tolist()]


def attr_or_input(ctx: NodeContext, name: str, index: int, moved_in: int) -> list[int] | None:
    """Ints given as attribute `name` before opset `moved_in`, as constant input `index` after."""
    if ctx.since < moved_in:
        value = ctx.attr(name)
        return None if value is None else [int(v) for v in value]
    return ctx.const_ints(index)


# ---- Reshape / Flatten --------------------------------------------------------------------

class Reshape(nn.Module):
    """ONNX Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""

    def __init__(self, shape: list[int] | None, allowzero: bool):
        super().__init__()
        self.shape, self.allowzero = shape, allowzero

    def forward(self, x, shape=None):
        target = runtime_ints(self.shape, shape)
        if not self.allowzero and 0 in target:
            target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
        return x.reshape(target)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, allowzero={self.allowzero}"


@converter("Reshape", versions=(1, 5, 13, 14, 19, 21), static=(1,))
def convert_reshape(ctx: NodeContext):
    shape = attr_or_input(ctx, "shape", 1, moved_in=5)
    if ctx.since < 5 and shape is None:
        raise ctx.fail("Reshape-1 without a shape attribute")
    return Reshape(shape, bool(ctx.attr("allowzero", 0)))


class Flatten(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        a = self.axis + x.dim() if self.axis < 0 else self.axis
        # (prod(dims before axis), prod(dims from axis)); explicit sizes keep 0-element inputs working
        return x.reshape(x.shape[:a].numel(), x.shape[a:].numel())

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@converter("Flatten", versions=(1, 9, 11, 13, 21))
def convert_flatten(ctx: NodeContext):
    return Flatten(int(ctx.attr("axis", 1)))


# ---- Transpose / Squeeze / Unsqueeze -----------------------------------------------------------

class Transpose(nn.Module):
    def __init__(self, perm: list[int] | None):
        super().__init__()
        self.perm = perm  # None: reverse the dims (the ONNX default)

    def forward(self, x):
        perm = self.perm if self.perm is not None else list(range(x.dim() - 1, -1, -1))
        return x.permute(perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


@converter("Transpose", versions=(1, 13, 21))
def convert_transpose(ctx: NodeContext):
    perm = ctx.attr("perm")
    return Transpose(None if perm is None else [int(p) for p in perm])


class Squeeze(nn.Module):
    def __init__(self, axes: list[int] | None, has_axes_input: bool):
        super().__init__()
        self.axes, self.has_axes_input = axes, has_axes_input

    def forward(self, x, axes=None):
        dims = self.axes if not self.has_axes_input else runtime_ints(self.axes, axes)
        if dims is None:  # no axes: drop every size-1 dim
            return x.squeeze()
        return x.squeeze(tuple(dims)) if dims else x

    def extra_repr(self) -> str:
        return f"axes={self.axes}"


@converter("Squeeze", versions=(1, 11, 13, 21), static=(1,))
def convert_squeeze(ctx: NodeContext):
    return Squeeze(attr_or_input(ctx, "axes", 1, moved_in=13), ctx.since >= 13 and ctx.has_input(1))


class Unsqueeze(nn.Module):
    def __init__(self, axes: list[int] | None):
        super().__init__()
        self.axes = axes

    def forward(self, x, axes=None):
        axes = runtime_ints(self.axes, axes)
        rank = x.dim() + len(axes)  # axes index the OUTPUT dims
        for a in sorted(a + rank if a < 0 else a for a in axes):
            x = x.unsqueeze(a)
        return x

    def extra_repr(self) -> str:
        return f"axes={self.axes}"


@converter("Unsqueeze", versions=(1, 11, 13, 21), static=(1,))
def convert_unsqueeze(ctx: NodeContext):
    axes = attr_or_input(ctx, "axes", 1, moved_in=13)
    if ctx.since < 13 and axes is None:
        raise ctx.fail("Unsqueeze without the axes attribute")
    return Unsqueeze(axes)


# ---- Concat / Split ----------------------------------------------------------------------

class Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@converter("Concat", versions=(1, 4, 11, 13))
def convert_concat(ctx: NodeContext):
    return Concat(int(ctx.attr("axis", 1)))  # the default 1 only exists in Concat-1


class Split(nn.Module):
    """Split into `n` outputs: given sizes, `num_outputs` chunks (the last one smaller), or
    n equal parts."""

    def __init__(self, axis: int, n: int, sizes: list[int] | None, has_sizes_input: bool, num_outputs: int | None):
        super().__init__()
        self.axis, self.n, self.sizes = axis, n, sizes
        self.has_sizes_input, self.num_outputs = has_sizes_input, num_outputs

    def forward(self, x, split=None):
        sizes = runtime_ints(self.sizes, split) if self.has_sizes_input else self.sizes
        if sizes is None:
            d = x.shape[self.axis]
            if self.num_outputs is not None:  # ceil(d / n) each, the remainder last
                chunk = -(-d // self.n)
                sizes = [chunk] * (self.n - 1) + [d - chunk * (self.n - 1)]
            else:
                sizes = [d // self.n] * self.n
        parts = torch.split(x, sizes, dim=self.axis)
        return tuple(parts) if self.n > 1 else parts[0]

    def extra_repr(self) -> str:
        return f"axis={self.axis}, n={self.n}, sizes={self.sizes}"


@converter("Split", versions=(1, 2, 11, 13, 18), static=(1,))
def convert_split(ctx: NodeContext):
    # sizes: Split-1 takes an input OR an attribute, 2 and 11 the attribute, 13+ the input
    sizes = ctx.attr("split")
    sizes = [int(s) for s in sizes] if sizes is not None and ctx.since < 13 else None
    has_input = (ctx.since == 1 or ctx.since >= 13) and ctx.has_input(1)
    if has_input:
        sizes = ctx.const_ints(1)
    num_outputs = ctx.attr("num_outputs") if ctx.since >= 18 else None
    n = len(ctx.outputs)
    if num_outputs is not None and int(num_outputs) != n:
        raise ctx.fail(f"num_outputs={num_outputs} but the node has {n} outputs")
    return Split(int(ctx.attr("axis", 0)), n, sizes, has_input, num_outputs)


# ---- Expand / Tile -----------------------------------------------------------------------

class Expand(nn.Module):
    """Bidirectional broadcast of x against `shape` (a 1 in shape keeps x's dim)."""

    def __init__(self, shape: list[int] | None):
        super().__init__()
        self.shape = shape

    def forward(self, x, shape=None):
        target = torch.broadcast_shapes(x.shape, tuple(runtime_ints(self.shape, shape)))
        return x.expand(target)  # a view; later ops copy when they need to

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


@converter("Expand", versions=(8, 13), static=(1,))
def convert_expand(ctx: NodeContext):
    return Expand(ctx.const_ints(1))


class Tile(nn.Module):
    def __init__(self, repeats: list[int] | None, axis: int | None = None):
        super().__init__()
        self.repeats = repeats
        self.axis = axis  # Tile-1: forward(x, tiles, axis) repeats one axis `tiles` times

    def forward(self, x, repeats=None, axis=None):
        if self.axis is not None or axis is not None:
            a = self.axis if self.axis is not None else int(axis)
            reps = [1] * x.dim()
            reps[a] = runtime_ints(self.repeats, repeats)[0]
        else:
            reps = runtime_ints(self.repeats, repeats)
        return x.repeat(reps)

    def extra_repr(self) -> str:
        return f"repeats={self.repeats}"


@converter("Tile", versions=(1, 6, 13), static=(1, 2))
def convert_tile(ctx: NodeContext):
    if ctx.since == 1:
        axis = ctx.const_ints(2)
        return Tile(ctx.const_ints(1), None if axis is None else axis[0])
    return Tile(ctx.const_ints(1))
