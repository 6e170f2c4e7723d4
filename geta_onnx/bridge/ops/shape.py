"""Shape and layout ops (placeholder: Flatten; the family is completed below)."""
from __future__ import annotations

from ..context import NodeContext
from ..registry import converter
from .base import Lambda


@converter("Flatten", versions=(1, 9, 11, 13, 21))
def convert_flatten(ctx: NodeContext):
    axis = ctx.attr("axis", 1)

    def flatten(x):
        a = axis + x.dim() if axis < 0 else axis
        return x.reshape(x.shape[:a].numel(), -1)  # (prod(dims before axis), prod(rest))

    return Lambda(flatten, "Flatten")
