"""Channel-preserving ops: unary activations, broadcasting binary ops, norm layers, Q/DQ.

zero_ok bookkeeping: a group is zero-invariant only if its channels are exactly 0 where
the next layer reads them. f(0) = 0 for the ops in ZERO_PRESERVING; Sigmoid(0) = 0.5 or
Exp(0) = 1 break it (unless a Mul with a zeroed operand restores it, as in
squeeze-excitation gating).
"""
from __future__ import annotations

import numpy as np
import onnx

from ..analysis import Analysis
from ..fixups import ExpandTarget, LayerNormWidth
from . import rule
from .common import FIXED, Tracked, attr, axis_of, broadcast_full, const, passthrough, stop

ZERO_PRESERVING = ("Relu", "LeakyRelu", "Elu", "Selu", "Gelu", "Tanh", "HardSwish", "Softsign", "Neg", "Abs",
                   "Erf", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Sin", "Identity", "Dropout", "Cast",
                   "CastLike", "Mish", "Celu", "ThresholdedRelu", "Shrink", "Atan", "Asin", "Tan", "Sinh",
                   "Asinh", "Atanh")
NOT_ZERO_PRESERVING = ("Sigmoid", "HardSigmoid", "Exp", "Log", "Softplus", "Reciprocal", "Cos", "Cosh", "Acos",
                       "Not", "IsNaN", "IsInf")


@rule(*ZERO_PRESERVING)
def unary_zero(an: Analysis, node: onnx.NodeProto) -> None:
    passthrough(an, node)


@rule(*NOT_ZERO_PRESERVING)
def unary_nonzero(an: Analysis, node: onnx.NodeProto) -> None:
    passthrough(an, node, zero_ok=False)


@rule("Clip")
def clip(an: Analysis, node: onnx.NodeProto) -> None:
    lo = const(an, node, 1) if len(node.input) > 1 else attr(node, "min", None)
    hi = const(an, node, 2) if len(node.input) > 2 else attr(node, "max", None)
    ok = (lo is None or float(np.asarray(lo)) <= 0) and (hi is None or float(np.asarray(hi)) >= 0)
    passthrough(an, node, zero_ok=ok)


@rule("Pow")
def pow_(an: Analysis, node: onnx.NodeProto) -> None:
    if an.get(node.input[1]) is not None:
        stop(an, node, "channels in the exponent")
        return
    e = const(an, node, 1)
    passthrough(an, node, zero_ok=e is not None and bool(np.all(np.asarray(e) > 0)))


@rule("PRelu")
def prelu(an: Analysis, node: onnx.NodeProto) -> None:
    _binary(an, node, mode="prelu")


@rule("Add", "Sub", "Max", "Min", "Sum", "Mean")
def additive(an: Analysis, node: onnx.NodeProto) -> None:
    _binary(an, node, mode="all")  # zero where every operand is zero


@rule("Mul", "And")
def multiplicative(an: Analysis, node: onnx.NodeProto) -> None:
    _binary(an, node, mode="any")  # zero where any operand is zero


@rule("Div")
def divide(an: Analysis, node: onnx.NodeProto) -> None:
    den = node.input[1]
    if an.get(den) is not None or (an.model.is_initializer(den) and an.model.array(den).size > 1):
        stop(an, node, "divides by a per-channel tensor (a zeroed channel would give 0/0)")
        return
    _binary(an, node, mode="first")  # zero where the numerator is zero


@rule("Where")
def where(an: Analysis, node: onnx.NodeProto) -> None:
    if an.get(node.input[0]) is not None:
        stop(an, node, "channels in the condition")
        return
    _binary(an, node, mode="all", skip=(0,))


def _binary(an: Analysis, node: onnx.NodeProto, mode: str, skip: tuple[int, ...] = ()) -> None:
    """Broadcasting n-ary op: tracked operands are tied position by position; initializer
    operands that span a channel axis are sliced with it; untracked activations that span
    one pin those channels (they cannot shrink)."""
    inputs = [x for i, x in enumerate(node.input) if x and i not in skip]
    if not any(an.get(x) is not None for x in inputs):
        return
    rank = max(_rank(an, x) for x in inputs)
    fulls = broadcast_full(an, inputs, rank)
    tracked = [f for f in fulls if f is not None]
    ids = tracked[0]
    for f in tracked[1:]:
        an.union_arrays(ids, f, f"node '{node.name}' ({node.op_type}) ties channels")
        ids = np.where(np.broadcast_arrays(ids, f)[0] != FIXED, *np.broadcast_arrays(ids, f))
    axes = sorted({a + rank - _rank(an, x) for x in inputs if an.get(x) is not None for a in an.get(x).axes})
    zero = []  # per operand: is it exactly 0 on the channels when the group is zeroed?
    for x, f in zip(inputs, fulls):
        if f is not None:
            zero.append(an.get(x).zero_ok)
            continue
        zero.append(_untracked_operand(an, node, x, axes, ids, rank))
    if mode == "all":
        ok = all(zero)
    elif mode == "any":
        ok = any(zero)
    elif mode == "first":
        ok = zero[0]
    else:  # prelu: x * slope for x < 0, the slope is per channel
        ok = zero[0]
    index = tuple(slice(None) if a in axes else 0 for a in range(rank))
    full = np.broadcast_to(ids, tuple(max(f.shape[a] for f in tracked) for a in range(rank)))
    an.set(node.output[0], Tracked(tuple(axes), np.ascontiguousarray(full[index]), rank, ok))


def _rank(an: Analysis, name: str) -> int:
    """The tensor's rank: its inferred shape's, else (no shape inferred) its tracked ids', else 0."""
    rank = an.rank(name)
    if rank is None and an.get(name) is not None:
        return an.get(name).rank
    return rank or 0


def _untracked_operand(an: Analysis, node, name: str, axes: list[int], ids: np.ndarray, rank: int) -> bool:
    """Handle an operand with no channel ids; returns whether it is 0 on zeroed channels."""
    shape = an.model.shape(name)
    if shape is None:
        an.barrier(ids, f"node '{node.name}' ({node.op_type}): shape of '{name}' unknown")
        return False
    aligned_offset = rank - len(shape)
    spanning = [a for a in axes if a - aligned_offset >= 0 and shape[a - aligned_offset] != 1]
    if an.model.is_initializer(name):
        value = an.model.array(name)
        if not spanning:
            return not np.any(value)
        if len(spanning) == 1:
            a = spanning[0]
            line = np.moveaxis(np.broadcast_to(ids, ids.shape), a, 0).reshape(ids.shape[a], -1)
            if line.shape[1] > 1:  # multi-axis ids: the slice covers several channels: tie them
                an.union_along(line, 1)
            an.member(name, a - aligned_offset, line[:, 0], "out")
            return True
        an.barrier(ids, f"node '{node.name}' ({node.op_type}): constant '{name}' spans several channel axes")
        return False
    if spanning and _expanded_initializer(an, name, spanning, ids, rank):
        return True
    if spanning:
        an.barrier(ids, f"node '{node.name}' ({node.op_type}): '{name}' has no channel rule but spans the channels")
    return False


def _expanded_initializer(an: Analysis, name: str, spanning: list[int], ids: np.ndarray, rank: int) -> bool:
    """A learned tensor reaching the op through Expand / Slice / Identity / Cast on other
    axes: ViT's cls token Expand(cls, (B, 1, C)), a positional table pos[:, :S]. The
    initializer is sliced with the channels; prune/ fixes the Expand targets."""
    if len(spanning) != 1:
        return False
    a = spanning[0]
    chain, src = [], name
    while not an.model.is_initializer(src):
        node = an.model.producer(src)
        if node is None or node.op_type not in ("Expand", "Slice", "Identity", "Cast", "Mul"):
            return False
        if node.op_type == "Slice" and not _slice_spares_axis(an, node, a - (rank - (an.rank(src) or rank))):
            return False
        chain.append(node)
        if node.op_type == "Mul":
            src = _per_channel_factor(an, node, a - (rank - (an.rank(src) or rank)))
            if src is None:
                return False
        else:
            src = node.input[0]
    dims = list(an.model.initializers[src].dims)
    init_axis = a - (rank - len(dims))
    line = np.moveaxis(np.broadcast_to(ids, ids.shape), a, 0).reshape(ids.shape[a], -1)[:, 0]
    if init_axis < 0 or dims[init_axis] != len(line):
        return False
    an.member(src, init_axis, line, "out")
    for node in chain:  # every tensor on the way carries the channels; Expand targets get fixed
        out_rank = an.rank(node.output[0]) or rank
        an.set(node.output[0], Tracked((a - (rank - out_rank),), line, out_rank, True))
        if node.op_type == "Expand":
            an.fixups.append(ExpandTarget(node.name))
    return True


def _per_channel_factor(an: Analysis, node: onnx.NodeProto, axis: int) -> str | None:
    """The operand of Mul `node` that spans output axis `axis` when the other one does not
    (and carries no channels): LayerNorm's rsqrt(var)[B, T, 1] * gamma[C] as tf2onnx writes
    it. The product is 0 on a channel whose gamma entry is zeroed."""
    out_rank = an.rank(node.output[0])
    if out_rank is None or any(an.get(x) is not None for x in node.input):
        return None
    spans = []
    for x in node.input:
        shape = an.model.shape(x)
        if shape is None:
            return None
        k = axis - (out_rank - len(shape))
        spans.append(k >= 0 and shape[k] != 1)
    return node.input[spans.index(True)] if spans.count(True) == 1 else None


def _slice_spares_axis(an: Analysis, node: onnx.NodeProto, axis: int) -> bool:
    axes = const(an, node, 3) if len(node.input) > 3 and node.input[3] else None
    rank = an.rank(node.input[0])
    if rank is None:
        return False
    starts = const(an, node, 1)
    axes = list(range(len(starts))) if axes is None and starts is not None else axes
    return axes is not None and all((int(x) + rank if x < 0 else int(x)) != axis for x in np.asarray(axes).reshape(-1))


@rule("BatchNormalization", "InstanceNormalization")
def channel_norm(an: Analysis, node: onnx.NodeProto) -> None:
    """Per-channel norms (axis 1): scale and bias are sliced and zeroed with the channel,
    BatchNorm running statistics are sliced (state)."""
    t = an.get(node.input[0])
    if t is None:
        return
    if t.axes != (1,):
        stop(an, node, f"channels on axes {t.axes}, the norm works on axis 1")
        return
    for i in range(1, len(node.input)):
        if node.input[i]:
            an.weight_member(node.input[i], 0, t.ids, "state" if i >= 3 else "out")
    an.set(node.output[0], t.with_zero_ok(True))


@rule("LayerNormalization")
def layer_norm(an: Analysis, node: onnx.NodeProto) -> None:
    """LayerNorm over the channel axis (the transformer hidden size): scale and bias are
    sliced; physical pruning keeps the statistics over the ORIGINAL width (zero padding),
    which is exactly what the zeroed channels contribute."""
    t = an.get(node.input[0])
    if t is None:
        return
    axis = axis_of(node, -1, t.rank)
    if set(t.axes) & set(range(axis, t.rank)):
        if t.axes != (t.rank - 1,) or axis != t.rank - 1:
            stop(an, node, "normalises over several axes that carry channels")
            return
        if not t.zero_ok:  # the pruned statistics pad with zeros: the channels must be 0
            an.barrier(t.ids, f"a zeroed channel is not 0 where node '{node.name}' (LayerNormalization) "
                              "takes its statistics over the channels")
            an.set(node.output[0], t.with_zero_ok(False))
            return
        for i in (1, 2):
            if i < len(node.input) and node.input[i]:
                an.weight_member(node.input[i], 0, t.ids, "out")
        an.fixups.append(LayerNormWidth(node.name, width=len(t.ids)))
        an.set(node.output[0], t.with_zero_ok(True))
    else:
        has_bias = len(node.input) > 2 and bool(node.input[2])
        an.set(node.output[0], t.with_zero_ok(t.zero_ok and not has_bias))


@rule("GroupNormalization")
def group_norm(an: Analysis, node: onnx.NodeProto) -> None:
    stop(an, node, "group norm mixes the channels of a group")


@rule("QuantizeLinear", "DequantizeLinear")
def qdq(an: Analysis, node: onnx.NodeProto) -> None:
    """Transparent: Q(0) = zero point and DQ(zero point) = 0. Per-axis scales and zero
    points on the channel axis are sliced with the channels."""
    t = an.get(node.input[0])
    if t is None:
        return
    if len(t.axes) == 1:
        an.qdq_params_member(node, t.axes[0], t.ids, "out")
    an.set(node.output[0], t)
