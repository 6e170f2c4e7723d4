"""The GETA quantizer (docs/algorithm.md section 1): bit-width formulas, the autograd
Function and the `Quantizer` module that holds one tensor's learnable d, q_m (and t).

    u    = min(|x|, q_m) ** t                 unsigned: u = clip(x, 0, q_m) ** t
    Q(x) = sign(x) * d * round(u / d)         unsigned: Q(x) = d * round(u / d)
    b    = log2(q_m**t / d + 1) + 1           unsigned: log2(q_m**t / d + 1)  (no sign bit)
    d(b) = q_m**t / (2**(b-1) - 1)            unsigned: q_m**t / (2**b - 1)

Gradients (straight-through estimator for round):
    dQ/dx   = 1 where |x| < q_m, else 0       departure: masked with q_m, not a fixed +-2
                                              (unsigned: 1 where 0 <= x < q_m)
    dQ/dd   = sign(x) * (round(u/d) - u/d)
    dQ/dq_m = sign(x) * t * q_m**(t-1) where |x| >= q_m, else 0
    dQ/dt   = sign(x) * u * ln(min(|x|, q_m)), 0 where min(|x|, q_m) = 0 (the limit of u ln u)
round() is torch.round: half to even, as ONNX QuantizeLinear rounds, so the exported
model lands on the same grid.

Parameterisation: d and q_m are stored as raw values, not logs, because QASSO projects d
onto [d(b_u), d(b_l)] and sets it in closed form; both are direct on the raw value.
Positivity: the Function uses max(d, D_FLOOR) and max(q_m, Q_FLOOR) but hands the gradient
to the raw parameter unchanged (a straight-through clamp), so a value pushed below its
floor is never stuck with a zero gradient; `Quantizer.clamp_()` projects the stored
values for an optimizer that wants them in range. The floors are far below any real
range: d(32 bits) of q_m = Q_FLOOR is still ~5e-18 > D_FLOOR.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import GetaError
from . import kernel

D_FLOOR = 1e-20
Q_FLOOR = 1e-8
KINDS = ("weight", "act")


# ---------------------------------------------------------------------------- formulas
def bits_of(d, q_m, t=1.0, signed: bool = True) -> torch.Tensor:
    """Bit width b(d, q_m, t); broadcasts over per-channel values."""
    d, q_m, t = (torch.as_tensor(v, dtype=torch.float64 if not torch.is_tensor(v) else None) for v in (d, q_m, t))
    b = torch.log2(q_m.clamp_min(Q_FLOOR) ** t / d.clamp_min(D_FLOOR) + 1)
    return b + 1 if signed else b


def d_of_bits(bits, q_m, t=1.0, signed: bool = True) -> torch.Tensor:
    """Step size d(b) giving `bits` bits at range q_m (the inverse of bits_of)."""
    bits, q_m, t = (torch.as_tensor(v, dtype=torch.float64 if not torch.is_tensor(v) else None) for v in (bits, q_m, t))
    _check_width(float(bits.min()), signed)
    return _d_of_bits(bits, q_m, t, signed)


def _check_width(bits: float, signed: bool) -> None:
    if bits < (2 if signed else 1):
        raise GetaError(f"a {'signed' if signed else 'unsigned'} quantizer needs at least "
                        f"{2 if signed else 1} bits, got {bits}")


def _levels(bits: torch.Tensor, signed: bool) -> torch.Tensor:
    """The largest |round(u / d)| at `bits` bits: 2^(b-1) - 1 signed, 2^b - 1 unsigned."""
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def levels_foreach(bits: list[torch.Tensor], signed: bool) -> list[torch.Tensor]:
    """_levels of many bit-width tensors in one foreach pass (QASSO's cool-down, every step)."""
    exponent = torch._foreach_sub(bits, 1) if signed else bits
    return torch._foreach_sub(torch._foreach_pow(2, exponent), 1)


@functools.lru_cache(maxsize=None)
def levels_of(bits: float, signed: bool, dtype: torch.dtype = torch.float32) -> float:
    """The divisor of d(b) = q_m^t / levels as _d_of_bits computes it in `dtype` (exact as a
    Python number: dividing a `dtype` tensor by it divides by the same value), for QASSO's
    projections of many quantizers at once. Checks the width as d_of_bits does."""
    _check_width(bits, signed)
    return float(_levels(torch.tensor(bits, dtype=dtype), signed))


def _d_of_bits(bits, q_m, t, signed: bool) -> torch.Tensor:
    """d_of_bits without the range check (no host sync inside forward)."""
    return q_m.clamp_min(Q_FLOOR) ** t / _levels(bits, signed)


# ---------------------------------------------------------------------------- autograd
class GetaQuantize(torch.autograd.Function):
    """Q(x) with the gradients of the module docstring.

    x: any shape; d, q_m: broadcastable to x (a scalar, or (1, C, 1, 1)-like for per-channel);
    t: a scalar tensor, or None for the linear quantizer t = 1 (not learned: the default).
    scale: LSQ's gradient scale of d and q_m (a number, or a tensor shaped as d), or None. Only
    x, d, q_m, t are saved: the backward recomputes u (cheap) instead of keeping four x-sized
    intermediates alive.

    The linear path is the same function in fewer passes over x (it is most of the fake-quant
    cost of a step): with c = clip(x, -q_m, q_m), sign(x) * d * round(|c| / d) =
    d * round(c / d) because round (half to even) and the division are odd functions, and
    likewise sign(x) (round(z) - z) = round(c/d) - c/d in the d gradient. Its forward keeps
    what the backward needs instead of x: the rounding residual round(z) - z (when d learns)
    and an int8 region code, +1 at x >= q_m, -1 at x <= -q_m (unsigned: x < 0), 0 inside. The
    backward is then three products and two sums, where recomputing took 17 passes over x
    (docs/measurements.md, "Fake-quant, Clip and optimizer cost"); tests/quant/test_quantizer.py checks
    the paths agree bitwise."""

    @staticmethod
    def forward(ctx, x, d, q_m, t, signed: bool, scale=None):
        ctx.signed, ctx.scale = signed, scale
        if t is None:
            return _linear_forward(ctx, x, d, q_m, signed)
        ctx.save_for_backward(x, d, q_m, t)
        _, _, c, u, z = _parts(x, d, q_m, t, signed)
        mag = d.clamp_min(D_FLOOR) * torch.round(z)
        return torch.sign(x) * mag if signed else mag

    @staticmethod
    def backward(ctx, grad):
        gx, gd, gq, gt = (_linear_backward if getattr(ctx, "linear", False) else _general_backward)(ctx, grad)
        if ctx.scale is not None:  # LSQ (Quantizer.grad_scale): d and q_m gradients times the scale
            gd = gd if gd is None else gd * ctx.scale
            gq = gq if gq is None else gq * ctx.scale
        return gx, gd, gq, gt, None, None


def _general_backward(ctx, grad):
    """The gradients of the module docstring, recomputed from x (any t)."""
    x, d, q_m, t = ctx.saved_tensors
    s, a, c, u, z = _parts(x, d, q_m, t, ctx.signed)
    q = q_m.clamp_min(Q_FLOOR)
    gx = gd = gq = gt = None
    gs = grad * s if ctx.signed else grad  # the sign factor every parameter gradient has
    if ctx.needs_input_grad[0]:
        inside = a < q if ctx.signed else (x >= 0) & (x < q)
        gx = grad * inside
    if ctx.needs_input_grad[1]:
        gd = (gs * (torch.round(z) - z)).sum_to_size(d.shape)
    if ctx.needs_input_grad[2]:
        gq = (gs * (a >= q) * (t * q ** (t - 1))).sum_to_size(q_m.shape)
    if ctx.needs_input_grad[3]:
        log_c = torch.where(c > 0, torch.log(c.clamp_min(torch.finfo(c.dtype).tiny)), torch.zeros_like(c))
        gt = (gs * u * log_c).sum_to_size(t.shape)
    return gx, gd, gq, gt


def _clip(x, q_m, signed: bool) -> torch.Tensor:
    """c = clip(x, -q_m, q_m) (signed) or clip(x, 0, q_m) (unsigned); q_m floored. A per-tensor
    q_m on the CPU clamps with Python numbers: that kernel is about 7x faster than the one with
    tensor bounds (the same values: the float32 bound as a double, cast back)."""
    q = q_m.clamp_min(Q_FLOOR)
    if q.numel() == 1 and q.device.type == "cpu":
        bound = float(q)
        return torch.clamp(x, -bound if signed else 0.0, bound)
    return torch.clamp(x, -q if signed else torch.zeros_like(q), q)


def _linear_forward(ctx, x, d, q_m, signed: bool) -> torch.Tensor:
    """Q(x) at t = 1, keeping the residual and the region code for _linear_backward; or, where
    the compiled kernel takes the call (kernel.py), Q(x) in one pass, keeping x."""
    dd = d.clamp_min(D_FLOOR)
    ctx.linear, ctx.shapes = True, (d.shape, q_m.shape)
    if kernel.usable(x, d, q_m):
        x = x.contiguous()
        ctx.fused = float(dd), float(q_m.clamp_min(Q_FLOOR))  # the float32 values, exactly
        ctx.save_for_backward(x)
        return kernel.forward(x, *ctx.fused, signed)
    z = _clip(x, q_m, signed) / dd
    k = torch.round(z)
    need_x, need_d, need_q = ctx.needs_input_grad[:3]
    residual = z.neg_().add_(k) if need_d else None  # round(z) - z, in z's memory
    region = None
    if need_x or need_q:
        q = q_m.clamp_min(Q_FLOOR)
        region = (x >= q).view(torch.int8)  # bool as int8: the same bytes, no copy
        region -= ((x <= -q) if signed else (x < 0)).view(torch.int8)
    ctx.save_for_backward(residual, region)
    return k.mul_(dd)


def _linear_backward(ctx, grad):
    """The gradients of the module docstring at t = 1 from what _linear_forward kept:
    dQ/dx = [region = 0], dQ/dd = round(z) - z, dQ/dq_m = the region's sign where |x| >= q_m
    (unsigned: 1 where x >= q_m)."""
    d_shape, q_shape = ctx.shapes
    if getattr(ctx, "fused", None):
        (x,) = ctx.saved_tensors
        gx, gd, gq = kernel.backward(grad.contiguous(), x, *ctx.fused, ctx.signed, *ctx.needs_input_grad[:3])
        return gx, gd if gd is None else gd.reshape(d_shape), gq if gq is None else gq.reshape(q_shape), None
    residual, region = ctx.saved_tensors
    gx = gd = gq = None
    if ctx.needs_input_grad[0]:
        gx = torch.where(region == 0, grad, 0.0)
    if ctx.needs_input_grad[1]:
        gd = (grad * residual).sum_to_size(d_shape)
    if ctx.needs_input_grad[2]:  # the code as grad's dtype first: mixed int8 * float is slow
        edge = (region if ctx.signed else region.clamp_min(0)).to(grad.dtype)
        gq = (grad * edge).sum_to_size(q_shape)
    return gx, gd, gq, None


def _parts(x, d, q_m, t, signed: bool):
    """sign, magnitude a, clipped magnitude c = min(a, q_m), u = c**t and z = u / d."""
    s = torch.sign(x) if signed else None
    a = x.abs() if signed else x.clamp_min(0)
    c = torch.minimum(a, q_m.clamp_min(Q_FLOOR))
    u = c ** t
    return s, a, c, u, u / d.clamp_min(D_FLOOR)


# ---------------------------------------------------------------------------- module
@contextmanager
def quantizers_off(quantizers: Iterable["Quantizer"]):
    """The quantizers as identities inside the block (Quantizer.enabled), their flags restored
    after: the fp32 model for calibration and for the quality guard's scores."""
    quantizers = list(quantizers)
    was = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, on in zip(quantizers, was):
            q.enabled = on


class Quantizer(nn.Module):
    """One quantized tensor: parameters `d`, `q_m` (shape () per tensor, (C,) per channel
    along `axis`) and `t` (a buffer = 1, or a parameter when learned).

    enabled=False makes forward the identity (fp32 evaluation, calibration).
    frozen_bits (None or a tensor shaped like d) is the cool-down stage: forward re-derives
    d = d(frozen_bits, q_m, t) every call, so q_m and t keep training at a fixed width.
    """

    def __init__(self, kind: str, *, signed: bool = True, channels: int | None = None, axis: int | None = None,
                 bit_range: tuple[int, int] = (4, 8), learn_t: bool = False, grad_scale: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise GetaError(f"quantizer kind must be one of {KINDS}, got '{kind}'")
        if (channels is None) != (axis is None):
            raise GetaError("a per-channel quantizer needs both `channels` and `axis`")
        self.kind, self.signed, self.axis = kind, signed, axis
        self.bit_range = tuple(bit_range)
        self.grad_scale = grad_scale
        self.enabled = True
        self.calibrated = kind == "weight"  # activation ranges come from data (calibrate.py)
        shape = () if channels is None else (channels,)
        self.d = nn.Parameter(torch.ones(shape))
        self.q_m = nn.Parameter(torch.ones(shape))
        if learn_t:
            self.t = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("t", torch.ones(()))
        self.register_buffer("frozen_bits", None)

    @property
    def learn_t(self) -> bool:
        return isinstance(self.t, nn.Parameter)

    # ---- bit width ---------------------------------------------------------------
    def bits(self) -> torch.Tensor:
        """Current bit width (frozen bits in cool-down), detached; shape of d."""
        if self.frozen_bits is not None:
            return self.frozen_bits.detach().clone()
        with torch.no_grad():
            return bits_of(self.d, self.q_m, self.t, self.signed)

    @torch.no_grad()
    def set_bits(self, bits) -> None:
        """d <- d(bits) at the current q_m and t (a number, or one value per channel)."""
        self.d.copy_(d_of_bits(torch.as_tensor(bits, dtype=self.d.dtype), self.q_m, self.t, self.signed)
                     .expand_as(self.d))

    @torch.no_grad()
    def set_range(self, q_m, bits) -> None:
        """q_m <- q_m (floored at Q_FLOOR), then d <- d(bits)."""
        self.q_m.copy_(torch.as_tensor(q_m, dtype=self.q_m.dtype).clamp_min(Q_FLOOR).expand_as(self.q_m))
        self.set_bits(bits)

    @torch.no_grad()
    def freeze_bits(self, bits=None) -> None:
        """Enter cool-down at `bits` (default: round(current bits))."""
        value = torch.round(self.bits()) if bits is None else torch.as_tensor(bits, dtype=self.d.dtype)
        value = value.to(self.d).expand_as(self.d).clone()
        d = d_of_bits(value, self.q_m, self.t, self.signed)  # checks the width before any state changes
        self.frozen_bits = value
        self.d.copy_(d)  # the stored d stays consistent for readers and export
        self.d.requires_grad_(False)  # forward no longer reads d: no gradient to wait for (DDP)

    def unfreeze(self) -> None:
        self.frozen_bits = None
        self.d.requires_grad_(True)

    def effective_d(self) -> torch.Tensor:
        """The step size forward uses (differentiable in q_m, t when frozen)."""
        if self.frozen_bits is not None:
            return _d_of_bits(self.frozen_bits, self.q_m, self.t, self.signed)
        return self.d.clamp_min(D_FLOOR)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the stored d and q_m onto their floors (after an optimizer step)."""
        self.d.clamp_(min=D_FLOOR)
        self.q_m.clamp_(min=Q_FLOOR)

    # ---- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if x.dtype in (torch.float16, torch.bfloat16):  # D_FLOOR and 2^b levels need float32
            return self.forward(x.float()).to(x.dtype)
        q_m, d = self.q_m, self.d
        if self.frozen_bits is not None:  # cool-down: d follows q_m (and t) at the frozen width
            d = _d_of_bits(self.frozen_bits, q_m, self.t, self.signed)
        scale = self._lsq_scale(x, d) if self.grad_scale and x.numel() and torch.is_grad_enabled() else None
        t = self.t.to(x.dtype) if self.learn_t else None  # None: t = 1, the fused linear path
        return GetaQuantize.apply(x, self._view(d, x), self._view(q_m, x), t, self.signed, scale)

    @torch.no_grad()
    def _lsq_scale(self, x: torch.Tensor, d: torch.Tensor):
        """LSQ's gradient scale of d and q_m, 1 / sqrt(elements per (d, q_m) * levels), levels
        = q_m^t / d (the largest |round(u / d)|, at least 1; `d`: the step forward uses): a
        Python number for a per-tensor quantizer on the CPU (no tensor op, no autograd node),
        else a tensor shaped as _view's d."""
        per = x.numel() // (1 if self.axis is None else x.shape[self.axis])
        if self.axis is None and x.device.type == "cpu" and not self.learn_t:
            levels = max(self.q_m.item(), Q_FLOOR) / max(d.item(), D_FLOOR)
            return 1.0 / math.sqrt(per * max(levels, 1.0))
        levels = (self.q_m.clamp_min(Q_FLOOR) ** self.t / d.clamp_min(D_FLOOR)).clamp_min(1.0)
        return self._view(torch.rsqrt(per * levels), x)

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """p as x's dtype, shaped (1, ..., C, ..., 1) along `axis` for per-channel."""
        p = p.to(x.dtype)
        if self.axis is None:
            return p
        if x.dim() <= self.axis or x.shape[self.axis] != p.numel():
            raise GetaError(f"per-channel quantizer with {p.numel()} channels on axis {self.axis} "
                            f"got a tensor of shape {tuple(x.shape)}")
        return p.reshape([-1 if i == self.axis else 1 for i in range(x.dim())])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # frozen_bits is a None buffer outside cool-down (absent from state_dict): follow the checkpoint
        self.frozen_bits = torch.empty_like(self.d.detach()) if prefix + "frozen_bits" in state_dict else None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        where = "per-tensor" if self.axis is None else f"per-channel axis={self.axis} C={self.d.numel()}"
        sign = "signed" if self.signed else "unsigned"
        return f"{self.kind}, {sign}, {where}, bits={list(self.bit_range)}, enabled={self.enabled}"
