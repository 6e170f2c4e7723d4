"""The Reduce* family.

Axes are an attribute up to ReduceSum-11 / Reduce*-13 and an input from ReduceSum-13 /
Reduce*-18 on; the input must be a build-time constant (it is marked static). No axes,
or an empty list, reduces every axis, unless noop_with_empty_axes=1: then nothing is
reduced and each element goes through the op on its own, which is x for most ops but
|x| for L1 / L2, x*x for SumSquare and log(x) for LogSum (onnxruntime and the ONNX
reference agree on this).

Integer inputs keep their dtype, as in onnxruntime: Sum / Prod / Max / Min / L1 /
SumSquare stay exact integer arithmetic; Mean divides with truncation toward zero; L2,
LogSum and LogSumExp are computed in float64 and truncated back.
"""
from __future__ import annotations

import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter


def _prod(x, dims, keepdim):
    for d in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
        x = torch.prod(x, d, keepdim=keepdim, dtype=x.dtype)
    return x


def _sum(x, dims, keepdim):
    return torch.sum(x, dims, keepdim=keepdim, dtype=x.dtype)  # no int32 -> int64 promotion


def _mean(x, dims, keepdim):
    if x.dtype.is_floating_point:
        return torch.mean(x, dims, keepdim=keepdim)
    count = 1
    for d in dims:
        count *= x.shape[d]
    return torch.div(_sum(x, dims, keepdim), count, rounding_mode="trunc")


def _in_float(fn):
    """Run fn in float64 for integer inputs and truncate back (onnxruntime's int kernels)."""
    def run(x, dims, keepdim):
        if x.dtype.is_floating_point:
            return fn(x, dims, keepdim)
        return fn(x.double(), dims, keepdim).to(x.dtype)
    return run


# op -> (reduction over dims, the same op applied to single elements for the noop case)
_OPS = {
    "ReduceSum": (_sum, lambda x: x),
    "ReduceMean": (_mean, lambda x: x),
    "ReduceMax": (lambda x, d, k: torch.amax(x, d, keepdim=k), lambda x: x),
    "ReduceMin": (lambda x, d, k: torch.amin(x, d, keepdim=k), lambda x: x),
    "ReduceProd": (_prod, lambda x: x),
    "ReduceL1": (lambda x, d, k: _sum(x.abs(), d, k), torch.abs),
    "ReduceL2": (_in_float(lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k))), torch.abs),
    "ReduceSumSquare": (lambda x, d, k: _sum(x * x, d, k), lambda x: x * x),
    "ReduceLogSumExp": (_in_float(lambda x, d, k: torch.logsumexp(x, d, keepdim=k)), lambda x: x),
    "ReduceLogSum": (_in_float(lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k))), torch.log),
}


class Reduce(nn.Module):
    def __init__(self, op: str, axes: tuple[int, ...] | None, keepdims: bool, noop: bool):
        super().__init__()
        self.op, self.axes, self.keepdims, self.noop = op, axes, keepdims, noop
        self.reduce, self.elementwise = _OPS[op]

    def forward(self, x, axes=None):  # the axes input is baked into self.axes
        if self.axes is None:
            if self.noop:
                return self.elementwise(x)
            dims = tuple(range(x.dim()))
        else:
            dims = tuple(sorted({a + x.dim() if a < 0 else a for a in self.axes}))
        if x.dtype == torch.bool:  # ReduceMax / ReduceMin-20: any / all
            return (torch.amax if self.op == "ReduceMax" else torch.amin)(x.to(torch.uint8), dims, self.keepdims).bool()
        return self.reduce(x, dims, self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.op}, axes={self.axes}, keepdims={self.keepdims}, noop_with_empty_axes={self.noop}"


def _converter(op: str, axes_input_since: int):
    def convert(ctx: NodeContext) -> nn.Module:
        if ctx.since >= axes_input_since:
            axes = ctx.const_ints(1)
            if ctx.has_input(1) and axes is None:
                raise ctx.fail("the axes input must be a constant (an initializer or foldable subgraph)")
        else:
            axes = ctx.attr("axes")
        axes = tuple(int(a) for a in axes) if axes else None  # empty = every axis (or noop)
        return Reduce(op, axes, bool(ctx.attr("keepdims", 1)), bool(ctx.attr("noop_with_empty_axes", 0)))

    convert.__name__ = f"convert_{op.lower()}"
    return convert


# every since_version of each op (ReduceMax / Min-12 add int8, -20 bool; same semantics)
for _op, _versions, _axes_input in [
    ("ReduceSum", (1, 11, 13), 13),
    ("ReduceMean", (1, 11, 13, 18), 18),
    ("ReduceMax", (1, 11, 12, 13, 18, 20), 18),
    ("ReduceMin", (1, 11, 12, 13, 18, 20), 18),
    ("ReduceProd", (1, 11, 13, 18), 18),
    ("ReduceL1", (1, 11, 13, 18), 18),
    ("ReduceL2", (1, 11, 13, 18), 18),
    ("ReduceSumSquare", (1, 11, 13, 18), 18),
    ("ReduceLogSumExp", (1, 11, 13, 18), 18),
    ("ReduceLogSum", (1, 11, 13, 18), 18),
]:
    converter(_op, versions=_versions, static=(1,))(_converter(_op, _axes_input))
