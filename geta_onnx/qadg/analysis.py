"""The QADG analysis: propagate channel ids through the ONNX graph, op by op.

Sources (Conv, ConvTranspose, Gemm, MatMul with a weight, embedding Gather) give their
output channels fresh ids; rules per op type move, split, stack and union them; every
weight slice a channel touches becomes a member of its group. Ops without a rule, graph
outputs and unresolved shapes are barriers: the groups they touch stay unprunable, with
the reason. Nothing here raises on an unknown op.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from ..graph.model import WEIGHT_THROUGH, OnnxModel, attr, weight_source
from ..graph.stats import op_cost
from .fixups import Fixup
from .groups import MemberSlice, PruneGroup
from .ids import FIXED, Tracked, UnionFind


class Analysis:
    """Mutable state of one analysis run; rules call its helpers."""

    def __init__(self, model: OnnxModel):
        self.model = model
        self.uf = UnionFind()
        self.tracked: dict[str, Tracked] = {}
        self.members: dict[tuple[str, int, int], tuple[int, str]] = {}  # (tensor, axis, index) -> (id, role)
        self.barriers: dict[int, str] = {}  # id -> first reason
        self.kind_hint: dict[int, str] = {}  # id -> "head" | "conv_group"
        self.source_of: dict[int, str] = {}  # fresh id -> node that created it
        self.fixups: list[Fixup] = []
        self.shared_barrier_tensors: dict[str, str] = {}  # initializer -> reason
        self._probe: dict[str, tuple[int, ...]] | None = None

    # ---- ids ----------------------------------------------------------------------------
    def fresh(self, node: onnx.NodeProto, n: int) -> np.ndarray:
        ids = self.uf.fresh(n)
        for i in ids:
            self.source_of[int(i)] = node.name
        return ids

    def union_arrays(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Union two broadcastable id arrays position by position; FIXED taints its partner."""
        a, b = np.broadcast_arrays(a, b)
        pairs = np.unique(np.stack([a.reshape(-1), b.reshape(-1)], axis=1), axis=0)
        for x, y in pairs:
            if x == FIXED and y == FIXED:
                continue
            if x == FIXED or y == FIXED:
                self.barrier([y if x == FIXED else x], reason)
            elif x != y:
                self.uf.union(int(x), int(y))

    def union_along(self, ids: np.ndarray, axis: int, hint: str | None = None) -> np.ndarray:
        """Union all ids along `axis` (a contraction or reduction over it); returns the ids
        with that axis removed (one representative per remaining position)."""
        moved = np.moveaxis(ids, axis, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        for row in flat:
            live = [int(x) for x in row if x != FIXED]
            if len(live) < len(row) and live:
                self.barrier(live, "a reduction mixes these channels with fixed ones")
            for x in live[1:]:
                self.uf.union(live[0], x)
            if hint:
                for x in live:
                    self.kind_hint[x] = hint
        return moved[..., 0].copy() if moved.shape[-1] else moved[..., 0]

    def barrier(self, ids, reason: str) -> None:
        for x in np.asarray(ids).reshape(-1):
            x = int(x)
            if x != FIXED and x not in self.barriers:
                self.barriers[x] = reason

    def barrier_tracked(self, name: str, reason: str) -> None:
        t = self.tracked.get(name)
        if t is not None:
            self.barrier(t.ids, reason)

    # ---- members ------------------------------------------------------------------------
    def member(self, tensor: str, axis: int, ids: np.ndarray, role: str = "out") -> None:
        """Index i along `axis` of initializer `tensor` belongs to channel ids[i]."""
        ids = np.asarray(ids).reshape(-1)
        shape = self.model.initializers[tensor].dims
        if axis < 0:
            axis += len(shape)
        if shape[axis] != len(ids):
            self.barrier(ids, f"initializer '{tensor}' has {shape[axis]} entries on axis {axis}, "
                              f"expected {len(ids)}")
            return
        for i, x in enumerate(ids):
            x = int(x)
            if x == FIXED:
                continue
            key = (tensor, axis, i)
            if key in self.members:
                self.uf.union(self.members[key][0], x)  # one slice, one group
            else:
                self.members[key] = (x, role)

    def weight_member(self, tensor: str, axis: int, ids: np.ndarray, role: str) -> bool:
        """Like member() but follows a weight back through DequantizeLinear / Identity /
        Cast / Transpose to its initializer. False when it is not an initializer chain."""
        m = self.model
        if m.is_initializer(tensor):
            self.member(tensor, axis, ids, role)
            return True
        node = m.producer(tensor)
        if node is None:
            return False
        if node.op_type in WEIGHT_THROUGH and node.op_type != "Transpose":
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                self.qdq_params_member(node, axis, ids, role)
            return self.weight_member(node.input[0], axis, ids, role)
        if node.op_type == "Transpose":
            rank = len(m.shape(tensor) or ())
            perm = attr(node, "perm", list(reversed(range(rank))))
            return self.weight_member(node.input[0], perm[axis if axis >= 0 else axis + rank], ids, role)
        return False

    def qdq_params_member(self, node: onnx.NodeProto, axis: int, ids: np.ndarray, role: str) -> None:
        """Per-axis scale / zero point of a Q or DQ node on `axis` are sliced with it."""
        rank = len(self.model.shape(node.input[0]) or ())
        q_axis = attr(node, "axis", 1)
        if q_axis < 0:
            q_axis += rank
        for i in (1, 2):
            if i < len(node.input) and node.input[i] and self.model.is_initializer(node.input[i]):
                dims = self.model.initializers[node.input[i]].dims
                if len(dims) == 1 and dims[0] > 1 and q_axis == (axis if axis >= 0 else axis + rank):
                    self.member(node.input[i], 0, ids, role)

    # ---- tensors ------------------------------------------------------------------------
    def get(self, name: str) -> Tracked | None:
        return self.tracked.get(name) if name else None

    def set(self, name: str, t: Tracked | None) -> None:
        if t is not None and name:
            self.tracked[name] = t

    def probed_shape(self, name: str) -> tuple[int, ...] | None:
        """The measured shape of `name` at batch 1 (graph.probe), computed once on demand."""
        if self._probe is None:
            from ..graph.probe import probe_shapes

            self._probe = probe_shapes(self.model)
        return self._probe.get(name)

    def rank(self, name: str) -> int | None:
        shape = self.model.shape(name)
        return None if shape is None else len(shape)


@dataclass
class QADG:
    """Groups plus what physical pruning needs to apply them."""

    model: OnnxModel
    groups: list[PruneGroup]
    tracked: dict[str, Tracked]  # tensor -> channel ids (ids are roots = group ids)
    fixups: list[Fixup]
    seconds: float

    @property
    def prunable(self) -> list[PruneGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> PruneGroup:
        return self._by_id[gid]

    def __post_init__(self):
        self._by_id = {g.id: g for g in self.groups}

    def summary(self) -> dict:
        from ..graph.stats import model_stats

        stats = model_stats(self.model)
        every = [m for g in self.prunable for m in g.members]
        pp, pm = _removed_cost(self.model, every, _weight_costs(self.model))
        sizes = defaultdict(int)
        for g in self.prunable:
            sizes[f"{g.kind}:{g.width}"] += 1
        return {
            "groups": len(self.groups),
            "prunable_groups": len(self.prunable),
            "kinds": dict(sorted(sizes.items())),
            "prunable_params": pp,
            "prunable_param_share": pp / stats.params if stats.params else 0.0,
            "prunable_macs": pm,
            "prunable_mac_share": pm / stats.macs if stats.macs else 0.0,
            "weight_params": stats.params,
            "macs": stats.macs,
            "analysis_seconds": round(self.seconds, 3),
        }


def analyze(model: OnnxModel) -> QADG:
    """Build the pruning groups of a normalised model (graph.load_model output)."""
    from .rules import RULES, no_rule

    start = time.perf_counter()
    an = Analysis(model)
    for node in model.nodes:
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        (rule or no_rule)(an, node)
    for out in model.outputs:
        an.barrier_tracked(out.name, f"reaches the graph output '{out.name}'")
    groups = _collect(an)
    return QADG(model, groups, {k: _rooted(an, t) for k, t in an.tracked.items()}, an.fixups,
                time.perf_counter() - start)


def _rooted(an: Analysis, t: Tracked) -> Tracked:
    roots = np.vectorize(lambda x: an.uf.find(int(x)) if x != FIXED else FIXED, otypes=[np.int64])(t.ids) \
        if t.ids.size else t.ids
    return Tracked(t.axes, roots, t.rank, t.zero_ok)


def _collect(an: Analysis) -> list[PruneGroup]:
    model = an.model
    by_root: dict[int, dict[tuple[str, int, str], list[int]]] = defaultdict(lambda: defaultdict(list))
    for (tensor, axis, index), (x, role) in an.members.items():
        by_root[an.uf.find(x)][(tensor, axis, role)].append(index)
    reasons: dict[int, str] = {}
    for x, why in an.barriers.items():
        reasons.setdefault(an.uf.find(x), why)
    hints: dict[int, str] = {}
    for x, h in an.kind_hint.items():
        hints[an.uf.find(x)] = h
    sources: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for x, node in an.source_of.items():
        sources[an.uf.find(x)][node] += 1
    # per-tensor cost shares: params and MACs removed per index of each weighted op's weight
    consumers_cost = _weight_costs(model)
    groups = []
    for root in sorted(set(by_root) | set(sources)):
        slices = by_root.get(root, {})
        members = [MemberSlice(t, a, tuple(sorted(ix)), role) for (t, a, role), ix in sorted(slices.items())]
        params, macs = _removed_cost(model, members, consumers_cost)
        src = sources.get(root, {})
        width = max(src.values()) if src else max((len(m.indices) for m in members), default=0)
        reason = reasons.get(root, "")
        for t in {m.tensor for m in members}:
            if not reason and t in an.shared_barrier_tensors:
                reason = an.shared_barrier_tensors[t]
        if not reason and not members:
            reason = "no weight slice belongs to it"
        groups.append(PruneGroup(id=root, kind=hints.get(root, "channel"), size=1, width=width, members=members,
                                 sources=sorted(src), params=params, macs=macs,
                                 prunable=not reason, reason=reason))
    return groups


def _removed_cost(model: OnnxModel, members: list[MemberSlice],
                  costs: dict[tuple[str, int], list[tuple[int, int]]]) -> tuple[int, int]:
    """Weight elements and MACs removed with these slices; an element (or a MAC) is
    counted once even when both its row and its column go (w[c, c] of a residual block)."""
    removed: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for m in members:
        if m.role != "state":
            removed[m.tensor][m.axis].update(m.indices)
    params = macs = 0
    for tensor, per_axis in removed.items():
        dims = list(model.initializers[tensor].dims)
        kept = 1
        for a, n in enumerate(dims):
            kept *= n - len(per_axis.get(a, ()))
        params += int(np.prod(dims)) - kept
        by_op: dict[int, float] = defaultdict(lambda: 1.0)  # op MACs -> kept fraction
        for (t, a), entries in costs.items():
            if t == tensor and a in per_axis:
                for op_macs, n in entries:
                    by_op[op_macs] *= 1 - len(per_axis[a]) / n
        macs += int(round(sum(op_macs * (1 - frac) for op_macs, frac in by_op.items())))
    return params, macs


def _weight_costs(model: OnnxModel) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """(initializer, axis) -> [(MACs of the weighted op, length of that axis)] for weights
    read directly (or through graph.model.WEIGHT_THROUGH ops) by Conv / Gemm / MatMul."""
    out: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for node in model.nodes:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        cost = op_cost(model, node)
        if not cost.macs:
            continue
        for name in node.input[:2]:
            src = weight_source(model, name)  # the initializer behind DQ / Transpose (W^T of the legacy exporter)
            if src:  # removing k of the n slices on a weight axis removes k/n of the MACs
                dims = model.initializers[src].dims
                for axis, n in enumerate(dims):
                    if axis < 2 and n > 0:
                        out[(src, axis)].append((cost.macs, n))
    return out
