"""MatMul and Einsum. Either operand may be an initializer weight (x @ W, or W @ x as in
a transposed projection), so every input slot is a weight slot: a float initializer there
becomes a trainable parameter, even a one-element one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .base import Lambda
from .elementwise import support_unsigned

# Einsum is variadic; the registry takes explicit slot indices, so name more than any
# real equation uses.
_EINSUM_SLOTS = tuple(range(64))


@converter("MatMul", versions=(1, 9, 13), weights=(0, 1))
def convert_matmul(ctx: NodeContext) -> nn.Module:
    # numpy.matmul semantics (1-D operands promoted and squeezed, batch dims broadcast)
    # are torch.matmul's
    return support_unsigned(ctx, Lambda(torch.matmul, "MatMul"))


class Einsum(nn.Module):
    def __init__(self, equation: str):
        super().__init__()
        self.equation = equation

    def forward(self, *operands):
        return torch.einsum(self.equation, *operands)

    def extra_repr(self) -> str:
        return repr(self.equation)


@converter("Einsum", versions=(12,), weights=_EINSUM_SLOTS)
def convert_einsum(ctx: NodeContext) -> nn.Module:
    equation = ctx.attr("equation")
    if not equation:
        raise ctx.fail("Einsum without an `equation` attribute")
    # ONNX allows spaces; implicit output (no '->') means labels seen once, in alphabetical
    # order, after the broadcast '...' dims: numpy's rule, which torch.einsum follows
    equation = equation.replace(" ", "")
    if len(ctx.inputs) > len(_EINSUM_SLOTS):
        raise ctx.fail(f"Einsum with {len(ctx.inputs)} operands (at most {len(_EINSUM_SLOTS)} supported)")
    return support_unsigned(ctx, Einsum(equation))
