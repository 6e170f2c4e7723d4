"""Pruning groups as views on the trainable tensors of a bridged module.

A PruneGroup names ONNX initializer slices; here each becomes (parameter, axis, index)
so the optimizer can read, score and zero a group. Only trainable slices ("out" and "in"
roles on nn.Parameters) are touched: BatchNorm running statistics are sliced at export,
never zeroed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bridge import OnnxModule
from ..qadg.groups import PruneGroup


@dataclass
class Slice:
    param: torch.nn.Parameter
    name: str  # initializer name
    axis: int
    index: torch.Tensor  # int64 indices along axis

    def view(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """The slice of `tensor` (default: the parameter), as a copy."""
        return (self.param if tensor is None else tensor).index_select(self.axis, self.index)


@dataclass
class GroupView:
    group: PruneGroup
    slices: list[Slice]
    cluster: tuple[str, ...]  # groups with the same sources: one layer's channels / heads

    @property
    def id(self) -> int:
        return self.group.id

    def values(self, tensors: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """All the group's entries as one flat vector (of the params, or of `tensors`
        keyed by id(param), e.g. processed gradients; a parameter missing there, one the loss
        gave no gradient this step, counts as zeros)."""
        parts = [s.view(None if tensors is None else tensors.get(id(s.param), torch.zeros_like(s.param))).reshape(-1)
                 for s in self.slices]
        return torch.cat(parts) if parts else torch.zeros(0)

    def norm(self) -> float:
        return float(torch.sqrt(sum(s.view().detach().float().pow(2).sum() for s in self.slices))) if self.slices else 0.0

    def numel(self) -> int:
        return sum(s.index.numel() * s.param.numel() // s.param.shape[s.axis] for s in self.slices)


def merge_slices(views: list[GroupView]) -> list[Slice]:
    """The slices of `views` merged per (tensor, axis), indices in view order: one
    index_select / index_copy per tensor instead of one per group (a transformer's
    redundant set holds hundreds of FFN channels, each a slice of the same two weights)."""
    merged: dict[tuple[str, int], list[Slice]] = {}
    for v in views:
        for s in v.slices:
            merged.setdefault((s.name, s.axis), []).append(s)
    return [parts[0] if len(parts) == 1 else Slice(parts[0].param, name, axis, torch.cat([s.index for s in parts]))
            for (name, axis), parts in merged.items()]


def group_views(module: OnnxModule, groups: list[PruneGroup]) -> list[GroupView]:
    """Views of the prunable groups whose members include at least one parameter."""
    params = {name: module.parameter(name) for name in module.tensor_of
              if module.tensor_of[name].startswith("params.")}
    views = []
    for g in groups:
        if not g.prunable:
            continue
        slices = []
        for m in g.members:
            if m.role == "state" or m.tensor not in params:
                continue
            p = params[m.tensor]
            slices.append(Slice(p, m.tensor, m.axis, torch.tensor(m.indices, dtype=torch.long, device=p.device)))
        if slices:
            views.append(GroupView(g, slices, tuple(g.sources)))
    return views


class ZeroMasks:
    """Per-parameter 0/1 masks of the committed (pruned) groups: one multiply per tensor
    keeps them exactly zero after every step."""

    def __init__(self) -> None:
        self.masks: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    def add(self, view: GroupView) -> None:
        for s in view.slices:
            key = id(s.param)
            if key not in self.masks:
                self.masks[key] = (s.param, torch.ones_like(s.param, dtype=torch.bool))
            self.masks[key][1].index_fill_(s.axis, s.index, False)

    @torch.no_grad()
    def apply(self) -> None:
        for p, mask in self.masks.values():
            p.mul_(mask)
