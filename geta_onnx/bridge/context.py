"""NodeContext: what a converter may know about its node at build time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import ConversionError
from ..graph.model import Dim, OnnxModel
from ..graph.model import attr as node_attr

_ABSENT = object()  # attr() default: tells a missing attribute from one whose value is None


@dataclass
class NodeContext:
    node: onnx.NodeProto
    model: OnnxModel
    opset: int  # the model's opset for the node's domain
    since: int  # the op's since_version at that opset
    params: frozenset[str]  # initializer names that became trainable parameters

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def inputs(self) -> list[str]:
        return list(self.node.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.node.output)

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute as a Python value (graph.model.attr), bytes decoded to str and tensors
        to numpy."""
        value = node_attr(self.node, name, _ABSENT)
        if value is _ABSENT:
            return default
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode() for v in value]
        if isinstance(value, onnx.TensorProto):
            return onnx.numpy_helper.to_array(value)
        return value

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def const(self, i: int) -> np.ndarray | None:
        """The build-time value of input i if it is a constant (not a parameter), else None."""
        if not self.has_input(i):
            return None
        name = self.node.input[i]
        if name in self.params or not self.model.is_initializer(name):
            return None
        return self.model.array(name)

    def const_ints(self, i: int) -> list[int] | None:
        value = self.const(i)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def input_shape(self, i: int) -> tuple[Dim, ...] | None:
        return self.model.shape(self.node.input[i]) if self.has_input(i) else None

    def output_shape(self, i: int = 0) -> tuple[Dim, ...] | None:
        return self.model.shape(self.node.output[i]) if i < len(self.node.output) else None

    def input_rank(self, i: int) -> int | None:
        shape = self.input_shape(i)
        return None if shape is None else len(shape)

    def fail(self, reason: str) -> ConversionError:
        """An error to raise for an input the converter cannot handle."""
        return ConversionError(self.name, self.op_type, reason)
