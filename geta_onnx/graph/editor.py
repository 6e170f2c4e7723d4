"""GraphEditor: the one mutable graph layer, on onnx-graphsurgeon, for the passes that rewrite
a model (the loader's normalisation, physical pruning, the QDQ export's passes).

    ed = GraphEditor(proto)                    # a copy: `proto` is never modified
    conv = ed.node("conv1")
    w = ed.const(conv.inputs[1])               # np.ndarray of an initializer
    conv.inputs[1] = ed.add_const("conv1_w", w * 2)
    y = ed.add_node("Relu", [conv.outputs[0]], "relu")   # the new node's output tensor
    new_proto = ed.finish()

Nodes and tensors are onnx-graphsurgeon's (gs.Node: `op`, `inputs`, `outputs`, `attrs`;
gs.Constant / gs.Variable): def-use is kept by gs itself (`tensor.inputs` is the producer,
`tensor.outputs` the readers), so a rewrite never rescans the graph. `finish` drops dead
nodes (gs cleanup, optional), sorts topologically and stably (`stable_order`), and returns
the original ModelProto's fields (opsets, IR version, producer, metadata, functions) around
the rewritten graph, its shapes inferred again (optional).

Stable: the nodes and initializers keep the file's order wherever the edits allow, new ones
come after (a new node as late as its readers let it). The bridge's modules, the QADG's group
ids and so the checkpoints follow that order; gs's own toposort sorts by depth and would
renumber them. What a gs round trip would lose comes back as the file had it
(graph/roundtrip.py).

The read-only analysis view is graph.model.OnnxModel; weight_source there is the one walker
from a tensor to its initializer."""
from __future__ import annotations

import contextlib

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from .model import fresh_name
from .roundtrip import (body_initializers, copy_message, node_details, outer_initializers, replace_field,
                        restore_details, signature, stable_order)

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
        self._taken = set(self._tensors) | {n.name for n in self.graph.nodes} | {t.name for t in proto.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._rank: dict[int, float] = {id(n): i for i, n in enumerate(self.graph.nodes)}  # order keys
        self._main_consts = {t.name for t in proto.graph.initializer}  # grows with add_const / fold
        self._body_consts = body_initializers(proto.graph)
        self._declared: dict[str, onnx.ValueInfoProto] = {}  # graph inputs / outputs written as given
        self._undeclared: set[str] = set()  # the file's inputs that are no inputs any more

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

    def const_names(self) -> list[str]:
        """The main graph's initializers that some node or output reads, in the file's order."""
        return [name for name, t in self.graph.tensors().items() if isinstance(t, gs.Constant)]

    def const_proto(self, ref: Tensor | str) -> onnx.TensorProto:
        """An initializer as a TensorProto (a copy; its dtype as written, bfloat16 too)."""
        t = self.tensor(ref)
        if isinstance(t._values, LazyValues):
            return copy_message(t._values.tensor)
        return numpy_helper.from_array(np.asarray(t.values), t.name)

    def onnx_dtype(self, ref: Tensor | str) -> int:
        """An initializer's onnx element type (onnx.TensorProto.FLOAT, ...)."""
        t = self.tensor(ref)
        if isinstance(t._values, LazyValues):
            return t._values.tensor.data_type
        return helper.np_dtype_to_tensor_dtype(np.asarray(t.values).dtype)

    def node_proto(self, node: Node) -> onnx.NodeProto:
        """`node` as ONNX writes it (attributes, subgraphs included)."""
        return OnnxExporter.export_node(node)

    def opset(self) -> int:
        return next((o.version for o in self._model.opset_import if o.domain in ("", "ai.onnx")), 0)

    @property
    def ir_version(self) -> int:
        return self._model.ir_version

    def is_output(self, ref: Tensor | str) -> bool:
        return self.tensor(ref).name in self.output_names

    def _lookup(self, ref: Tensor | str) -> Tensor | None:
        return self._tensors.get(ref) if isinstance(ref, str) else ref

    # ---- edits -------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        return fresh_name(base, self._taken)

    def taken(self, name: str) -> bool:
        return name in self._taken

    def claim(self, name: str) -> str:
        """`name` taken from now on (a name moved in from a body); returns it."""
        self._taken.add(name)
        return name

    def adopt_const(self, t: Tensor) -> None:
        """An initializer moved in from a body is the main graph's from now on (finish writes
        it there, whichever body reads it)."""
        self._main_consts.add(t.name)
        self._body_consts.discard(t.name)

    def original_node(self, name: str) -> onnx.NodeProto:
        """The main graph's node `name` as the file wrote it (its bodies' own initializers)."""
        return next(n for n in self._model.graph.node if n.name == name)

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
        self._main_consts.add(name)
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
        the order is decided by finish (stable_order)."""
        ins = [gs.Variable.empty() if isinstance(ref, str) and not ref else self.tensor(ref) for ref in inputs]
        out = output if output is not None else self.variable(f"{base}_out")
        node = gs.Node(op, self.unique(base), attrs=attrs, inputs=ins, outputs=[out])
        self._rank[id(node)] = len(self._rank)  # after every node there is (stable_order)
        self.graph.nodes.append(node)
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

    def fold(self, node: Node, values: list) -> None:
        """Replace `node` by its outputs' values (arrays or TensorProtos, one per non-empty
        output): each output becomes an initializer of its own name, read where it was."""
        outputs = [t for t in node.outputs if t.name]
        for t, value in zip(outputs, values, strict=True):
            self.set_value(t, value)
        self.remove(node)

    def set_value(self, ref: Tensor | str, value) -> None:
        """The tensor becomes an initializer holding `value` (an array, or a TensorProto whose
        dtype is kept), under its own name; every reader reads it."""
        t = self.tensor(ref)
        if isinstance(value, onnx.TensorProto):
            proto = copy_message(value)
            proto.name = t.name
        else:
            proto = numpy_helper.from_array(np.asarray(value), t.name)
        t.to_constant(LazyValues(proto))
        self._arrays.pop(t.name, None)
        self._main_consts.add(t.name)

    def rename(self, ref: Tensor | str, name: str) -> Tensor:
        """The tensor renamed `name` (a fresh name): every node reading or writing it, in the
        bodies too, follows (gs shares the tensor object)."""
        t = self.tensor(ref)
        was_const = t.name in self._main_consts
        if self._tensors.get(t.name) is t:
            del self._tensors[t.name]
        t.name = self.claim(name)
        self._tensors[name] = t
        if was_const:
            self._main_consts.add(name)
        return t

    # ---- the graph's signature ---------------------------------------------------------
    def declare(self, vi: onnx.ValueInfoProto, *, output: bool = False, replace: str | None = None) -> Tensor:
        """A graph input (or output) written as `vi` (its dims as given), in place of the one
        named `replace` or after the others; returns its tensor (existing, or a new one
        nothing reads yet)."""
        ios = self.graph.outputs if output else self.graph.inputs
        t = self._tensors.get(vi.name)
        if t is None or (replace is not None and replace != vi.name):
            t = gs.Variable(self.claim(vi.name))
            self._tensors[vi.name] = t
        if replace is not None:
            ios[[x.name for x in ios].index(replace)] = t
        elif not any(x is t for x in ios):
            ios.append(t)
        self._declared[vi.name] = vi
        return t

    def undeclare_input(self, name: str) -> None:
        """Input `name` is no graph input any more (the tensor stays, e.g. as a constant)."""
        self.graph.inputs = [t for t in self.graph.inputs if t.name != name]
        self._undeclared.add(name)

    def remove(self, node: Node) -> float:
        """Disconnect `node` (its outputs lose their producer); finish drops it. Returns its
        place in the order (for `place`)."""
        node.inputs.clear()
        node.outputs.clear()
        self.graph.nodes.remove(node)
        return self._rank.get(id(node), float(len(self._rank)))

    def place(self, nodes: list[Node], at: float) -> None:
        """`nodes` (a body's, moved in; or added) ordered at place `at`, in their order."""
        for j, node in enumerate(nodes):
            self._rank[id(node)] = at + (j + 1) / (len(nodes) + 1)
            if not any(n is node for n in self.graph.nodes):
                self.graph.nodes.append(node)
        self._tensors.update(self.graph.tensors())  # the names they brought

    def finish(self, label: str = "export", *, cleanup: bool = True, infer: bool = True) -> onnx.ModelProto:
        """The new model: dead nodes dropped (`cleanup`), nodes in stable_order, initializers
        in the file's order (new ones after; an initializer nothing reads is not written),
        the original model's fields around the new graph, value_info inferred again (`infer`;
        else gs's, from the file's)."""
        from .normalize import infer_shapes

        with _quiet():
            if cleanup:
                self.graph.cleanup(remove_unused_graph_inputs=False)
            self.graph.nodes = self.stable_order(label)
            exported = gs.export_onnx(self.graph, do_type_check=False)
        out = self._model  # the editor's own copy: its fields, the new graph
        original = {t.name: i for i, t in enumerate(out.graph.initializer)}
        moved = outer_initializers(exported.graph, self._main_consts, self._body_consts)
        written = {t.name for t in exported.graph.initializer} | {t.name for t in moved}
        inputs = signature(out.graph.input, exported.graph.input, written, self._declared, self._undeclared)
        outputs = signature(out.graph.output, exported.graph.output, set(), self._declared, self._undeclared)
        details = node_details(out.graph)
        out.graph.CopyFrom(exported.graph)
        inits = sorted([*out.graph.initializer, *moved], key=lambda t: original.get(t.name, len(original)))  # stable
        replace_field(out.graph.initializer, inits)
        replace_field(out.graph.input, inputs)
        replace_field(out.graph.output, outputs)
        restore_details(out.graph, details)
        if not infer:
            return out
        del out.graph.value_info[:]
        return infer_shapes(out, label=label)

    def stable_order(self, label: str = "model") -> list[Node]:
        """The main graph's nodes in topological order, stable: a node's place in the file
        (or where `place` put it), a new node's after all of them (graph/roundtrip.py)."""
        nodes = list(self.graph.nodes)
        keys = [self._rank.get(id(n), len(self._rank) + i) for i, n in enumerate(nodes)]
        return stable_order(nodes, keys, f"{label}: graph '{self.graph.name}'")
