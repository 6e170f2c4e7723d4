"""GraphEditor: the one mutable graph layer, on onnx-graphsurgeon, for the passes that rewrite
a model (physical pruning, the QDQ export's passes).

    ed = GraphEditor(proto)                    # a copy: `proto` is never modified
    conv = ed.node("conv1")
    w = ed.const(conv.inputs[1])               # np.ndarray of an initializer
    conv.inputs[1] = ed.add_const("conv1_w", w * 2)
    y = ed.add_node("Relu", [conv.outputs[0]], "relu")   # the new node's output tensor
    new_proto = ed.finish()

Nodes and tensors are onnx-graphsurgeon's (gs.Node: `op`, `inputs`, `outputs`, `attrs`;
gs.Constant / gs.Variable): def-use is kept by gs itself (`tensor.inputs` is the producer,
`tensor.outputs` the readers), so a rewrite never rescans the graph. `finish` drops dead
nodes and unused initializers (gs cleanup), sorts topologically (gs toposort), and returns
the original ModelProto's fields (opsets, IR version, producer, metadata, functions) around
the rewritten graph, its shapes inferred again. The read-only analysis view is
graph.model.OnnxModel; weight_source there is the one walker from a tensor to its
initializer."""
from __future__ import annotations

import contextlib

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from .model import fresh_name

Tensor = gs.Tensor
Node = gs.Node


@contextlib.contextmanager
def _quiet():
    """onnx-graphsurgeon logs warnings (untyped tensors, cleanup notes) to stdout: errors only
    while we drive it, the caller's level restored after."""
    logger = gs.logger.G_LOGGER
    before = logger.severity
    logger.severity = logger.ERROR
    try:
        yield
    finally:
        logger.severity = before


def is_default_domain(node: Node) -> bool:
    return node.domain in ("", "ai.onnx", None)


class GraphEditor:
    def __init__(self, proto: onnx.ModelProto):
        self._model = onnx.ModelProto()
        self._model.CopyFrom(proto)  # gs exports initializers through the imported TensorProtos
        with _quiet():
            self.graph = gs.import_onnx(self._model)
        self._tensors: dict[str, Tensor] = self.graph.tensors()
        self._taken = set(self._tensors) | {n.name for n in self.graph.nodes}
        self._arrays: dict[str, np.ndarray] = {}

    # ---- look-ups ----------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The main graph's nodes (a snapshot: add / remove while iterating it is safe)."""
        return list(self.graph.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.graph.nodes if n.name == name)

    def nodes_by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.graph.nodes}

    @property
    def output_names(self) -> set[str]:
        return {t.name for t in self.graph.outputs}

    def tensor(self, ref: Tensor | str) -> Tensor:
        return self._tensors[ref] if isinstance(ref, str) else ref

    def producer(self, ref: Tensor | str) -> Node | None:
        """The node writing the tensor; None for graph inputs and initializers."""
        t = self.tensor(ref)
        return t.inputs[0] if t.inputs else None

    def consumers(self, ref: Tensor | str) -> list[Node]:
        """Every node reading the tensor, once each, in graph order of first use."""
        return list({id(n): n for n in self.tensor(ref).outputs}.values())

    def is_const(self, ref: Tensor | str) -> bool:
        return isinstance(self._lookup(ref), gs.Constant)

    def const(self, ref: Tensor | str) -> np.ndarray:
        """An initializer's value (cached per name until it is replaced)."""
        t = self.tensor(ref)
        if t.name not in self._arrays:
            self._arrays[t.name] = np.asarray(t.values)
        return self._arrays[t.name]

    def const_or_none(self, ref: Tensor | str) -> np.ndarray | None:
        return self.const(ref) if self.is_const(ref) else None

    def input_const(self, node: Node, i: int) -> np.ndarray | None:
        """Input i of `node` when it is an initializer, else None (also when absent)."""
        if i >= len(node.inputs) or not node.inputs[i].name:
            return None
        return self.const_or_none(node.inputs[i])

    def is_output(self, ref: Tensor | str) -> bool:
        return self.tensor(ref).name in self.output_names

    def _lookup(self, ref: Tensor | str) -> Tensor | None:
        return self._tensors.get(ref) if isinstance(ref, str) else ref

    # ---- edits -------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        return fresh_name(base, self._taken)

    def add_const(self, base: str, value: np.ndarray) -> gs.Constant:
        """A new initializer named `base` (or `base_1`, ... when taken). Arrays of ml_dtypes'
        int4 are written as INT4, packed two to a byte by onnx (gs 0.6 writes one per byte)."""
        value = np.asarray(value)
        name = self.unique(base)
        if value.dtype in (ml_dtypes.int4, ml_dtypes.uint4):
            t = gs.Constant(name, LazyValues(numpy_helper.from_array(value, name)))
        else:
            t = gs.Constant(name, value)
        self._tensors[t.name] = t
        return t

    def set_const(self, ref: Tensor | str, value: np.ndarray) -> None:
        """Replace an initializer's value in place (every reader sees the new one)."""
        t = self.tensor(ref)
        t.values = np.asarray(value)
        self._arrays.pop(t.name, None)

    def variable(self, base: str) -> gs.Variable:
        t = gs.Variable(self.unique(base))
        self._tensors[t.name] = t
        return t

    def add_node(self, op: str, inputs: list[Tensor | str], base: str, *, output: Tensor | None = None,
                 **attrs) -> Tensor:
        """A node `op` named `base` (unique), reading `inputs` ("" for an absent optional
        input), writing `output` or a new tensor `base_out`; returns the output. Its place in
        the order is decided by finish's toposort."""
        ins = [gs.Variable.empty() if isinstance(ref, str) and not ref else self.tensor(ref) for ref in inputs]
        out = output if output is not None else self.variable(f"{base}_out")
        self.graph.nodes.append(gs.Node(op, self.unique(base), attrs=attrs, inputs=ins, outputs=[out]))
        return out

    def set_input(self, node: Node, i: int, ref: Tensor | str) -> None:
        """Input i of `node` (absent optional inputs before it become empty)."""
        while len(node.inputs) <= i:
            node.inputs.append(gs.Variable.empty())
        node.inputs[i] = self.tensor(ref)

    def reroute(self, old: Tensor | str, new: Tensor, readers: list[Node]) -> None:
        """Every input of `readers` that reads `old` reads `new` instead."""
        old = self.tensor(old)
        for node in readers:
            for i, t in enumerate(node.inputs):
                if t is old:
                    node.inputs[i] = new

    def remove(self, node: Node) -> None:
        """Disconnect `node` (its outputs lose their producer); finish drops it."""
        node.inputs.clear()
        node.outputs.clear()
        self.graph.nodes.remove(node)

    def finish(self, label: str = "export") -> onnx.ModelProto:
        """Dead nodes and unused initializers dropped, nodes sorted, the original model's
        fields around the new graph, value_info inferred again."""
        from .normalize import infer_shapes

        with _quiet():
            self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            exported = gs.export_onnx(self.graph, do_type_check=False)
        out = self._model  # the editor's own copy: its fields, the new graph
        out.graph.CopyFrom(exported.graph)
        del out.graph.value_info[:]
        return infer_shapes(out, label=label)
