"""A small mutable view of a ModelProto for the export passes: def-use look-ups,
constants, new initializers with unique names, node removal, and `finish` (dead-node and
unused-initializer removal, topological order, shape inference, checker)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.model import attr as node_attr
from ..graph.model import fresh_name
from ..graph.normalize import infer_shapes, toposort


class Graph:
    def __init__(self, proto: onnx.ModelProto):
        self.proto = onnx.ModelProto()
        self.proto.CopyFrom(proto)
        self.g = self.proto.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        self._names = {n.name for n in self.g.node} | set(self.inits) | {
            o for n in self.g.node for o in n.output} | {i.name for i in self.g.input}
        self._arrays: dict[str, np.ndarray] = {}

    # ---- look-ups ----------------------------------------------------------------------
    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.g.node)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if tensor in n.input]

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if tensor in n.output), None)

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def const_or_none(self, name: str) -> np.ndarray | None:
        return self.const(name) if name in self.inits else None

    def const(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.inits[name])
        return self._arrays[name]

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        return node_attr(node, name, default)

    # ---- edits -------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        return fresh_name(base, self._names)

    def add_init(self, base: str, value: np.ndarray, tensor: onnx.TensorProto | None = None) -> str:
        name = self.unique(base)
        t = tensor if tensor is not None else numpy_helper.from_array(np.asarray(value), name)
        t.name = name
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def add_node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        """Append a node (order is fixed by `finish`); returns its output name."""
        out = self.unique(f"{base}_out")
        self.g.node.append(helper.make_node(op, inputs, [out], name=self.unique(base), **attrs))
        return out

    def remove(self, node: onnx.NodeProto) -> None:
        self.g.node.remove(node)

    def finish(self, label: str = "export") -> onnx.ModelProto:
        """Drop dead nodes and unused initializers, sort, infer shapes, check."""
        used = set(self.outputs)
        keep = []
        for node in reversed(toposort(self.proto).graph.node):
            if any(o in used for o in node.output if o):
                keep.append(node)
                used.update(i for i in node.input if i)
        del self.g.node[:]
        self.g.node.extend(reversed(keep))
        inits = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)
        del self.g.value_info[:]
        return infer_shapes(self.proto, label=label)
