"""Models that compute in float16 or bfloat16, read as the float32 model they compute.

Files converted for a GPU (onnxconverter-common's `convert_float_to_float16`, an exporter's
`--fp16`) hold their weights and activations in a half type, with or without float16 inputs
and outputs. Trained as they are, every parameter, gradient and optimizer state would be a
half value too: the digits sample's loss was NaN at the first step. So the graph is read as
float32: every half initializer, Constant and value type becomes float32 (the values are
exact: a half value is a float32 value), and every Cast or EyeLike / Random* node that makes
a half tensor makes a float32 one. What the float32 model computes is what the file computes
with its rounding to half precision left out.

The file's signature stays the user's: graph/interface.py declares the half inputs and
outputs float32 for training and, in the export, puts them back behind a Cast (float16 in,
float32 inside, float16 out). Speed and quality are compared with the float32 model, not with
the half file: onnxruntime's CPU provider runs most half ops through Casts to float32
(docs/realworld.md, "Float16 models").

    proto, count = float32_graph(model.proto)   # count: half tensors and types rewritten
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .roundtrip import copy_message

HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
# ops whose integer attribute names the element type of the tensor they make
_TYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
                    "RandomNormalLike": "dtype", "RandomUniformLike": "dtype"}


def half_io(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The main graph's inputs and outputs declared float16 / bfloat16."""
    return [vi for vi in list(proto.graph.input) + list(proto.graph.output) if _is_half(vi.type)]


def float32_info(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """A copy of `vi` with its half element types float32."""
    out = copy_message(vi)
    _retype(out.type)
    return out


def float32_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(a copy of `proto` computing in float32, how many half tensors, attributes and
    declared types it rewrote); (`proto` itself, 0) when nothing in it is half."""
    out = copy_message(proto)
    count = _graph(out.graph)
    return (out, count) if count else (proto, 0)


def _graph(g: onnx.GraphProto) -> int:
    count = 0
    for i, t in enumerate(g.initializer):
        if t.data_type in HALF_TYPES:
            g.initializer[i].CopyFrom(_float32(t))
            count += 1
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in HALF_TYPES:
                a.t.CopyFrom(_float32(a.t))
                count += 1
            elif a.type == onnx.AttributeProto.INT and a.name == _TYPE_ATTRIBUTES.get(node.op_type) \
                    and a.i in HALF_TYPES:
                a.i = onnx.TensorProto.FLOAT
                count += 1
            for body in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                count += _graph(body)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        count += _retype(vi.type)
    return count


def _float32(t: onnx.TensorProto) -> onnx.TensorProto:
    """A half tensor as float32 under the same name (external data is loaded by then)."""
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)


def _retype(tp: onnx.TypeProto) -> int:
    """Half element types in `tp` (tensors, and tensors inside sequences / optionals) made
    float32; returns how many."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type" and tp.tensor_type.elem_type in HALF_TYPES:
        tp.tensor_type.elem_type = onnx.TensorProto.FLOAT
        return 1
    if kind == "sequence_type":
        return _retype(tp.sequence_type.elem_type)
    if kind == "optional_type":
        return _retype(tp.optional_type.elem_type)
    return 0


def _is_half(tp: onnx.TypeProto) -> bool:
    return tp.WhichOneof("value") == "tensor_type" and tp.tensor_type.elem_type in HALF_TYPES
