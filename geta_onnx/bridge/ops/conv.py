"""Conv and Gemm: the weighted ops (MatMul lives with the math ops)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter


def _conv_padding(ctx: NodeContext, spatial: int, kernel: list[int], strides: list[int], dilations: list[int]):
    """ONNX pads / auto_pad -> (symmetric padding for torch, or explicit F.pad list)."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        shape = ctx.input_shape(0)
        if shape is None or not all(isinstance(d, int) for d in shape[2:]):
            if all(s == 1 for s in strides):
                total = [d * (k - 1) for d, k in zip(dilations, kernel)]
                begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
                return [b for b in begin], [t - b for t, b in zip(total, begin)]
            raise ctx.fail("auto_pad SAME with strides needs static input shapes")
        begin, end = [], []
        for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
        return begin, end
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    pads = ctx.attr("pads", [0] * (2 * spatial))
    return list(pads[:spatial]), list(pads[spatial:])


class Conv(nn.Module):
    def __init__(self, spatial: int, strides, dilations, group: int, begin, end):
        super().__init__()
        self.fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
        self.strides, self.dilations, self.group = tuple(strides), tuple(dilations), group
        if begin == end:
            self.padding, self.pre_pad = tuple(begin), None
        else:  # asymmetric: pad explicitly, last spatial dim first (F.pad order)
            self.padding = 0
            self.pre_pad = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]

    def forward(self, x, w, b=None):
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        return self.fn(x, w, b, self.strides, self.padding, self.dilations, self.group)


@converter("Conv", versions=(1, 11), weights=(1, 2))
def convert_conv(ctx: NodeContext) -> nn.Module:
    w = ctx.model.shape(ctx.inputs[1])
    kernel = ctx.attr("kernel_shape") or (list(w[2:]) if w else None)
    if kernel is None:
        raise ctx.fail("kernel_shape unknown: give the attribute or a weight of known shape")
    spatial = len(kernel)
    if spatial not in (1, 2, 3):
        raise ctx.fail(f"{spatial}-d convolution is not supported (1-3 spatial dims)")
    strides = ctx.attr("strides", [1] * spatial)
    dilations = ctx.attr("dilations", [1] * spatial)
    begin, end = _conv_padding(ctx, spatial, kernel, strides, dilations)
    return Conv(spatial, strides, dilations, ctx.attr("group", 1), begin, end)


class Gemm(nn.Module):
    def __init__(self, alpha: float, beta: float, trans_a: bool, trans_b: bool):
        super().__init__()
        self.alpha, self.beta, self.trans_a, self.trans_b = alpha, beta, trans_a, trans_b

    def forward(self, a, b, c=None):
        if self.trans_a:
            a = a.transpose(0, 1)
        if not self.trans_b:  # F.linear wants B as (N, K)
            b = b.transpose(0, 1)
        if self.alpha != 1.0:
            a = a * self.alpha
        if c is None:
            return F.linear(a, b)
        if self.beta == 1.0 and c.dim() <= 1:
            return F.linear(a, b, c)  # (M, K) x (N, K)^T + (N,)
        return F.linear(a, b) + self.beta * c


@converter("Gemm", versions=(1, 6, 7, 9, 11, 13), weights=(1, 2))
def convert_gemm(ctx: NodeContext) -> nn.Module:
    return Gemm(float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0)),
                bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0)))
