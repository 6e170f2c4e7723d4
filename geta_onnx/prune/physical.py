"""Remove pruning groups from an ONNX graph: slice initializers (weights, biases, norm
parameters and running statistics, per-channel Q/DQ scales) and fix every node whose
constants depend on the pruned sizes (Reshape / Expand targets, Split sizes, Slice
bounds, the `group` of grouped convolutions, LayerNorm widths). The input model is not
modified; a new ModelProto is returned.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import GetaError
from ..graph.model import OnnxModel, attr
from ..graph.normalize import infer_shapes
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

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    new_inits = []
    for t in g.initializer:
        value = values[t.name] if values is not None and t.name in values else None
        if t.name in cut or value is not None:
            arr = np.asarray(value if value is not None else model.array(t.name))
            arr = arr.astype(model.array(t.name).dtype, copy=False)
            for axis, idx in cut.get(t.name, {}).items():
                arr = np.delete(arr, sorted(idx), axis=axis)
            new_inits.append(numpy_helper.from_array(arr, t.name))
        else:
            new_inits.append(t)
    del g.initializer[:]
    g.initializer.extend(new_inits)

    editor = _Editor(proto, model, qadg, remove)
    for fix in qadg.fixups:
        editor.apply(fix)
    del g.value_info[:]
    out = infer_shapes(proto, label=model.label)
    onnx.checker.check_model(out)
    return out


class _Editor:
    """Applies the fixups of one pruning to the copied proto."""

    def __init__(self, proto: onnx.ModelProto, model: OnnxModel, qadg: QADG, remove: set[int]):
        self.proto, self.model, self.qadg, self.remove = proto, model, qadg, remove
        self.nodes = {n.name: n for n in proto.graph.node}
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

    def set_const_input(self, node: onnx.NodeProto, i: int, value: np.ndarray, suffix: str) -> None:
        """Point input i of `node` at a new initializer (shared constants stay untouched)."""
        name = f"{node.name}__pruned_{suffix}"
        self.proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = name

    def const(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        name = node.input[i] if i < len(node.input) else ""
        return self.model.array(name) if name and self.model.is_initializer(name) else None

    # ---- fixups -----------------------------------------------------------------------
    def apply(self, fix: Fixup) -> None:
        rewrite = REWRITES.get(type(fix))
        if rewrite is None:
            raise GetaError(f"node '{fix.node}': no pruning rewrite for {type(fix).__name__}; add one to "
                            "prune.physical.REWRITES")
        getattr(self, rewrite)(self.nodes[fix.node], fix)

    def _fix_reshape(self, node: onnx.NodeProto, fix: ReshapeTarget) -> None:
        self._rewrite_target(node, literal_above=0)  # 0 (copy) and -1 (infer) entries stay

    def _fix_expand(self, node: onnx.NodeProto, fix: ExpandTarget) -> None:
        self._rewrite_target(node, literal_above=1)  # 1 (broadcast) entries stay

    def _rewrite_target(self, node: onnx.NodeProto, literal_above: int) -> None:
        """Set the channel-axis entries of a Reshape / Expand target (input 1) to the
        pruned sizes: a constant target is rewritten, a run-time one patched."""
        sizes = self.kept_sizes(node.output[0])
        old = self.model.shape(node.output[0]) or self._shape_from_target(node)
        target = self.const(node, 1)
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

    def _shape_from_target(self, node: onnx.NodeProto) -> tuple | None:
        """The output dims of a Reshape / Expand that shape inference left unknown: the rank
        from the target's length, the channel axes' widths from the QADG, the rest unknown."""
        target_shape = self.model.shape(node.input[1])
        if not target_shape or not isinstance(target_shape[0], int):
            return None
        t = self.qadg.tracked.get(node.output[0])
        dims: list = [None] * target_shape[0]
        if t is not None:
            for k, a in enumerate(t.axes):
                if a < len(dims):
                    dims[a] = int(t.ids.shape[k])
        return tuple(dims)

    def patch_runtime_shape(self, node: onnx.NodeProto, i: int, sizes: dict[int, int], old: tuple) -> None:
        """A Reshape / Expand target computed at run time: set the entries of channel axes
        to their pruned sizes. Static axes get the size; an axis merged with the batch
        ('4*batch' of nn.MultiheadAttention) is scaled by kept period / period."""
        t = self.qadg.tracked[node.output[0]]
        static, scale = {}, {}
        for a, n in sizes.items():
            if isinstance(old[a], int):
                if n != old[a]:
                    static[a] = n
            elif n != (period := t.ids.shape[t.axes.index(a)]):
                scale[a] = (period, n)
        if not static and not scale:  # this Reshape's channel axes kept every channel
            return
        base = f"{node.name}__pruned_shape"
        src = node.input[i]
        node.input[i] = base  # edit the node first: inserting copies the graph's nodes
        self.rewrite_shape(node, src, base, len(old), static, scale)

    def rewrite_shape(self, before: onnx.NodeProto, src: str, dst: str, rank: int,
                      static: dict[int, int], scale: dict[int, tuple[int, int]], after: bool = False) -> None:
        """dst = src with entries `static` replaced and entries `scale` multiplied by
        num / den; -1 (infer) and 0 (copy) entries stay as they are."""
        keep, new = np.ones(rank, dtype=np.int64), np.zeros(rank, dtype=np.int64)
        den, num = np.ones(rank, dtype=np.int64), np.ones(rank, dtype=np.int64)
        for a, n in static.items():
            keep[a], new[a] = 0, n
        for a, (d, n) in scale.items():
            den[a], num[a] = d, n
        consts = {"keep": keep, "new": new, **({"den": den, "num": num, "one": np.ones(1, np.int64)} if scale else {})}
        names = {k: f"{dst}_{k}" for k in consts}
        for k, v in consts.items():
            self.proto.graph.initializer.append(numpy_helper.from_array(v, names[k]))
        # static entries only: dst = src * keep + new (2 nodes; these run on every inference and
        # cost tens of microseconds each in onnxruntime). Scaled entries also need
        # where(src < 1, src, src / den * num), so -1 / 0 survive
        nodes = [helper.make_node("Mul", [f"{dst}_sym" if scale else src, names["keep"]], [f"{dst}_kept"],
                                  name=f"{dst}_mul"),
                 helper.make_node("Add", [f"{dst}_kept", names["new"]], [dst], name=f"{dst}_add")]
        if scale:
            nodes[:0] = [helper.make_node("Div", [src, names["den"]], [f"{dst}_per"], name=f"{dst}_div"),
                         helper.make_node("Mul", [f"{dst}_per", names["num"]], [f"{dst}_scaled"], name=f"{dst}_scale"),
                         helper.make_node("Less", [src, names["one"]], [f"{dst}_special"], name=f"{dst}_less"),
                         helper.make_node("Where", [f"{dst}_special", src, f"{dst}_scaled"], [f"{dst}_sym"],
                                          name=f"{dst}_where")]
        if after:
            self.insert_before(before, [before] + nodes, replace=True)
        else:
            self.insert_before(before, nodes)

    def _fix_shape(self, node: onnx.NodeProto, fix: ShapeRead) -> None:
        """Shape(x) keeps reporting x's original channel widths (see qadg rule `shape_of`)."""
        sizes = self.kept_sizes(node.input[0])
        t = self.qadg.tracked[node.input[0]]
        old = self.model.shape(node.input[0])
        start, end = attr(node, "start") or 0, attr(node, "end")
        positions = list(range(t.rank))[slice(start, end)]
        static, scale = {}, {}
        for k, a in enumerate(positions):
            if a in sizes and isinstance(old[a], int) and sizes[a] != old[a]:
                static[k] = old[a]
            elif a in sizes and not isinstance(old[a], int):
                period = t.ids.shape[t.axes.index(a)]
                if sizes[a] != period:
                    scale[k] = (sizes[a], period)
        if not static and not scale or self._reads_only(node.output[0], set(static) | set(scale), len(positions)):
            return
        raw = f"{node.output[0]}__pruned"
        out = node.output[0]
        node.output[0] = raw
        self.rewrite_shape(node, raw, out, len(positions), static, scale, after=True)

    def _reads_only(self, shape: str, changed: set[int], rank: int) -> bool:
        """Every reader of the Shape output `shape` is a Gather of constant positions outside
        `changed` (BERT's Shape(x)[0] / [1]: batch and sequence, never the pruned width), so
        it needs no rewrite."""
        if shape in self.model.output_names:
            return False
        for reader, i in self.model.consumers(shape):
            index = self.const(reader, 1) if reader.op_type == "Gather" and i == 0 else None
            if index is None or (attr(reader, "axis") or 0) != 0:
                return False
            if {int(k) % rank for k in np.ravel(index)} & changed:
                return False
        return True

    def insert_before(self, node: onnx.NodeProto, new_nodes: list[onnx.NodeProto], replace: bool = False) -> None:
        """Insert nodes before `node` (found by name). The graph's node list is rebuilt, so
        references to its nodes are stale afterwards: edit a node BEFORE inserting."""
        g = self.proto.graph
        nodes = list(g.node)
        at = next(k for k, n in enumerate(nodes) if n.name == node.name)
        nodes[at:at + (1 if replace else 0)] = new_nodes
        del g.node[:]
        g.node.extend(nodes)
        self.nodes = {n.name: n for n in g.node}

    def _fix_split(self, node: onnx.NodeProto, fix: SplitSizes) -> None:
        t = self.qadg.tracked[node.input[0]]
        mask = self.kept_mask(t)
        sizes = [int(mask[b:e].sum()) for b, e in fix.parts]
        if sizes == [e - b for b, e in fix.parts]:
            return
        if any(s == 0 for s in sizes):
            raise GetaError(f"Split '{node.name}': pruning would leave an empty output")
        if self.model.opset("") >= 13:
            self.set_const_input(node, 1, np.array(sizes, dtype=np.int64), "split")
            _drop_attr(node, "num_outputs")
        else:
            _set_attr(node, "split", sizes)

    def _fix_slice(self, node: onnx.NodeProto, fix: SliceBounds) -> None:
        t = self.qadg.tracked[node.input[0]]
        mask = self.kept_mask(t)
        b, e, axis = fix.begin, fix.end, fix.axis
        nb, ne = int(mask[:b].sum()), int(mask[:e].sum())
        if (nb, ne) == (b, e):
            return
        if len(node.input) > 1:
            axes = self.const(node, 3) if len(node.input) > 3 and node.input[3] else None
            starts, ends = self.const(node, 1), self.const(node, 2)
            rank = t.rank
            axes = list(range(len(starts))) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
            k = axes.index(axis)
            starts, ends = np.array(starts).copy(), np.array(ends).copy()
            starts[k], ends[k] = nb, ne
            self.set_const_input(node, 1, starts, "starts")
            self.set_const_input(node, 2, ends, "ends")
        else:
            axes = list(attr(node, "axes") or range(len(attr(node, "starts"))))
            k = axes.index(axis)
            starts, ends = list(attr(node, "starts")), list(attr(node, "ends"))
            starts[k], ends[k] = nb, ne
            _set_attr(node, "starts", starts)
            _set_attr(node, "ends", ends)

    def _fix_conv_group(self, node: onnx.NodeProto, fix: ConvGroups) -> None:
        kept = self.kept_sizes(node.output[0]).get(1)
        if kept is not None:
            _set_attr(node, "group", kept // fix.out_per_group)

    def _fix_layer_norm(self, node: onnx.NodeProto, fix: LayerNormWidth) -> None:
        """LayerNorm over N' < N kept channels, statistics over the original N: pad the
        input with N - N' zeros (what the zeroed channels held), normalise, slice back."""
        width = fix.width
        kept = self.kept_sizes(node.input[0]).get(self.qadg.tracked[node.input[0]].axes[0])
        if kept is None or kept == width:
            return
        missing = width - kept
        rank = self.qadg.tracked[node.input[0]].rank
        g = self.proto.graph
        pad_out, ln_out = f"{node.name}__padded", f"{node.name}__wide"
        pads = np.zeros(2 * rank, dtype=np.int64)
        pads[2 * rank - 1] = missing
        pads_name = f"{node.name}__pads"
        g.initializer.append(numpy_helper.from_array(pads, pads_name))
        pad = helper.make_node("Pad", [node.input[0], pads_name], [pad_out], name=f"{node.name}__pad")
        for i, fill in ((1, 1.0), (2, 0.0)):  # scale padded with ones, bias with zeros (sliced away)
            if i < len(node.input) and node.input[i]:
                v = next(numpy_helper.to_array(t) for t in g.initializer if t.name == node.input[i])
                self.set_const_input(node, i, np.concatenate([v, np.full(missing, fill, v.dtype)]), f"affine{i}")
        out = node.output[0]
        node.input[0] = pad_out
        node.output[0] = ln_out
        names = [f"{node.name}__{s}" for s in ("starts", "ends", "axes")]
        for n, v in zip(names, ([0], [kept], [rank - 1])):
            g.initializer.append(numpy_helper.from_array(np.array(v, dtype=np.int64), n))
        sl = helper.make_node("Slice", [ln_out] + names, [out], name=f"{node.name}__slice")
        self.insert_before(node, [pad, node, sl], replace=True)


# one rewrite per fixup record type (qadg.fixups; tests/qadg/test_prune.py checks it is complete)
REWRITES: dict[type, str] = {
    ReshapeTarget: "_fix_reshape", ExpandTarget: "_fix_expand", SplitSizes: "_fix_split", SliceBounds: "_fix_slice",
    ConvGroups: "_fix_conv_group", LayerNormWidth: "_fix_layer_norm", ShapeRead: "_fix_shape",
}


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    _drop_attr(node, name)
    node.attribute.append(helper.make_attribute(name, value))
