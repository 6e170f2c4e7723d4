"""The graph rewrites pruning needs beyond deleting weight slices: one typed record per kind.

A QADG rule that lets pruned channels flow through a node whose attributes or constant
inputs carry a channel width (a Reshape target, Split sizes, Slice bounds, a conv's group
count, LayerNorm's statistics width, a Shape read) records one of these; prune.physical
rewrites each kind (its REWRITES table: one rewrite per record type, checked complete by
tests/qadg/test_prune.py). Adding such an op means a rule that records a fixup here and its
rewrite there.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fixup:
    node: str  # the ONNX node name


@dataclass(frozen=True)
class ReshapeTarget(Fixup):
    """A Reshape whose constant or run-time target holds pruned widths: the entries of the
    channel axes become the kept widths (0 = copy and -1 = infer stay)."""


@dataclass(frozen=True)
class ExpandTarget(Fixup):
    """An Expand whose target holds pruned widths (entries 1, broadcast, stay)."""


@dataclass(frozen=True)
class SplitSizes(Fixup):
    """A Split along a channel axis: each output's size becomes the channels it keeps."""

    parts: tuple[tuple[int, int], ...]  # [begin, end) of each output along the axis, unpruned


@dataclass(frozen=True)
class SliceBounds(Fixup):
    """A Slice of [begin, end) along channel axis `axis`: the bounds move to the kept ones."""

    axis: int
    begin: int
    end: int


@dataclass(frozen=True)
class ConvGroups(Fixup):
    """A grouped Conv: `group` becomes kept output channels / out_per_group (whole conv
    groups are removed, or channels of a depthwise conv)."""

    out_per_group: int


@dataclass(frozen=True)
class LayerNormWidth(Fixup):
    """A LayerNormalization over `width` channels of which some are pruned: its statistics
    stay over the original width (the zeroed channels padded back in)."""

    width: int


@dataclass(frozen=True)
class ShapeRead(Fixup):
    """Shape(x) of a pruned x: it keeps reporting x's original channel widths (rule shape_of)."""


FIXUP_TYPES = (ReshapeTarget, ExpandTarget, SplitSizes, SliceBounds, ConvGroups, LayerNormWidth, ShapeRead)
