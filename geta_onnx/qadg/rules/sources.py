"""Layers that create output channels (Conv, ConvTranspose, Gemm, MatMul with a weight,
embedding Gather) and layers that only consume them (LSTM / GRU inputs)."""
from __future__ import annotations

import numpy as np
import onnx

from ...graph.model import WEIGHT_THROUGH, weight_source
from ..analysis import Analysis
from ..fixups import ConvGroups
from . import rule
from .common import FIXED, Tracked, attr, const, stop

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def _consume(an: Analysis, node: onnx.NodeProto, x: str, axis: int, weight: str, w_axis: int) -> None:
    """Input channels of `x` on `axis` select slices `w_axis` of the weight ("in" members,
    zeroed with the group). A channel that is not 0 when its group is zeroed (a Sigmoid, a
    constant offset in between) is harmless here: the zeroed weight columns read nothing of
    it, so the layer computes what it computes with the channel removed. That needs weight
    columns the optimizer can zero: a float initializer, not integers behind a DQ."""
    t = an.get(x)
    if t is None:
        return
    if t.axes != (axis,):
        stop(an, node, f"input channels on axes {t.axes}, expected axis {axis}")
        return
    if not t.zero_ok and not _trainable(an, weight):
        an.barrier(t.ids, f"a zeroed channel is not 0 where node '{node.name}' ({node.op_type}) reads it "
                          "(an op with f(0) != 0, e.g. Sigmoid or a constant offset, lies in between)")
        return
    if not an.weight_member(weight, w_axis, t.ids, "in"):
        stop(an, node, f"weight '{weight}' is computed, not an initializer")


def _trainable(an: Analysis, name: str) -> bool:
    """A float initializer, possibly behind Identity / Transpose (what the bridge trains)."""
    root = _weight_root(an, name, through=("Identity", "Transpose"))
    return root is not None and an.model.initializers[root].data_type in FLOAT_TYPES


def _produce(an: Analysis, node: onnx.NodeProto, n: int, weight: str, w_axis: int) -> np.ndarray:
    ids = an.fresh(node, n)
    if not an.weight_member(weight, w_axis, ids, "out"):
        an.barrier(ids, f"node '{node.name}' ({node.op_type}): weight '{weight}' is computed, not an initializer")
    return ids


def _bias(an: Analysis, node: onnx.NodeProto, i: int, ids: np.ndarray) -> bool:
    """Member the bias input i (any shape whose only non-1 dim has len(ids)); False if a
    nonzero bias cannot be sliced (then a zeroed channel is not 0)."""
    if i >= len(node.input) or not node.input[i]:
        return True
    name = node.input[i]
    value = const(an, node, i)
    dims = list(an.model.initializers[name].dims) if value is not None else list(an.model.shape(name) or [])
    big = [a for a, d in enumerate(dims) if d != 1]
    if len(big) == 1 and dims[big[0]] == len(ids):
        if an.weight_member(name, big[0], ids, "out"):
            return True
    if value is not None and not np.any(value):
        return True
    return False


@rule("Conv")
def conv(an: Analysis, node: onnx.NodeProto) -> None:
    wshape = an.model.shape(node.input[1])
    if not wshape or not all(isinstance(d, int) for d in wshape):
        stop(an, node, "weight shape unknown")
        return
    out_channels, in_per_group = wshape[0], wshape[1]
    group = attr(node, "group", 1)
    ids = _produce(an, node, out_channels, node.input[1], 0)
    ok = _bias(an, node, 2, ids)
    if group == 1:
        _consume(an, node, node.input[0], 1, node.input[1], 1)
    else:
        _grouped(an, node, ids, group, in_per_group, out_channels // group)
    an.set(node.output[0], Tracked((1,), ids, len(wshape), ok))


def _grouped(an: Analysis, node: onnx.NodeProto, out_ids: np.ndarray, group: int, a: int, b: int) -> None:
    """Grouped / depthwise conv: conv group j ties its `a` input and `b` output channels;
    whole conv groups are removed and the `group` attribute shrinks. The input channels need
    not be 0 when zeroed: the conv group's own weights and bias are members, so its outputs
    are 0 whatever it reads."""
    t = an.get(node.input[0])
    if t is None or t.axes != (1,):
        an.barrier(out_ids, f"node '{node.name}' (grouped Conv): its input channels cannot be removed")
        if t is not None:
            stop(an, node, "grouped conv input channels cannot follow")
        return
    for j in range(group):
        block = np.concatenate([t.ids[j * a:(j + 1) * a], out_ids[j * b:(j + 1) * b]])
        an.union_along(block[None, :], 1, hint="conv_group" if a * b > 1 else None)
    an.fixups.append(ConvGroups(node.name, out_per_group=b))


@rule("ConvTranspose")
def conv_transpose(an: Analysis, node: onnx.NodeProto) -> None:
    wshape = an.model.shape(node.input[1])  # (C_in, C_out / group, k...)
    if not wshape or not all(isinstance(d, int) for d in wshape):
        stop(an, node, "weight shape unknown")
        return
    group = attr(node, "group", 1)
    out_channels = wshape[1] * group
    if group == 1:
        ids = _produce(an, node, out_channels, node.input[1], 1)
        _consume(an, node, node.input[0], 1, node.input[1], 0)
    else:
        ids = an.fresh(node, out_channels)
        t = an.get(node.input[0])
        if t is None or t.axes != (1,):  # as in _grouped: the group's weights zero its outputs
            an.barrier(ids, f"node '{node.name}' (grouped ConvTranspose): its input channels cannot be removed")
            stop(an, node, "grouped conv input channels cannot follow")
        else:
            a, b = wshape[0] // group, wshape[1]
            an.weight_member(node.input[1], 0, t.ids, "in")
            for j in range(group):
                an.union_along(np.concatenate([t.ids[j * a:(j + 1) * a], ids[j * b:(j + 1) * b]])[None], 1,
                               hint="conv_group")
            an.fixups.append(ConvGroups(node.name, out_per_group=b))
    ok = _bias(an, node, 2, ids)
    an.set(node.output[0], Tracked((1,), ids, len(wshape), ok))


def _is_weight(an: Analysis, name: str) -> bool:
    """An initializer, possibly behind DequantizeLinear / Identity / Cast / Transpose."""
    return _weight_root(an, name) is not None


def _weight_root(an: Analysis, name: str, through=WEIGHT_THROUGH) -> str | None:
    """The initializer `name` reads through a chain of `through` ops, or None."""
    return weight_source(an.model, name, through)


@rule("Gemm")
def gemm(an: Analysis, node: onnx.NodeProto) -> None:
    bshape = an.model.shape(node.input[1])
    if attr(node, "transA", 0) or not _is_weight(an, node.input[1]) or not bshape or len(bshape) != 2:
        stop(an, node, "only Gemm(x, W) with an initializer W is pruned")
        return
    trans_b = attr(node, "transB", 0)
    n = bshape[0] if trans_b else bshape[1]
    ids = _produce(an, node, n, node.input[1], 0 if trans_b else 1)
    ok = _bias(an, node, 2, ids)
    _consume(an, node, node.input[0], 1, node.input[1], 1 if trans_b else 0)
    an.set(node.output[0], Tracked((1,), ids, 2, ok))


@rule("MatMul")
def matmul(an: Analysis, node: onnx.NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    ra, rb = an.rank(a), an.rank(b)
    if ra is None or rb is None or ra < 2 or rb < 2:
        stop(an, node, "operand rank unknown or < 2")
        return
    if _is_weight(an, b) and rb == 2:  # x (..., K) @ W (K, N)
        ta = an.get(a)
        if ta is not None and ta.axes != (ra - 1,):
            stop(an, node, f"channels on axes {ta.axes} of the activation; only its last axis is supported")
            return
        n = an.model.shape(b)[1]
        ids = _produce(an, node, n, b, 1)
        _consume(an, node, a, ra - 1, b, 0)
        an.set(node.output[0], Tracked((ra - 1,), ids, ra, True))
    elif _is_weight(an, a) and ra == 2:  # W (M, K) @ x (..., K, N)
        tb = an.get(b)
        if tb is not None and tb.axes != (rb - 2,):
            stop(an, node, f"channels on axes {tb.axes} of the activation; only axis -2 is supported")
            return
        ids = _produce(an, node, an.model.shape(a)[0], a, 0)
        _consume(an, node, b, rb - 2, a, 1)
        an.set(node.output[0], Tracked((rb - 2,), ids, rb, True))
    else:
        _activation_matmul(an, node, ra, rb)


def _activation_matmul(an: Analysis, node: onnx.NodeProto, ra: int, rb: int) -> None:
    """A (..., M, K) @ B (..., K, N), both activations (attention). Channels on the
    contracted K axis are tied pairwise (Q and K head dims) and merged into whole heads;
    batch axes (heads) are tied across the operands."""
    ta, tb = an.get(node.input[0]), an.get(node.input[1])
    if ta is None and tb is None:
        return
    r = max(ra, rb)
    fa = None if ta is None else ta.full().reshape((1,) * (r - ra) + ta.full().shape)
    fb = None if tb is None else tb.full().reshape((1,) * (r - rb) + tb.full().shape)
    if fa is not None and fb is not None and fa.shape[-2] > 1 and fb.shape[-1] > 1:
        stop(an, node, "channels on both the row axis of A and the column axis of B")
        return
    k_a = fa is not None and fa.shape[-1] > 1
    k_b = fb is not None and fb.shape[-2] > 1
    if k_a != k_b:
        stop(an, node, "a channel axis is contracted with an untracked tensor")
        return
    if k_a:
        an.union_arrays(fa, np.swapaxes(fb, -1, -2), f"node '{node.name}' (MatMul) ties channels")
        fa = an.union_along(fa, fa.ndim - 1, hint="head")[..., None]  # (..., M, 1)
        fb = an.union_along(fb, fb.ndim - 2, hint="head")[..., None, :]  # (..., 1, N)
    parts = [f for f in (fa, fb) if f is not None]
    if len(parts) == 2:
        an.union_arrays(parts[0], parts[1], f"node '{node.name}' (MatMul) ties head axes")
    out_axes: set[int] = set()
    if ta is not None:  # A's K axis (last) is contracted away
        out_axes |= {x + r - ra for x in ta.axes} - {r - 1}
    if tb is not None:  # B's K axis (second to last) is contracted away
        out_axes |= {x + r - rb for x in tb.axes} - {r - 2}
    if not out_axes:
        return
    full = parts[0] if len(parts) == 1 else _pick(parts[0], parts[1])
    index = tuple(slice(None) if i in out_axes else 0 for i in range(r))
    ok = any(t is not None and t.zero_ok for t in (ta, tb))  # a zero operand zeroes the product
    an.set(node.output[0], Tracked(tuple(sorted(out_axes)), np.ascontiguousarray(full[index]), r, ok))


def _pick(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """After a union, either operand's ids name the same groups: broadcast the pair and
    take ids from whichever is tracked at each position."""
    a, b = np.broadcast_arrays(fa, fb)
    return np.where(a != FIXED, a, b)


@rule("Gather")
def gather(an: Analysis, node: onnx.NodeProto) -> None:
    data, idx = node.input[0], node.input[1]
    axis = attr(node, "axis", 0)
    dims = an.model.shape(data)
    if an.model.is_initializer(data) and axis == 0 and dims and len(dims) == 2:  # embedding table (V, H)
        ids = an.fresh(node, dims[1])
        an.member(data, 1, ids, "out")
        ri = an.rank(idx)
        if ri is None:
            an.barrier(ids, f"node '{node.name}' (Gather): index rank unknown")
            return
        an.set(node.output[0], Tracked((ri,), ids, ri + 1, True))
        return
    t = an.get(data)
    if t is None:
        return
    rank, ri = t.rank, an.rank(idx)
    axis = axis + rank if axis < 0 else axis
    if ri is None:
        stop(an, node, "index rank unknown")
        return
    if axis in t.axes:
        _select(an, node, t, axis, const(an, node, 1))
        return
    axes = tuple(a if a < axis else a - 1 + ri for a in t.axes)
    an.set(node.output[0], Tracked(axes, t.ids, rank - 1 + ri, t.zero_ok))


def _select(an: Analysis, node: onnx.NodeProto, t: Tracked, axis: int, index) -> None:
    """Gather of constant positions along a channel axis that is tied to another one, e.g.
    q / k / v = Gather(reshape(in_proj(x), (..., 3, E)), 0 / 1 / 2) of nn.MultiheadAttention:
    whole rows along the OTHER axis are pruned, so the gathered axis never shrinks."""
    if index is None or len(t.axes) < 2 or np.ndim(index) > 1:
        stop(an, node, "gathers single channels along a channel axis")
        return
    k = t.axes.index(axis)
    an.union_along(t.ids, k)  # q[e], k[e], v[e] share one reshape: they go together
    picked = np.take(t.ids, np.asarray(index), axis=k)
    if np.ndim(index) == 0:  # the axis disappears
        axes = tuple(a if a < axis else a - 1 for a in t.axes if a != axis)
        an.set(node.output[0], Tracked(axes, np.ascontiguousarray(picked), t.rank - 1, t.zero_ok))
    else:
        an.set(node.output[0], Tracked(t.axes, np.ascontiguousarray(picked), t.rank, t.zero_ok))


@rule("LSTM", "GRU")
def recurrent(an: Analysis, node: onnx.NodeProto) -> None:
    """Input features of the first recurrent layer are pruned (W's last axis); its hidden
    units are not (gates would need a rule of their own)."""
    _consume(an, node, node.input[0], 2, node.input[1], 2)  # X (seq, batch, in) or (batch, seq, in)
