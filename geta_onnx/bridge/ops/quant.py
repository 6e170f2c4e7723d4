"""QuantizeLinear and DequantizeLinear (opsets 10, 13, 19, 21), with a straight-through
estimator so that training flows through Q -> DQ pairs.

Semantics (ONNX):
    Q:  y = saturate(round_half_even(x / scale) + zero_point)   integer y
    DQ: y = (x - zero_point) * scale                            float y (scale's dtype)
scale / zero_point are a scalar (per tensor), a 1-D tensor along `axis` (per axis, opset
13+), or, with block_size > 0 (opset 21), x's shape with dim `axis` divided into blocks
of block_size elements (the last block may be short). The quantized type is the zero
point's, else the output_dtype attribute (opset 21), else uint8. Supported: uint8, int8,
int16, uint16 and int4 / uint4 (int4 values are carried in int8 / uint8 tensors: torch
has no 4-bit arithmetic). float8 types are rejected.

Design of the gradient path ("float carrier"). A torch integer tensor cannot carry a
gradient, so a QuantizeLinear that returns the ONNX integer dtype would cut every Q -> DQ
pair out of autograd. The builder gives converters the whole graph, so each
QuantizeLinear decides at build time what it returns:
- integer mode, when its output is a graph output or feeds anything but the x input of
  DequantizeLinear nodes: the exact ONNX dtype and values; no gradient (as in ONNX).
- carrier mode, when every consumer is a DequantizeLinear reading it as x (the usual QDQ
  pattern): the same integer values held exactly in a float tensor (float32 even for
  float16 / bfloat16 scales, so that uint16 values stay exact; float64 once the module is
  converted with .double()), with the STE gradient:
  d q / d x = 1 / scale where the rounded value lies inside the integer range, 0 outside.
DequantizeLinear accepts both: a float x can only be a carrier (ONNX has no float input
to DQ apart from float8, which is rejected), so (x - zp) * scale then has gradient
scale, and a Q -> DQ pair with one scale is the identity inside the range, 0 outside —
the STE of fake quantization. The fx graph stays an explicit copy of the ONNX graph (only
the dtype of that Q -> DQ edge differs): no hidden state, no tensor subclass, no side
channel. Limit: a Q output that is also a graph output stays integer, so its DQ gets no
gradient.
Scale and zero point are `static` slots: constants, never trained.
"""
from __future__ import annotations

import onnx
import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter

_TP = onnx.TensorProto
# ONNX integer type -> (torch dtype carrying it, lowest, highest)
_INT_TYPES = {
    _TP.UINT8: (torch.uint8, 0, 255),
    _TP.INT8: (torch.int8, -128, 127),
    _TP.UINT16: (torch.uint16, 0, 65535),
    _TP.INT16: (torch.int16, -32768, 32767),
    _TP.UINT4: (torch.uint8, 0, 15),
    _TP.INT4: (torch.int8, -8, 7),
}
_FLOAT8 = {_TP.FLOAT8E4M3FN, _TP.FLOAT8E4M3FNUZ, _TP.FLOAT8E5M2, _TP.FLOAT8E5M2FNUZ}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic in float32 (float64 stays float64): half types cannot hold 16-bit integers
    exactly, and onnxruntime computes float16 Q/DQ in float32 too."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _broadcastable(p: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against x.

    per tensor: scalar (or one element) -> as is
    per axis:   [x.shape[axis]] -> [1, .., D, .., 1]
    blocked:    x.shape with dim axis = ceil(D / block_size) -> repeat each entry
                block_size times along axis, cut to D."""
    if block_size > 0:
        return p.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    if p.dim() == 0 or p.numel() == 1:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


class _QDQ(nn.Module):
    def __init__(self, axis: int, block_size: int):
        super().__init__()
        self.axis, self.block_size = axis, block_size

    def _params(self, x, scale, zero_point):
        """Scale and zero point in the compute dtype, broadcastable against x."""
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        dtype = _compute_dtype(scale.dtype)
        s = _broadcastable(scale.to(dtype), x, axis, self.block_size)
        if zero_point is None:
            return s, None
        return s, _broadcastable(zero_point.to(dtype), x, axis, self.block_size)


class QuantizeLinear(_QDQ):
    def __init__(self, axis: int, block_size: int, elem_type: int, carrier: bool):
        super().__init__(axis, block_size)
        self.dtype, self.low, self.high = _INT_TYPES[elem_type]
        self.type_name = _TP.DataType.Name(elem_type)
        self.carrier = carrier

    def extra_repr(self) -> str:
        mode = "float carrier (STE)" if self.carrier else "integer"
        return f"{self.type_name}, axis={self.axis}, block_size={self.block_size}, output={mode}"

    def forward(self, x, scale, zero_point=None):
        s, zp = self._params(x, scale, zero_point)
        v = x.to(s.dtype) / s  # int32 x (allowed by the schema) is quantized like a float
        if self.carrier:
            # value round(v), gradient 1 (round's zero gradient is skipped); clamp then
            # zeroes the gradient where the rounded value leaves the integer range
            q = torch.round(v).detach() + (v - v.detach())
        else:
            q = torch.round(v)  # round half to even, as ONNX
        if zp is not None:
            q = q + zp
        q = torch.clamp(q, self.low, self.high)
        return q if self.carrier else q.to(self.dtype)


class DequantizeLinear(_QDQ):
    def extra_repr(self) -> str:
        return f"axis={self.axis}, block_size={self.block_size}"

    def forward(self, x, scale, zero_point=None):
        s, zp = self._params(x, scale, zero_point)
        # a float x is the carrier of a QuantizeLinear (exact integers); an integer x is
        # converted exactly (int32 beyond 2**24 rounds, as in onnxruntime's float math)
        q = x.to(s.dtype)
        if zp is not None:
            q = q - zp
        return (q * s).to(scale.dtype)


def _axis_and_block(ctx: NodeContext) -> tuple[int, int]:
    axis = ctx.attr("axis", 1) if ctx.since >= 13 else 1  # opset 10: per tensor only
    block_size = ctx.attr("block_size", 0) if ctx.since >= 21 else 0
    if block_size < 0:
        raise ctx.fail(f"block_size must be >= 0, got {block_size}")
    return axis, block_size


def _quantized_type(ctx: NodeContext) -> int:
    """The ONNX element type of Q's output: the zero point's, else output_dtype, else uint8."""
    elem = None
    if ctx.has_input(2):
        elem = ctx.model.elem_type(ctx.inputs[2])
    if not elem:
        elem = ctx.attr("output_dtype", 0) if ctx.since >= 21 else 0
    if not elem and ctx.has_input(2):  # zero point of unknown type: ask shape inference
        elem = ctx.model.elem_type(ctx.outputs[0])
    elem = elem or _TP.UINT8
    _check_type(ctx, elem)
    return elem


def _check_type(ctx: NodeContext, elem: int) -> None:
    if elem in _FLOAT8:
        raise ctx.fail(f"float8 quantization ({_TP.DataType.Name(elem)}) is not supported by the bridge; "
                       "use an integer type (uint8, int8, int16, uint16, int4, uint4)")
    if elem not in _INT_TYPES and elem != _TP.INT32:
        raise ctx.fail(f"quantized type {_TP.DataType.Name(elem)} is not supported")


def _feeds_only_dequantize(ctx: NodeContext) -> bool:
    """True when Q's output is no graph output and every consumer is a DQ reading it as x."""
    out = ctx.outputs[0]
    uses = ctx.model.consumers(out)
    return (out not in ctx.model.output_names and bool(uses)
            and all(n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx") and i == 0 for n, i in uses))


@converter("QuantizeLinear", versions=(10, 13, 19, 21), static=(1, 2))
def convert_quantize(ctx: NodeContext) -> nn.Module:
    axis, block_size = _axis_and_block(ctx)
    elem = _quantized_type(ctx)
    if elem == _TP.INT32:
        raise ctx.fail("QuantizeLinear cannot produce int32")
    return QuantizeLinear(axis, block_size, elem, carrier=_feeds_only_dequantize(ctx))


@converter("DequantizeLinear", versions=(10, 13, 19, 21), static=(1, 2))
def convert_dequantize(ctx: NodeContext) -> nn.Module:
    axis, block_size = _axis_and_block(ctx)
    elem = ctx.model.elem_type(ctx.inputs[0])
    if elem:
        _check_type(ctx, elem)
    return DequantizeLinear(axis, block_size)
