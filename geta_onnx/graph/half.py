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
    declared types it rewrote); (`proto` itself, 0) when nothing in it is half, without
    copying it."""
    if not computes_in_half(proto):
        return proto, 0
    out = copy_message(proto)
    return out, _graph(out.graph)


def computes_in_half(proto: onnx.ModelProto) -> bool:
    """Whether anything in `proto` is float16 / bfloat16 (what float32_graph would rewrite)."""
    return _graph(proto.graph, write=False) > 0


def _graph(g: onnx.GraphProto, write: bool = True) -> int:
    """How many half tensors, type attributes and declared types `g` (and its bodies) holds;
    `write`: each made float32 in place."""
    count = 0
    for t in g.initializer:
        if t.data_type in HALF_TYPES:
            count += 1
            if write:
                t.CopyFrom(_float32(t))
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in HALF_TYPES:
                count += 1
                if write:
                    a.t.CopyFrom(_float32(a.t))
            elif a.type == onnx.AttributeProto.INT and a.name == _TYPE_ATTRIBUTES.get(node.op_type) \
                    and a.i in HALF_TYPES:
                count += 1
                if write:
                    a.i = onnx.TensorProto.FLOAT
            for body in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                count += _graph(body, write)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        count += _retype(vi.type, write)
    return count


def _float32(t: onnx.TensorProto) -> onnx.TensorProto:
    """A half tensor as float32 under the same name (external data is loaded by then)."""
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)


def _retype(tp: onnx.TypeProto, write: bool = True) -> int:
    """How many half element types `tp` holds (tensors, and tensors inside sequences /
    optionals); `write`: each made float32."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type" and tp.tensor_type.elem_type in HALF_TYPES:
        if write:
            tp.tensor_type.elem_type = onnx.TensorProto.FLOAT
        return 1
    if kind == "sequence_type":
        return _retype(tp.sequence_type.elem_type, write)
    if kind == "optional_type":
        return _retype(tp.optional_type.elem_type, write)
    return 0


def _is_half(tp: onnx.TypeProto) -> bool:
    return tp.WhichOneof("value") == "tensor_type" and tp.tensor_type.elem_type in HALF_TYPES
