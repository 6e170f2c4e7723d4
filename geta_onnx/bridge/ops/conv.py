"""Conv, ConvTranspose and Gemm: the weighted ops (MatMul lives with the math ops).

Also home of the ONNX padding rules (explicit pads, auto_pad SAME_UPPER / SAME_LOWER /
VALID) shared with the pooling ops. SAME padding is resolved from the input's spatial
sizes at run time, so it works for dynamic shapes and any stride.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """(begin, end) padding of auto_pad SAME_*: output size ceil(size / stride); an odd
    total goes to the end for SAME_UPPER and to the beginning for SAME_LOWER."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    begin = total // 2 if upper else total - total // 2
    return begin, total - begin


class Padding:
    """ONNX `pads` / `auto_pad` of one node; call it with the spatial sizes to get
    (begin pads, end pads), one entry per spatial dim.

    same_dilated=False sizes SAME pads for the undilated kernel: what onnxruntime's
    pooling kernels do (the ONNX spec and shape inference use the dilated kernel;
    onnxruntime's Conv refuses SAME with dilations, so Conv follows the spec)."""

    def __init__(self, ctx: NodeContext, kernel, strides, dilations, same_dilated: bool = True):
        spatial = len(kernel)
        self.auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
        if self.auto_pad not in AUTO_PADS:
            raise ctx.fail(f"unknown auto_pad '{self.auto_pad}'")
        pads = ctx.attr("pads", None) if self.auto_pad == "NOTSET" else None
        pads = list(pads) if pads else [0] * (2 * spatial)
        if len(pads) != 2 * spatial:
            raise ctx.fail(f"pads has {len(pads)} values, expected {2 * spatial}")
        self.begin, self.end = pads[:spatial], pads[spatial:]
        self.kernel, self.strides, self.dilations = list(kernel), list(strides), list(dilations)
        self.same_dilations = self.dilations if same_dilated else [1] * spatial

    @property
    def static(self) -> bool:
        """True when the pads do not depend on the input sizes."""
        return self.auto_pad not in ("SAME_UPPER", "SAME_LOWER")

    def __call__(self, sizes) -> tuple[list[int], list[int]]:
        if self.static:
            return list(self.begin), list(self.end)
        upper = self.auto_pad == "SAME_UPPER"
        pairs = [same_pads(int(n), k, s, d, upper)
                 for n, k, s, d in zip(sizes, self.kernel, self.strides, self.same_dilations)]
        return [b for b, _ in pairs], [e for _, e in pairs]


def torch_pad(begin, end) -> list[int]:
    """ONNX (begin..., end...) -> F.pad's list: last spatial dim first, (begin, end) pairs."""
    return [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]


def spatial_attrs(ctx: NodeContext, kernel_from_weight: int | None):
    """kernel, strides, dilations, taking the kernel from the weight when not given."""
    kernel = ctx.attr("kernel_shape")
    if not kernel and kernel_from_weight is not None:
        w = ctx.input_shape(kernel_from_weight)
        if w is not None and len(w) >= 3 and all(isinstance(d, int) for d in w[2:]):
            kernel = list(w[2:])
    if not kernel:
        raise ctx.fail("kernel_shape unknown: give the attribute or a weight of known shape")
    spatial = len(kernel)
    if spatial not in (1, 2, 3):
        raise ctx.fail(f"{spatial}-d windows are not supported (1 to 3 spatial dims)")
    strides = ctx.attr("strides") or [1] * spatial
    dilations = ctx.attr("dilations") or [1] * spatial
    if len(strides) != spatial or len(dilations) != spatial:
        raise ctx.fail("strides / dilations do not match kernel_shape in length")
    return list(kernel), list(strides), list(dilations)


class Conv(nn.Module):
    def __init__(self, padding: Padding, group: int):
        super().__init__()
        self.fn = _CONV[len(padding.kernel)]
        self.pad, self.group = padding, group
        self.strides, self.dilations = tuple(padding.strides), tuple(padding.dilations)

    def forward(self, x, w, b=None):
        begin, end = self.pad(x.shape[2:])
        if begin == end:  # symmetric: torch pads inside the kernel
            return self.fn(x, w, b, self.strides, tuple(begin), self.dilations, self.group)
        x = F.pad(x, torch_pad(begin, end))  # asymmetric: zero-pad explicitly first
        return self.fn(x, w, b, self.strides, 0, self.dilations, self.group)

    def extra_repr(self) -> str:
        return f"strides={self.strides}, dilations={self.dilations}, group={self.group}, auto_pad={self.pad.auto_pad}"


@converter("Conv", versions=(1, 11), weights=(1, 2))
def convert_conv(ctx: NodeContext) -> nn.Module:
    kernel, strides, dilations = spatial_attrs(ctx, kernel_from_weight=1)
    return Conv(Padding(ctx, kernel, strides, dilations), int(ctx.attr("group", 1)))


class ConvTranspose(nn.Module):
    """Transposed convolution in two steps: the "full" result of torch's conv_transpose
    without padding, (in - 1) * stride + (k - 1) * dilation + 1 long per dim, then a crop
    of `begin` at the front and `end - output_padding` at the back (F.pad with negative
    values crops; positive values add zeros), then the bias. This covers asymmetric pads,
    auto_pad and output_shape; symmetric explicit pads take torch's fused path."""

    def __init__(self, padding: Padding, group: int, output_padding, output_shape):
        super().__init__()
        self.fn = _CONV_T[len(padding.kernel)]
        self.pad, self.group = padding, group
        self.strides, self.dilations = tuple(padding.strides), tuple(padding.dilations)
        self.output_padding, self.output_shape = list(output_padding), output_shape

    def _pads(self, sizes, kernel):
        """(begin, end) crops of the full output, one per spatial dim (the ORT rules)."""
        if self.output_shape is None and self.pad.static:
            return self.pad([])  # explicit pads (or VALID: none)
        begin, end = [], []
        for i, (n, k) in enumerate(zip(sizes, kernel)):
            full = (int(n) - 1) * self.strides[i] + (k - 1) * self.dilations[i] + 1 + self.output_padding[i]
            if self.output_shape is not None:
                total = full - self.output_shape[i]
            else:  # SAME: aim at in * stride, but never pad the full output (onnxruntime)
                total = max(0, full - int(n) * self.strides[i])
            b = total // 2 if self.pad.auto_pad == "SAME_UPPER" else total - total // 2  # NOTSET splits like SAME_LOWER
            begin.append(b)
            end.append(total - b)
        return begin, end

    def forward(self, x, w, b=None):
        begin, end = self._pads(x.shape[2:], w.shape[2:])
        op = self.output_padding
        fused = (self.output_shape is None and begin == end and min(begin, default=0) >= 0
                 and all(p < max(s, d) for p, s, d in zip(op, self.strides, self.dilations)))
        if fused:  # torch's own padding: same crop, output_padding added at the end
            return self.fn(x, w, b, self.strides, tuple(begin), tuple(op), self.group, self.dilations)
        y = self.fn(x, w, None, self.strides, 0, 0, self.group, self.dilations)
        y = F.pad(y, torch_pad([-p for p in begin], [p - e for p, e in zip(op, end)]))
        if b is not None:
            y = y + b.reshape((1, -1) + (1,) * (y.dim() - 2))
        return y

    def extra_repr(self) -> str:
        return (f"strides={self.strides}, dilations={self.dilations}, group={self.group}, "
                f"output_padding={self.output_padding}, output_shape={self.output_shape}, auto_pad={self.pad.auto_pad}")


@converter("ConvTranspose", versions=(1, 11), weights=(1, 2))
def convert_conv_transpose(ctx: NodeContext) -> nn.Module:
    kernel, strides, dilations = spatial_attrs(ctx, kernel_from_weight=1)
    spatial = len(kernel)
    output_padding = ctx.attr("output_padding") or [0] * spatial
    output_shape = ctx.attr("output_shape")
    if output_shape is not None:
        output_shape = list(output_shape)
        if len(output_shape) == spatial + 2:  # some exporters give (N, C, spatial...)
            output_shape = output_shape[2:]
        if len(output_shape) != spatial:
            raise ctx.fail(f"output_shape {output_shape} does not have {spatial} spatial values")
    if len(output_padding) != spatial:
        raise ctx.fail(f"output_padding has {len(output_padding)} values, expected {spatial}")
    padding = Padding(ctx, kernel, strides, dilations)
    return ConvTranspose(padding, int(ctx.attr("group", 1)), output_padding, output_shape)


class Gemm(nn.Module):
    """Y = alpha * A' B' + beta * C, with A' / B' optionally transposed (2-D A and B)."""

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
        if c is not None and self.beta == 1.0 and c.dim() == 1 and c.shape[0] == b.shape[0]:
            return F.linear(a, b, c)  # the common (M, K) x (N, K)^T + (N,): one fused addmm
        y = F.linear(a, b)
        if c is None:
            return y
        return y + (c if self.beta == 1.0 else self.beta * c)  # C broadcasts to (M, N)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, transA={self.trans_a}, transB={self.trans_b}"


@converter("Gemm", versions=(1, 6, 7, 9, 11, 13), weights=(1, 2))
def convert_gemm(ctx: NodeContext) -> nn.Module:
    # Gemm-1/6 `broadcast`=0 only promises that C already has shape (M, N): broadcasting is the same
    return Gemm(float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0)),
                bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0)))
