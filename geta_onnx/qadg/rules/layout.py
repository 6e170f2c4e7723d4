"""Ops that move channels between axes or select parts of them: Reshape / Flatten,
Transpose, Squeeze / Unsqueeze, Concat, Split, Slice, Expand, Tile, Pad, Resize,
pooling, reductions, Softmax."""
from __future__ import annotations

import numpy as np
import onnx

from ..analysis import Analysis
from ..fixups import ExpandTarget, ReshapeTarget, ShapeRead, SliceBounds, SplitSizes
from . import rule
from .common import FIXED, Tracked, attr, axis_of, broadcast_full, const, passthrough, stop
from .elementwise import _untracked_operand


def _ints(an: Analysis, node: onnx.NodeProto, i: int, attr_name: str | None = None):
    """Axes / sizes given as a constant input i, or (older opsets) as attribute."""
    if i < len(node.input) and node.input[i]:
        v = const(an, node, i)
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
    return attr(node, attr_name) if attr_name else None


# ---- reshape --------------------------------------------------------------------------
def _blocks(src: tuple, dst: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into contiguous blocks of source and target axes with equal
    products ((C, H, W) -> (C*H*W) is one block). Two symbolic dims facing each other are
    paired (symbolic inference often renames the batch dim); channel blocks only ever
    rely on integer products, so a wrong pairing can only make a block fail to match."""
    blocks, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        if i < len(src) and j < len(dst) and (src[i] == dst[j] or (
                not isinstance(src[i], int) and not isinstance(dst[j], int))):
            blocks.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if i < len(src) and src[i] == 1:
            blocks.append(([i], []))
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= len(src) or j >= len(dst) or not isinstance(src[i], int) or not isinstance(dst[j], int):
            return None
        bi, bj, pi, pj = [i], [j], src[i], dst[j]
        while pi != pj:
            if pi < pj:
                i += 1
                if i >= len(src) or not isinstance(src[i], int):
                    return None
                bi.append(i)
                pi *= src[i]
            else:
                j += 1
                if j >= len(dst) or not isinstance(dst[j], int):
                    return None
                bj.append(j)
                pj *= dst[j]
        blocks.append((bi, bj))
        i, j = i + 1, j + 1
    return blocks


def _per_sample(shape) -> tuple | None:
    """Dims with every symbol set to 1 ('4*batch' -> 4): channel ids are tracked per
    sample, so a head axis merged with the batch dim (nn.MultiheadAttention) keeps its
    period. None when a dim is unknown."""
    if shape is None:
        return None
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, str):
            value = _eval_symbolic(d)
            if value is None:
                return None
            out.append(value)
        else:
            return None
    return tuple(out)


def _solve_fresh_symbol(src, dst):
    """Symbolic inference sometimes names a merged dim anew ('unk__3' for batch*heads).
    When exactly one dim on one side uses symbols the other side lacks, solve it from
    the element count per sample."""
    if src is None or dst is None:
        return src, dst
    solved_dst = _solve_one(src, dst)
    if solved_dst is not None:
        return src, solved_dst
    solved_src = _solve_one(dst, src)
    return (solved_src if solved_src is not None else src), dst


def _sym(expr: str):
    """A dim expression ('batch*4', 'N', 'H') as sympy, every name a plain Symbol: bare
    sympify reads N, S, E, I, Q, O, beta ... as sympy's own functions and constants (a model
    with dims named N / H / W then crashed the analysis)."""
    import re

    import sympy

    names = {n: sympy.Symbol(n) for n in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", expr)}
    return sympy.sympify(expr, locals=names)


def _solve_one(known_side, side):
    import sympy

    def symbols(d):
        try:
            return _sym(d).free_symbols if isinstance(d, str) else set()
        except (sympy.SympifyError, TypeError, ValueError, AttributeError, SyntaxError):
            return {sympy.Symbol(str(d))}

    known = set().union(*(symbols(d) for d in known_side))
    fresh = [j for j, d in enumerate(side) if isinstance(d, str) and not symbols(d) <= known]
    per_known = _per_sample(known_side)
    others = _per_sample([d for j, d in enumerate(side) if j not in fresh])
    if len(fresh) != 1 or per_known is None or others is None:
        return None
    total, rest = int(np.prod(per_known)), int(np.prod(others))
    if not rest or total % rest:
        return None
    side = list(side)
    side[fresh[0]] = total // rest
    return tuple(side)


def _eval_symbolic(expr: str) -> int | None:
    import sympy

    try:
        e = _sym(expr)
        value = e.subs({s: 1 for s in e.free_symbols})
        return int(value) if value.is_integer and int(value) >= 1 else None
    except (sympy.SympifyError, TypeError, ValueError, AttributeError, SyntaxError):
        return None


@rule("Reshape", "Flatten")
def reshape(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    src, dst = an.model.shape(node.input[0]), an.model.shape(node.output[0])
    blocks = None if src is None or dst is None else _blocks(tuple(src), tuple(dst))
    if blocks is None or any(not isinstance(src[a], int) for bi, _ in blocks for a in bi if a in t.axes):
        solved = _solve_fresh_symbol(src, dst)
        src, dst = _per_sample(solved[0]), _per_sample(solved[1])
        blocks = None if src is None or dst is None else _blocks(src, dst)
        if blocks is None:  # measure instead: run the model once at batch 1
            src, dst = an.probed_shape(node.input[0]), an.probed_shape(node.output[0])
            blocks = None if src is None or dst is None else _blocks(src, dst)
    if blocks is None:
        stop(an, node, "cannot map the channel axes through this reshape (shapes unknown or symbolic)")
        return
    in_shape, out_shape, out_axes = [1] * len(src), [1] * len(dst), []
    for bi, bj in blocks:
        if any(a in t.axes for a in bi):
            if not all(isinstance(src[a], int) for a in bi) or not all(isinstance(dst[b], int) for b in bj):
                stop(an, node, "a channel axis is merged with a symbolic dimension")
                return
            for a in bi:
                in_shape[a] = src[a]
            for b in bj:
                out_shape[b] = dst[b]
            out_axes.extend(bj)
    if len(dst) > 0 and np.prod(in_shape) > 1 << 24:
        stop(an, node, "channel block too large to track")
        return
    full = np.broadcast_to(t.full(), in_shape).reshape(out_shape)
    if not out_axes:
        stop(an, node, "channel axis disappears")
        return
    index = tuple(slice(None) if a in out_axes else 0 for a in range(len(dst)))
    ids = np.ascontiguousarray(full[index])  # (C,) -> (C*H*W,) repeats; (H*D,) -> (H, D) splits
    axes, ids = _drop_constant_axes(sorted(out_axes), ids)
    an.set(node.output[0], Tracked(tuple(axes), ids, len(dst), t.zero_ok))
    if node.op_type == "Reshape":
        an.fixups.append(ReshapeTarget(node.name))


def _drop_constant_axes(axes: list[int], ids: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Stop tracking the axes along which the channel id never changes: folding time steps
    into features ((T, C) -> (T/4, 4*C), a JAX / TF "patch" reshape) leaves the outer T/4
    axis with the same ids in every row. Pruning removes nothing along such an axis, and
    tracking it would make a per-time-step constant (a LayerNorm scale over T) look like a
    per-channel weight and tie every channel together."""
    while len(axes) > 1:
        for k in range(len(axes)):
            if ids.shape[k] > 1 and not np.all(ids == np.take(ids, [0], axis=k)):
                continue
            axes = axes[:k] + axes[k + 1:]
            ids = np.ascontiguousarray(np.take(ids, 0, axis=k))
            break
        else:
            break
    return axes, ids


@rule("Transpose")
def transpose(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    perm = attr(node, "perm", list(reversed(range(t.rank))))
    new_axes = sorted(perm.index(a) for a in t.axes)
    order = [t.axes.index(perm[b]) for b in new_axes]  # ids axis for each new tracked axis
    an.set(node.output[0], Tracked(tuple(new_axes), np.ascontiguousarray(t.ids.transpose(order)), t.rank, t.zero_ok))


@rule("Squeeze")
def squeeze(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    axes = _ints(an, node, 1, "axes")
    if axes is None:
        shape = an.model.shape(node.input[0]) or ()
        axes = [a for a, d in enumerate(shape) if d == 1]
    axes = [a + t.rank if a < 0 else a for a in axes]
    if set(axes) & set(t.axes):
        stop(an, node, "squeezes a channel axis")
        return
    new = tuple(a - sum(1 for s in axes if s < a) for a in t.axes)
    an.set(node.output[0], Tracked(new, t.ids, t.rank - len(axes), t.zero_ok))


@rule("Unsqueeze")
def unsqueeze(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    axes = _ints(an, node, 1, "axes")
    if axes is None:
        stop(an, node, "axes not constant")
        return
    out_rank = t.rank + len(axes)
    inserted = sorted(a + out_rank if a < 0 else a for a in axes)
    kept = [a for a in range(out_rank) if a not in inserted]  # kept[i] = new position of input axis i
    an.set(node.output[0], Tracked(tuple(kept[a] for a in t.axes), t.ids, out_rank, t.zero_ok))


# ---- stacking and selecting ------------------------------------------------------------
@rule("Concat")
def concat(an: Analysis, node: onnx.NodeProto) -> None:
    inputs = [x for x in node.input if x]
    tracked = [an.get(x) for x in inputs]
    if all(t is None for t in tracked):
        return
    rank = next(t.rank for t in tracked if t is not None)
    axis = axis_of(node, 0, rank)
    if any(t is not None and axis in t.axes for t in tracked):
        if any(t is not None and t.axes != (axis,) for t in tracked):
            stop(an, node, "channels on the concat axis and on other axes")
            return
        parts = []
        for x, t in zip(inputs, tracked):
            n = (an.model.shape(x) or [None] * rank)[axis]
            if t is not None:
                parts.append(t.ids)
            elif isinstance(n, int):
                parts.append(np.full(n, FIXED, dtype=np.int64))  # channels nobody owns stay
            else:
                stop(an, node, f"size of '{x}' on the concat axis unknown")
                return
        ok = all(t.zero_ok for t in tracked if t is not None)
        an.set(node.output[0], Tracked((axis,), np.concatenate(parts), rank, ok))
        return
    # concat along another axis (tokens, time): channels are tied position by position
    fulls = broadcast_full(an, inputs, rank)
    live = [f for f in fulls if f is not None]
    ids = live[0]
    for f in live[1:]:
        an.union_arrays(ids, f, f"node '{node.name}' (Concat) ties channels")
    axes = sorted({a for t in tracked if t is not None for a in t.axes})
    zero = [t.zero_ok if t is not None else _untracked_operand(an, node, x, axes, ids, rank)
            for x, t in zip(inputs, tracked)]
    index = tuple(slice(None) if a in axes else 0 for a in range(rank))
    an.set(node.output[0], Tracked(tuple(axes), np.ascontiguousarray(ids[index]), rank, all(zero)))


@rule("Split")
def split(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    axis = axis_of(node, 0, t.rank)
    if axis not in t.axes:
        for o in node.output:
            an.set(o, t)
        return
    if t.axes != (axis,):
        stop(an, node, "splits a channel axis that is tied to another axis")
        return
    sizes = _ints(an, node, 1, "split")
    n = len(t.ids)
    if sizes is None:
        k = len(node.output)
        sizes = [-(-n // k)] * (k - 1) + [n - (k - 1) * -(-n // k)]
    if sum(sizes) != n:
        stop(an, node, "split sizes unknown")
        return
    bounds = np.cumsum([0] + sizes)
    parts = []
    for o, b, e in zip(node.output, bounds[:-1], bounds[1:]):
        an.set(o, Tracked((axis,), t.ids[b:e], t.rank, t.zero_ok))
        parts.append((int(b), int(e)))
    an.fixups.append(SplitSizes(node.name, parts=tuple(parts)))


@rule("Slice")
def slice_(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    if len(node.input) > 1:
        starts, ends = _ints(an, node, 1), _ints(an, node, 2)
        axes = _ints(an, node, 3) if len(node.input) > 3 and node.input[3] else None
        steps = _ints(an, node, 4) if len(node.input) > 4 and node.input[4] else None
    else:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    if starts is None or ends is None:
        stop(an, node, "slice bounds are not constant")
        return
    axes = [a + t.rank if a < 0 else a for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    ids = t.ids
    for a, s, e, st in zip(axes, starts, ends, steps):
        if a not in t.axes:
            continue
        if st != 1 or len(t.axes) != 1:
            stop(an, node, "strided slice of a channel axis")
            return
        n = len(t.ids)
        b, e2, _ = slice(s, e, 1).indices(n)
        ids = t.ids[b:e2]
        an.fixups.append(SliceBounds(node.name, axis=int(a), begin=int(b), end=int(e2)))
    an.set(node.output[0], Tracked(t.axes, ids, t.rank, t.zero_ok))


@rule("Expand")
def expand(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    out_rank = an.rank(node.output[0])
    if out_rank is None:
        stop(an, node, "output rank unknown")
        return
    shift = out_rank - t.rank
    an.set(node.output[0], Tracked(tuple(a + shift for a in t.axes), t.ids, out_rank, t.zero_ok))
    an.fixups.append(ExpandTarget(node.name))


@rule("Tile")
def tile(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    reps = _ints(an, node, 1)
    if reps is None or any(reps[a] != 1 for a in t.axes):
        stop(an, node, "tiles a channel axis")
        return
    passthrough(an, node)


@rule("Pad")
def pad(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    pads = _ints(an, node, 1, "pads")
    axes = _ints(an, node, 3) if len(node.input) > 3 and node.input[3] else list(range(t.rank))
    if pads is None:
        stop(an, node, "pads not constant")
        return
    axes = [a + t.rank if a < 0 else a for a in axes]
    n = len(axes)
    if any(pads[k] or pads[k + n] for k, a in enumerate(axes) if a in t.axes):
        stop(an, node, "pads a channel axis")
        return
    mode = attr(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = const(an, node, 2) if len(node.input) > 2 and node.input[2] else np.array(attr(node, "value", 0.0))
    ok = mode != "constant" or (value is not None and not np.any(value))
    passthrough(an, node, zero_ok=ok)


@rule("Resize", "Upsample")
def resize(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    out = an.model.shape(node.output[0])
    src = an.model.shape(node.input[0])
    if out is None or src is None or any(out[a] != src[a] for a in t.axes):
        stop(an, node, "resizes a channel axis (or its output shape is unknown)")
        return
    passthrough(an, node)


@rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
def pool(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    if any(a >= 2 for a in t.axes) or 0 in t.axes:
        stop(an, node, "pools over a channel axis")
        return
    an.set(node.output[0], t)


REDUCE_ZERO = {"ReduceMean": True, "ReduceSum": True, "ReduceMax": True, "ReduceMin": True, "ReduceProd": True,
               "ReduceL1": True, "ReduceL2": True, "ReduceSumSquare": True, "ReduceLogSumExp": False,
               "ReduceLogSum": False}


# Reductions over every channel axis that a zeroed channel does not change: it adds 0 to a
# sum (of values, of squares, of magnitudes), so the sum over the kept channels is the
# same number. The output carries no channel, and the group ends there (a decomposed
# LayerNorm's E[x] and E[x^2] with a constant 1/C, as tf2onnx writes it). ReduceMean is
# not one: its divisor would shrink with the channels.
CHANNEL_SINKS = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2")


@rule(*REDUCE_ZERO)
def reduce(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    axes = _ints(an, node, 1, "axes")
    if len(node.input) < 2 and axes is None:
        axes = attr(node, "axes")
    if axes is None or (not axes and attr(node, "noop_with_empty_axes", 0) == 0):
        axes = list(range(t.rank))
    axes = sorted(a + t.rank if a < 0 else a for a in axes)
    keep = attr(node, "keepdims", 1)
    reduced_tracked = [a for a in t.axes if a in axes]
    ids, tracked_axes = t.ids, list(t.axes)
    if reduced_tracked:
        if len(reduced_tracked) == len(t.axes):
            if t.zero_ok and node.op_type in CHANNEL_SINKS:
                return  # the channels end here: see CHANNEL_SINKS
            stop(an, node, "reduces over the channel axis (mixes channels)" if t.zero_ok or node.op_type
                 not in CHANNEL_SINKS else "sums over the channel axis where a zeroed channel is not 0")
            return
        for a in sorted(reduced_tracked, reverse=True):  # whole heads: (H, D) reduced over D
            ids = an.union_along(ids, tracked_axes.index(a), hint="head")
            tracked_axes.remove(a)
    if keep:
        new_axes = tracked_axes
    else:
        new_axes = [a - sum(1 for r in axes if r < a) for a in tracked_axes]
    ok = t.zero_ok and REDUCE_ZERO[node.op_type]
    an.set(node.output[0], Tracked(tuple(new_axes), ids, t.rank if keep else t.rank - len(axes), ok))


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    opset = an.model.opset("")
    axis = axis_of(node, -1 if opset >= 13 else 1, t.rank)
    normalised = {axis} if opset >= 13 else set(range(axis, t.rank))
    if normalised & set(t.axes):
        stop(an, node, "normalises over a channel axis")
        return
    passthrough(an, node, zero_ok=False)


@rule("Shape")
def shape_of(an: Analysis, node: onnx.NodeProto) -> None:
    """Shape(x) of a tensor with channels keeps reporting the ORIGINAL widths after
    pruning (prune/ rewrites it), so every shape computation downstream (head_dim =
    width / heads, a 1/sqrt(d) scale) sees the values the unpruned model saw. The
    Reshape / Expand entries of channel axes are then set to the pruned sizes; a tensor
    built at an original width that meets pruned channels is caught as a barrier by the
    elementwise rules."""
    if an.get(node.input[0]) is not None:
        an.fixups.append(ShapeRead(node.name))


@rule("Size")
def size_of(an: Analysis, node: onnx.NodeProto) -> None:
    if an.get(node.input[0]) is not None:
        stop(an, node, "the element count of a tensor with channels")


@rule("CumSum")
def cumsum(an: Analysis, node: onnx.NodeProto) -> None:
    t = an.get(node.input[0])
    if t is None:
        return
    axis = _ints(an, node, 1)
    if axis is None or (axis[0] + t.rank if axis[0] < 0 else axis[0]) in t.axes:
        stop(an, node, "cumulative sum over a channel axis")
        return
    passthrough(an, node)
