"""An input model that is already quantized (a QDQ model: onnxruntime's `quantize_static`
output, another tool's QDQ export, a geta-onnx export; onnxruntime's operator format, read as
QDQ first, graph/operator_format.py; or its dynamic quantization, graph/integer_ops.py):
trained from its dequantized float weights.

A QDQ file keeps each weight as an integer initializer read by a DequantizeLinear. No gradient
passes an integer tensor, so bridged as it is, nothing in it could train ("output 0 does not
depend on any weight"). `as_float` turns it into the float model it computes
(export.dequantize: every constant DequantizeLinear folded into the float weight it yields,
every activation Q -> DQ pair a Clip to its grid's range or a pass-through), which compress
trains and quantizes again. The user's file stays the reference that quality and speed are
compared with (OnnxModel.run_path). docs/realworld.md, "Models that are already quantized".

    model, note = as_float(load_model("model_int8.onnx"))
"""
from __future__ import annotations

import math

import onnx

from .model import OnnxModel

INTEGER_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                 onnx.TensorProto.INT32, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def quantized_weights(proto: onnx.ModelProto) -> int:
    """DequantizeLinear nodes of the main graph that read a constant integer initializer with
    more than one element (a weight; a bias in int32 counts too; a scalar is no weight)."""
    integer = {t.name for t in proto.graph.initializer
               if t.data_type in INTEGER_TYPES and math.prod(t.dims) > 1}
    return sum(1 for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in integer)


def as_float(model: OnnxModel) -> tuple[OnnxModel, str | None]:
    """(`model` as the float model its quantized graph computes, the log's line) when its
    weights are quantized (onnxruntime's dynamic quantization, integer_ops.float_dynamic; QDQ,
    quantized_weights); (`model`, None) otherwise."""
    from .integer_ops import float_dynamic
    from .operator_format import qdq_from_operators

    proto, operators = qdq_from_operators(model.proto)  # QLinear ops as DQ -> op -> Q: a QDQ model
    proto, dynamic = float_dynamic(proto)
    count = quantized_weights(proto)
    if not count and not dynamic:
        return model, None
    from ..export.dequantize import dequantize
    from .normalize import normalize_model

    floated = normalize_model(model.with_proto(dequantize(proto) if count else proto))
    floated.quantized_file = model.run_path
    held = [f"{operators} QLinear ops of onnxruntime's operator format"] if operators else []
    held += [f"{count} constant tensors behind DequantizeLinear"] if count else []
    held += [f"{dynamic} integer ops of onnxruntime's dynamic quantization"] if dynamic else []
    rounding = ("its activations' Q/DQ pairs become the clamps of their grids" if count else
                "its activations are no longer rounded per batch")
    return floated, (f"the model is already quantized ({', '.join(held)}): it trains from their dequantized float "
                     f"values, {rounding}, and the run quantizes it again; quality and speed are compared with the "
                     "file as given")
