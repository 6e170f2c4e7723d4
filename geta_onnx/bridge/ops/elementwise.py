"""Elementwise arithmetic and math: Add Sub Mul Div Pow, the unary math ops, Clip, the
variadic Min Max Mean Sum, and Cast / CastLike.

Binary ops broadcast numpy-style from opset 7 on, exactly as torch does, so most modules
call torch directly. Before opset 7 a `broadcast`/`axis` attribute pair selected legacy
broadcasting: `broadcast=1` without `axis` aligns B with the trailing dims of A, which is
numpy broadcasting; an explicit `axis` is refused (check_legacy_broadcast). Models older
than opset 11 are refused by the loader anyway; the old versions are listed so that every
since_version of the schemas resolves.
"""
from __future__ import annotations

from functools import reduce

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from ..context import NodeContext
from ..registry import converter
from .base import Lambda

_T = onnx.TensorProto

# ONNX tensor element type -> torch dtype, for every type torch can hold.
# Missing: STRING (no torch strings), UINT4 / INT4 / FLOAT4E2M1 (no 4-bit torch dtypes).
TORCH_DTYPES: dict[int, torch.dtype] = {
    _T.FLOAT: torch.float32, _T.DOUBLE: torch.float64, _T.FLOAT16: torch.float16, _T.BFLOAT16: torch.bfloat16,
    _T.INT8: torch.int8, _T.INT16: torch.int16, _T.INT32: torch.int32, _T.INT64: torch.int64,
    _T.UINT8: torch.uint8, _T.UINT16: torch.uint16, _T.UINT32: torch.uint32, _T.UINT64: torch.uint64,
    _T.BOOL: torch.bool, _T.COMPLEX64: torch.complex64, _T.COMPLEX128: torch.complex128,
    _T.FLOAT8E4M3FN: torch.float8_e4m3fn, _T.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    _T.FLOAT8E5M2: torch.float8_e5m2, _T.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}
FLOAT8_DTYPES = frozenset({torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz})


def torch_dtype(ctx: NodeContext, onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type; ctx.fail for types torch cannot hold."""
    if onnx_type not in TORCH_DTYPES:
        name = _T.DataType.Name(onnx_type) if onnx_type in _T.DataType.values() else str(onnx_type)
        raise ctx.fail(f"tensor type {name} has no torch dtype (strings and 4-bit types are not supported)")
    return TORCH_DTYPES[onnx_type]


class Widened(nn.Module):
    """Runs `inner` on int64 copies of uint16 / uint32 inputs, then casts an integer result
    back to `out_dtype`: torch holds these dtypes but implements little beyond casts for
    them. Exact: int64 holds every value, and the cast back wraps modulo 2**16 / 2**32
    as the unsigned arithmetic does (3 - 7 -> 2**32 - 4)."""

    def __init__(self, inner: nn.Module, out_dtype: torch.dtype | None):
        super().__init__()
        self.inner, self.out_dtype = inner, out_dtype

    def forward(self, *xs):
        xs = [x.to(torch.int64) if x is not None and x.dtype in (torch.uint16, torch.uint32) else x for x in xs]
        out = self.inner(*xs)
        return out if self.out_dtype is None else out.to(self.out_dtype)


def support_unsigned(ctx: NodeContext, module: nn.Module) -> nn.Module:
    """`module` made to work on uint16 / uint32 inputs (see Widened); uint64 is refused.
    Element types come from shape inference; an unknown type is left to torch."""
    types = {ctx.model.elem_type(x) for x in ctx.inputs if x}
    if _T.UINT64 in types:
        raise ctx.fail("uint64 inputs are not supported: torch implements little beyond casts for "
                       "uint64 and int64 cannot hold every value; cast to int64 in the model")
    if not types & {_T.UINT16, _T.UINT32}:
        return module
    out = ctx.model.elem_type(ctx.outputs[0])
    return Widened(module, TORCH_DTYPES[out] if out in (_T.UINT16, _T.UINT32) else None)


def check_legacy_broadcast(ctx: NodeContext) -> None:
    """Opset < 7 binary ops: `broadcast=1` with `axis` aligned B at that axis of A."""
    if ctx.attr("broadcast", 0) and ctx.attr("axis") is not None:
        raise ctx.fail("legacy broadcasting with an `axis` attribute (opset < 7) is not supported; "
                       "convert the model to opset >= 7 with onnx.version_converter")


def scalar_const(ctx: NodeContext, i: int) -> int | float | None:
    """Input i as a Python number if it is a one-element constant whose broadcasting
    cannot change the output shape (rank 0, or rank <= the rank of input 0), else None."""
    value = ctx.const(i)
    if value is None or value.size != 1:
        return None
    rank = ctx.input_rank(0)
    if value.ndim > 0 and (rank is None or value.ndim > rank):
        return None
    return value.reshape(-1)[0].item()


# ---- binary arithmetic ------------------------------------------------------------------
class Div(nn.Module):
    """a / b; integer division truncates toward zero as onnxruntime does (C++ `/`)."""

    def forward(self, a, b):
        if a.is_floating_point():
            return torch.div(a, b)
        return torch.div(a, b, rounding_mode="trunc")


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}


@converter(("Add", "Sub", "Mul", "Div"), versions=(1, 6, 7, 13, 14))
def convert_binary(ctx: NodeContext) -> nn.Module:
    check_legacy_broadcast(ctx)
    module = Div() if ctx.op_type == "Div" else Lambda(_BINARY[ctx.op_type], ctx.op_type)
    return support_unsigned(ctx, module)


class Pow(nn.Module):
    """x ** y in x's dtype (ONNX: the result has the base's type T, the exponent T1 may differ).

    Integer bases are computed in float64 and truncated, as onnxruntime does
    (static_cast<T>(std::pow(x, y))); torch itself refuses negative integer exponents.
    `exponent` is the baked value of a scalar constant exponent (Pow(x, 2) in a
    decomposed LayerNorm), else None and the runtime input y is used.
    """

    def __init__(self, exponent: int | float | None):
        super().__init__()
        self.exponent = exponent

    def forward(self, x, y):
        e = self.exponent if self.exponent is not None else y
        if not x.is_floating_point():
            e = e.double() if isinstance(e, torch.Tensor) else e
            return torch.pow(x.double(), e).to(x.dtype)
        out = torch.pow(x, e)  # a float64 exponent tensor would promote a float32 base
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def extra_repr(self) -> str:
        return "" if self.exponent is None else f"exponent={self.exponent}"


@converter("Pow", versions=(1, 7, 12, 13, 15))
def convert_pow(ctx: NodeContext) -> nn.Module:
    check_legacy_broadcast(ctx)
    return Pow(scalar_const(ctx, 1))


# ---- unary math -------------------------------------------------------------------------
class _SqrtZeroGrad(torch.autograd.Function):
    """sqrt with gradient 0 where x == 0 (torch's is inf, and inf * 0 = NaN). A magnitude
    sqrt(re^2 + im^2) of a channel pruning has zeroed is exactly 0; the NaN it gave stopped
    training (Silero VAD's STFT magnitude). The forward is torch.sqrt."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.where(y > 0, grad / (2 * y), torch.zeros_like(grad))


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    return _SqrtZeroGrad.apply(x) if x.requires_grad else torch.sqrt(x)


_UNARY = {"Sqrt": _sqrt, "Reciprocal": torch.reciprocal, "Exp": torch.exp, "Log": torch.log,
          "Neg": torch.neg, "Abs": torch.abs, "Floor": torch.floor, "Ceil": torch.ceil, "Erf": torch.erf}


@converter(("Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs", "Floor", "Ceil"), versions=(1, 6, 13))
@converter("Erf", versions=(9, 13))
def convert_unary(ctx: NodeContext) -> nn.Module:
    return support_unsigned(ctx, Lambda(_UNARY[ctx.op_type], ctx.op_type))  # Abs takes unsigned ints


# ---- Clip -------------------------------------------------------------------------------
class Clip(nn.Module):
    """min(max(x, lo), hi), as ONNX defines it (lo > hi gives hi everywhere).

    lo / hi are Python numbers baked at build time (attributes before opset 11, constant
    inputs after), or None: then the runtime inputs are used, and a missing bound is open.
    Two baked bounds on a float tensor run as F.hardtanh, as PyTorch's own ReLU6 does: one
    pass forward and one fused pass backward, where two clamps take two and six
    (docs/measurements.md, "Fake-quant, Clip and optimizer cost"). The values are the same;
    the gradient at exactly lo or hi is 0, as ReLU6's, where clamp's is 1.
    """

    def __init__(self, lo: int | float | None, hi: int | float | None):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x, lo=None, hi=None):
        if self.lo is not None and self.hi is not None and self.lo <= self.hi and x.is_floating_point():
            return F.hardtanh(x, self.lo, self.hi)
        lo = self.lo if self.lo is not None else lo
        hi = self.hi if self.hi is not None else hi
        if lo is not None:
            x = torch.clamp(x, min=lo)
        if hi is not None:
            x = torch.clamp(x, max=hi)
        return x

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}"


@converter("Clip", versions=(1, 6, 11, 12, 13), static=(1, 2))
def convert_clip(ctx: NodeContext) -> nn.Module:
    if ctx.since < 11:  # bounds are float attributes, inputs float
        return Clip(ctx.attr("min"), ctx.attr("max"))
    bounds = []
    for i in (1, 2):
        value = ctx.const(i)
        if value is not None and value.size != 1:
            raise ctx.fail(f"Clip bound input {i} must be a scalar, got shape {list(value.shape)}")
        bounds.append(None if value is None else value.reshape(-1)[0].item())
    return support_unsigned(ctx, Clip(*bounds))


# ---- variadic ---------------------------------------------------------------------------
class Variadic(nn.Module):
    """fn folded over any number of broadcasting inputs; `mean` divides by their count."""

    def __init__(self, fn, label: str, mean: bool = False):
        super().__init__()
        self.fn, self.label, self.mean = fn, label, mean

    def forward(self, *xs):
        out = reduce(self.fn, xs)
        return out / len(xs) if self.mean and len(xs) > 1 else out

    def extra_repr(self) -> str:
        return self.label


@converter(("Min", "Max"), versions=(1, 6, 8, 12, 13))
@converter(("Sum", "Mean"), versions=(1, 6, 8, 13))
def convert_variadic(ctx: NodeContext) -> nn.Module:
    # torch.minimum / maximum propagate NaN, as onnxruntime does
    fn = {"Min": torch.minimum, "Max": torch.maximum, "Sum": torch.add, "Mean": torch.add}[ctx.op_type]
    return support_unsigned(ctx, Variadic(fn, ctx.op_type, mean=ctx.op_type == "Mean"))


# ---- Cast / CastLike ------------------------------------------------------------------------
def cast(x: torch.Tensor, dtype: torch.dtype, saturate: bool = True) -> torch.Tensor:
    """x.to(dtype) with ONNX's float8 saturation: out-of-range values and +-inf become
    +-max finite (NaN stays NaN) when `saturate`, the default since opset 19."""
    if x.dtype == dtype:
        return x
    if dtype in FLOAT8_DTYPES and saturate:
        if not x.is_floating_point():
            x = x.to(torch.float64)
        limit = torch.finfo(dtype).max
        x = torch.clamp(x, -limit, limit)
    return x.to(dtype)


def _saturate(ctx: NodeContext, target: int | None) -> bool:
    """The `saturate` attribute (opset 19+); only float8 targets read it. torch's own
    float8_e4m3fn cast saturates, so ONNX's non-saturating mode (out of range -> NaN)
    cannot be reproduced for that type."""
    saturate = bool(ctx.attr("saturate", 1))
    if not saturate and target in (_T.FLOAT8E4M3FN, None):
        raise ctx.fail("saturate=0 to FLOAT8E4M3FN is not supported (torch's cast to float8_e4m3fn "
                       "always saturates); use saturate=1")
    return saturate


class Cast(nn.Module):
    def __init__(self, dtype: torch.dtype, saturate: bool):
        super().__init__()
        self.dtype, self.saturate = dtype, saturate

    def forward(self, x):
        return cast(x, self.dtype, self.saturate)

    def extra_repr(self) -> str:
        return f"to={self.dtype}" + ("" if self.saturate else ", saturate=False")


class CastLike(nn.Module):
    """Cast input 0 to the dtype of input 1 (read at runtime, so .double() carries over)."""

    def __init__(self, saturate: bool):
        super().__init__()
        self.saturate = saturate

    def forward(self, x, like):
        return cast(x, like.dtype, self.saturate)


@converter("Cast", versions=(1, 6, 9, 13, 19, 21))
def convert_cast(ctx: NodeContext) -> nn.Module:
    to = ctx.attr("to")
    if to is None:
        raise ctx.fail("Cast without a `to` attribute")
    if isinstance(to, str):  # Cast-1 names the type: "FLOAT"
        if to.upper() not in _T.DataType.keys():
            raise ctx.fail(f"unknown tensor type '{to}'")
        to = _T.DataType.Value(to.upper())
    dtype = torch_dtype(ctx, to)
    return Cast(dtype, _saturate(ctx, to) if dtype in FLOAT8_DTYPES else True)


@converter("CastLike", versions=(15, 19, 21))
def convert_cast_like(ctx: NodeContext) -> nn.Module:
    target = ctx.model.elem_type(ctx.inputs[1]) or None  # None: unknown until runtime
    if target is not None and torch_dtype(ctx, target) not in FLOAT8_DTYPES:
        return CastLike(True)
    return CastLike(_saturate(ctx, target))
