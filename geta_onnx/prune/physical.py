"""Remove pruning groups from an ONNX graph: slice initializers (weights, biases, norm
parameters and running statistics, per-channel Q/DQ scales) and fix every node whose
constants depend on the pruned sizes (Reshape / Expand targets, Split sizes, Slice
bounds, the `group` of grouped convolutions, LayerNorm widths). The input model is not
modified; a new ModelProto is returned, edited through graph.editor.GraphEditor (nodes that
nothing reads any more and replaced initializers are dropped).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx

from ..errors import GetaError
from ..graph.editor import GraphEditor, Node, Tensor
from ..graph.model import OnnxModel, attr
from ..qadg.analysis import QADG
from ..qadg.fixups import (ConvGroups, ExpandTarget, Fixup, LayerNormWidth, ReshapeTarget, ShapeRead, SliceBounds,
                            SplitSizes)
from ..qadg.ids import FIXED, Tracked


def zeroed_groups(qadg: QADG, values: dict[str, np.ndarray], atol: float = 0.0) -> set[int]:
    """Prunable groups whose every trainable member slice is exactly zero (|x| <= atol)."""
    out = set()
    for g in qadg.prunable:
        live = [m for m in g.members if m.role != "state" and m.tensor in values]
        if live and all(np.all(np.abs(np.take(values[m.tensor], m.indices, axis=m.axis)) <= atol) for m in live):
            out.add(g.id)
    return out


def prune_model(qadg: QADG, remove: Iterable[int], values: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A new model without the groups in `remove` (group ids). `values` optionally gives
    new initializer values (trained weights) by name before slicing."""
    remove = set(remove)
    model = qadg.model
    for gid in remove:
        g = qadg.group(gid)
        if not g.prunable:
            raise GetaError(f"group {gid} is not prunable: {g.reason}")
    cut: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for gid in remove:
        for m in qadg.group(gid).members:
            cut[m.tensor][m.axis].update(m.indices)

    rewriter = _Rewriter(model, qadg, remove)
    for name in sorted(set(cut) | set(values or {})):
        if not rewriter.ed.is_const(name):  # an initializer nothing reads: dropped by finish
            continue
        original = model.array(name)
        arr = np.asarray(values[name] if values is not None and name in values else original)
        arr = arr.astype(original.dtype, copy=False)
        for axis, idx in cut.get(name, {}).items():
            arr = np.delete(arr, sorted(idx), axis=axis)
        rewriter.ed.set_const(name, arr)
    for fix in qadg.fixups:
        rewriter.apply(fix)
    out = rewriter.ed.finish(label=model.label)
    onnx.checker.check_model(out)
    return out


class _Rewriter:
    """Applies the fixups of one pruning to a GraphEditor of the model. Shapes, channel ids and
    the readers of a tensor come from the original model and its QADG (`model`, `qadg`); the
    edits go to `ed`."""

    def __init__(self, model: OnnxModel, qadg: QADG, remove: set[int]):
        self.model, self.qadg, self.remove = model, qadg, remove
        self.ed = GraphEditor(model.proto)
        self.nodes = self.ed.nodes_by_name()
        self.removed = np.array(sorted(remove), dtype=np.int64)

    # ---- helpers ----------------------------------------------------------------------
    def kept_mask(self, t: Tracked) -> np.ndarray:
        return ~np.isin(t.ids, self.removed) | (t.ids == FIXED)

    def kept_sizes(self, tensor: str) -> dict[int, int]:
        """New size of each channel axis of `tensor` (heads keep whole: a product mask)."""
        t = self.qadg.tracked.get(tensor)
        if t is None:
            return {}
        mask = self.kept_mask(t)
        sizes = {}
        outer = np.ones((), dtype=bool)
        for k, axis in enumerate(t.axes):
            others = tuple(i for i in range(mask.ndim) if i != k)
            along = np.any(mask, axis=others) if others else mask
            sizes[axis] = int(along.sum())
            outer = np.multiply.outer(outer, along) if outer.ndim else along
        if mask.ndim > 1 and not np.array_equal(outer.reshape(mask.shape), mask):
            raise GetaError(f"tensor '{tensor}': the removed channels do not form whole blocks "
                            "(e.g. part of an attention head); this is a bug in the group analysis")
        return sizes

    def set_const_input(self, node: Node, i: int, value: np.ndarray, suffix: str) -> None:
        """Point input i of `node` at a new initializer (shared constants stay untouched)."""
        self.ed.set_input(node, i, self.ed.add_const(f"{node.name}__pruned_{suffix}", value))

    # ---- fixups -----------------------------------------------------------------------
    def apply(self, fix: Fixup) -> None:
        rewrite = REWRITES.get(type(fix))
        if rewrite is None:
            raise GetaError(f"node '{fix.node}': no pruning rewrite for {type(fix).__name__}; add one to "
                            "prune.physical.REWRITES")
        getattr(self, rewrite)(self.nodes[fix.node], fix)

    def _fix_reshape(self, node: Node, fix: ReshapeTarget) -> None:
        self._rewrite_target(node, literal_above=0)  # 0 (copy) and -1 (infer) entries stay

    def _fix_expand(self, node: Node, fix: ExpandTarget) -> None:
        self._rewrite_target(node, literal_above=1)  # 1 (broadcast) entries stay

    def _rewrite_target(self, node: Node, literal_above: int) -> None:
        """Set the channel-axis entries of a Reshape / Expand target (input 1) to the
        pruned sizes: a constant target is rewritten, a run-time one patched."""
        out = node.outputs[0].name
        sizes = self.kept_sizes(out)
        old = self.model.shape(out) or self._shape_from_target(node)
        target = self.ed.input_const(node, 1)
        if target is None and sizes and self.remove:
            # computed at run time: it may read a pruned width elsewhere (Shape(x)[2])
            self.patch_runtime_shape(node, 1, sizes, tuple(old))
            return
        if target is None or not sizes or all(old[a] == n for a, n in sizes.items()):
            return
        new = np.array(target, dtype=np.int64).copy()
        offset = len(old) - len(new)  # Expand broadcasts right-aligned; a Reshape target has full rank
        for a, n in sizes.items():
            if a - offset >= 0 and new[a - offset] > literal_above:
                new[a - offset] = n
        if not np.array_equal(new, target):
            self.set_const_input(node, 1, new, "shape")

    def _shape_from_target(self, node: Node) -> tuple | None:
        """The output dims of a Reshape / Expand that shape inference left unknown: the rank
        from the target's length, the channel axes' widths from the QADG, the rest unknown."""
        target_shape = self.model.shape(node.inputs[1].name)
        if not target_shape or not isinstance(target_shape[0], int):
            return None
        t = self.qadg.tracked.get(node.outputs[0].name)
        dims: list = [None] * target_shape[0]
        if t is not None:
            for k, a in enumerate(t.axes):
                if a < len(dims):
                    dims[a] = int(t.ids.shape[k])
        return tuple(dims)

    def patch_runtime_shape(self, node: Node, i: int, sizes: dict[int, int], old: tuple) -> None:
        """A Reshape / Expand target computed at run time: set the entries of channel axes
        to their pruned sizes. Static axes get the size; an axis merged with the batch
        ('4*batch' of nn.MultiheadAttention) is scaled by kept period / period."""
        t = self.qadg.tracked[node.outputs[0].name]
        static, scale = {}, {}
        for a, n in sizes.items():
            if isinstance(old[a], int):
                if n != old[a]:
                    static[a] = n
            elif n != (period := t.ids.shape[t.axes.index(a)]):
                scale[a] = (period, n)
        if not static and not scale:  # this Reshape's channel axes kept every channel
            return
        src, dst = node.inputs[i], self.ed.variable(f"{node.name}__pruned_shape")
        node.inputs[i] = dst
        self.rewrite_shape(src, dst, len(old), static, scale)

    def rewrite_shape(self, src: Tensor, dst: Tensor, rank: int, static: dict[int, int],
                      scale: dict[int, tuple[int, int]]) -> None:
        """dst = src with entries `static` replaced and entries `scale` multiplied by
        num / den; -1 (infer) and 0 (copy) entries stay as they are."""
        keep, new = np.ones(rank, dtype=np.int64), np.zeros(rank, dtype=np.int64)
        den, num = np.ones(rank, dtype=np.int64), np.ones(rank, dtype=np.int64)
        for a, n in static.items():
            keep[a], new[a] = 0, n
        for a, (d, n) in scale.items():
            den[a], num[a] = d, n
        ed, base = self.ed, dst.name
        # static entries only: dst = src * keep + new (2 nodes; these run on every inference and
        # cost tens of microseconds each in onnxruntime). Scaled entries also need
        # where(src < 1, src, src / den * num), so -1 / 0 survive
        if scale:
            per = ed.add_node("Div", [src, ed.add_const(f"{base}_den", den)], f"{base}_div")
            scaled = ed.add_node("Mul", [per, ed.add_const(f"{base}_num", num)], f"{base}_scale")
            special = ed.add_node("Less", [src, ed.add_const(f"{base}_one", np.ones(1, np.int64))], f"{base}_less")
            src = ed.add_node("Where", [special, src, scaled], f"{base}_where")
        kept = ed.add_node("Mul", [src, ed.add_const(f"{base}_keep", keep)], f"{base}_mul")
        ed.add_node("Add", [kept, ed.add_const(f"{base}_new", new)], f"{base}_add", output=dst)

    def _fix_shape(self, node: Node, fix: ShapeRead) -> None:
        """Shape(x) keeps reporting x's original channel widths (see qadg rule `shape_of`)."""
        x = node.inputs[0].name
        sizes = self.kept_sizes(x)
        t = self.qadg.tracked[x]
        old = self.model.shape(x)
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        positions = list(range(t.rank))[slice(start, end)]
        static, scale = {}, {}
        for k, a in enumerate(positions):
            if a in sizes and isinstance(old[a], int) and sizes[a] != old[a]:
                static[k] = old[a]
            elif a in sizes and not isinstance(old[a], int):
                period = t.ids.shape[t.axes.index(a)]
                if sizes[a] != period:
                    scale[k] = (sizes[a], period)
        out = node.outputs[0]
        if not static and not scale or self._reads_only(out.name, set(static) | set(scale), len(positions)):
            return
        raw = self.ed.variable(f"{out.name}__pruned")
        node.outputs[0] = raw
        self.rewrite_shape(raw, out, len(positions), static, scale)

    def _reads_only(self, shape: str, changed: set[int], rank: int) -> bool:
        """Every reader of the Shape output `shape` is a Gather of constant positions outside
        `changed` (BERT's Shape(x)[0] / [1]: batch and sequence, never the pruned width), so
        it needs no rewrite."""
        if shape in self.model.output_names:
            return False
        for reader, i in self.model.consumers(shape):
            index = self.ed.input_const(self.nodes[reader.name], 1) if reader.op_type == "Gather" and i == 0 else None
            if index is None or (attr(reader, "axis") or 0) != 0:
                return False
            if {int(k) % rank for k in np.ravel(index)} & changed:
                return False
        return True

    def _fix_split(self, node: Node, fix: SplitSizes) -> None:
        t = self.qadg.tracked[node.inputs[0].name]
        mask = self.kept_mask(t)
        sizes = [int(mask[b:e].sum()) for b, e in fix.parts]
        if sizes == [e - b for b, e in fix.parts]:
            return
        if any(s == 0 for s in sizes):
            raise GetaError(f"Split '{node.name}': pruning would leave an empty output")
        if self.model.opset("") >= 13:
            self.set_const_input(node, 1, np.array(sizes, dtype=np.int64), "split")
            node.attrs.pop("num_outputs", None)
        else:
            node.attrs["split"] = sizes

    def _fix_slice(self, node: Node, fix: SliceBounds) -> None:
        t = self.qadg.tracked[node.inputs[0].name]
        mask = self.kept_mask(t)
        b, e, axis = fix.begin, fix.end, fix.axis
        nb, ne = int(mask[:b].sum()), int(mask[:e].sum())
        if (nb, ne) == (b, e):
            return
        if len(node.inputs) > 1:
            axes = self.ed.input_const(node, 3)
            starts, ends = self.ed.input_const(node, 1), self.ed.input_const(node, 2)
            rank = t.rank
            axes = list(range(len(starts))) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
            k = axes.index(axis)
            starts, ends = np.array(starts).copy(), np.array(ends).copy()
            starts[k], ends[k] = nb, ne
            self.set_const_input(node, 1, starts, "starts")
            self.set_const_input(node, 2, ends, "ends")
        else:
            axes = list(node.attrs.get("axes") or range(len(node.attrs["starts"])))
            k = axes.index(axis)
            starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
            starts[k], ends[k] = nb, ne
            node.attrs["starts"], node.attrs["ends"] = starts, ends

    def _fix_conv_group(self, node: Node, fix: ConvGroups) -> None:
        kept = self.kept_sizes(node.outputs[0].name).get(1)
        if kept is not None:
            node.attrs["group"] = kept // fix.out_per_group

    def _fix_layer_norm(self, node: Node, fix: LayerNormWidth) -> None:
        """LayerNorm over N' < N kept channels, statistics over the original N: pad the
        input with N - N' zeros (what the zeroed channels held), normalise, slice back."""
        width, x = fix.width, node.inputs[0].name
        kept = self.kept_sizes(x).get(self.qadg.tracked[x].axes[0])
        if kept is None or kept == width:
            return
        missing = width - kept
        rank = self.qadg.tracked[x].rank
        ed = self.ed
        pads = np.zeros(2 * rank, dtype=np.int64)
        pads[2 * rank - 1] = missing
        padded = ed.add_node("Pad", [node.inputs[0], ed.add_const(f"{node.name}__pads", pads)], f"{node.name}__pad")
        for i, fill in ((1, 1.0), (2, 0.0)):  # scale padded with ones, bias with zeros (sliced away)
            v = ed.input_const(node, i)
            if v is not None:
                self.set_const_input(node, i, np.concatenate([v, np.full(missing, fill, v.dtype)]), f"affine{i}")
        out, wide = node.outputs[0], ed.variable(f"{node.name}__wide")
        node.inputs[0] = padded
        node.outputs[0] = wide
        bounds = [ed.add_const(f"{node.name}__{s}", np.array(v, dtype=np.int64))
                  for s, v in (("starts", [0]), ("ends", [kept]), ("axes", [rank - 1]))]
        ed.add_node("Slice", [wide, *bounds], f"{node.name}__slice", output=out)


# one rewrite per fixup record type (qadg.fixups; tests/qadg/test_prune.py checks it is complete)
REWRITES: dict[type, str] = {
    ReshapeTarget: "_fix_reshape", ExpandTarget: "_fix_expand", SplitSizes: "_fix_split", SliceBounds: "_fix_slice",
    ConvGroups: "_fix_conv_group", LayerNormWidth: "_fix_layer_norm", ShapeRead: "_fix_shape",
}

