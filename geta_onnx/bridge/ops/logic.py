"""Comparisons (Equal Less LessOrEqual Greater GreaterOrEqual), boolean logic (Not And Or
Xor) and Where. Comparisons and logic ops return bool tensors, as ONNX does; inputs
broadcast numpy-style (opset >= 7), as in torch.
"""
from __future__ import annotations

import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .base import Lambda
from .elementwise import check_legacy_broadcast, support_unsigned

_OPS = {"Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
        "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
        "Xor": torch.logical_xor, "Not": torch.logical_not}


@converter("Equal", versions=(1, 7, 11, 13, 19))
@converter(("Less", "Greater"), versions=(1, 7, 9, 13))
@converter(("LessOrEqual", "GreaterOrEqual"), versions=(12, 16))
@converter(("And", "Or", "Xor"), versions=(1, 7))
@converter("Not", versions=(1,))
def convert_logic(ctx: NodeContext) -> nn.Module:
    check_legacy_broadcast(ctx)  # opset < 7 `broadcast` / `axis` attributes
    return support_unsigned(ctx, Lambda(_OPS[ctx.op_type], ctx.op_type))


@converter("Where", versions=(9, 16))
def convert_where(ctx: NodeContext) -> nn.Module:
    # where(condition, x, y), all three broadcast
    return support_unsigned(ctx, Lambda(torch.where, "Where"))
