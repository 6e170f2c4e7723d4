"""OnnxModel: a read-mostly view of an ONNX ModelProto with def-use navigation.

The ModelProto stays the source of truth; this class only adds cached look-ups
(producer / consumers of a tensor, initializer arrays, inferred shapes and dtypes,
the opset of each domain). Rewrites create a new OnnxModel (`OnnxModel(new_proto)`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None  # a concrete size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorInfo:
    """What shape inference knows about one tensor."""

    elem_type: int  # onnx.TensorProto.DataType
    shape: tuple[Dim, ...] | None  # None: rank unknown

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)


def attr(node: onnx.NodeProto, name: str, default=None):
    """Attribute `name` of `node` as its Python value (onnx.helper.get_attribute_value), or
    `default`: the one attribute accessor of the package (the bridge decodes strings on top)."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs of `node` (If's branches, Loop's and Scan's bodies)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first not in `taken`, which it joins."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


# ops a weight may pass through between its initializer and the layer reading it: the QADG's
# groups and costs and the physical pruning see the same initializer behind them
WEIGHT_THROUGH = ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast", "Transpose")


def weight_chain(model: "OnnxModel", name: str, through=WEIGHT_THROUGH) -> list[onnx.NodeProto] | None:
    """The nodes between tensor `name` and the initializer it reads, nearest first, each of an
    op type in `through` ([] when `name` is an initializer); None when the chain reaches
    anything else (a graph input, another op)."""
    chain = []
    while name and not model.is_initializer(name):
        node = model.producer(name)
        if node is None or node.op_type not in through:
            return None
        chain.append(node)
        name = node.input[0]
    return chain if name else None


def weight_source(model: "OnnxModel", name: str, through=WEIGHT_THROUGH) -> str | None:
    """The initializer tensor `name` reads through a chain of `through` ops, or None."""
    chain = weight_chain(model, name, through)
    if chain is None:
        return None
    return chain[-1].input[0] if chain else name


def _type_info(type_proto: onnx.TypeProto) -> TensorInfo | None:
    if not type_proto.HasField("tensor_type"):
        return None
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return TensorInfo(tt.elem_type, None)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value) if d.dim_value >= 0 else None)  # some producers write -1 for "any"
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(tt.elem_type, tuple(dims))


@dataclass
class OnnxModel:
    """An ONNX model plus the file it came from (for error messages)."""

    proto: onnx.ModelProto
    path: Path | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # the file onnxruntime runs as this model where the user's file takes other inputs (an adapted
    # interface, graph/interface.py); None: `path`
    runs_as: Path | None = None
    # the user's already-quantized file this float model was read back from (graph/quantized.py):
    # the reference a speed budget is relative to; None for a float input
    quantized_file: Path | None = None

    # ---- identity -------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How error messages name this model."""
        return str(self.path) if self.path else (self.proto.graph.name or "<in-memory model>")

    @property
    def run_path(self) -> Path | None:
        """The file to open in onnxruntime for this model's inputs and outputs."""
        return self.runs_as or self.path

    def with_proto(self, proto: onnx.ModelProto) -> "OnnxModel":
        """A rewrite of this model: the same file identity, another graph."""
        return OnnxModel(proto, self.path, runs_as=self.runs_as, quantized_file=self.quantized_file)

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph

    @cached_property
    def opsets(self) -> dict[str, int]:
        """Opset version per domain ('' is the default ai.onnx domain)."""
        out = {}
        for imp in self.proto.opset_import:
            out["" if imp.domain == "ai.onnx" else imp.domain] = imp.version
        return out

    def opset(self, domain: str = "") -> int:
        return self.opsets.get("" if domain == "ai.onnx" else domain, 0)

    # ---- nodes and def-use ----------------------------------------------------------
    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.proto.graph.node)

    @cached_property
    def _producers(self) -> dict[str, onnx.NodeProto]:
        return {out: n for n in self.proto.graph.node for out in n.output if out}

    @cached_property
    def _consumers(self) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
        uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in self.proto.graph.node:
            for i, name in enumerate(n.input):
                if name:
                    uses[name].append((n, i))
        return uses

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        """The node that writes `tensor`, or None for graph inputs and initializers."""
        return self._producers.get(tensor)

    def consumers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """(node, input index) for every use of `tensor`."""
        return self._consumers.get(tensor, [])

    @cached_property
    def node_by_name(self) -> dict[str, onnx.NodeProto]:
        return {n.name: n for n in self.proto.graph.node}

    # ---- initializers -----------------------------------------------------------------
    @cached_property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.proto.graph.initializer}

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str) -> np.ndarray:
        """The value of an initializer as a (cached, read-only) numpy array."""
        if name not in self._arrays:
            arr = numpy_helper.to_array(self.initializers[name])
            arr.setflags(write=False)
            self._arrays[name] = arr
        return self._arrays[name]

    # ---- graph inputs and outputs -------------------------------------------------------
    @property
    def inputs(self) -> list[onnx.ValueInfoProto]:
        """Real graph inputs (IR < 4 models also list initializers as inputs: skipped)."""
        return [i for i in self.proto.graph.input if i.name not in self.initializers]

    @property
    def outputs(self) -> list[onnx.ValueInfoProto]:
        return list(self.proto.graph.output)

    @cached_property
    def output_names(self) -> frozenset[str]:
        return frozenset(o.name for o in self.proto.graph.output)

    # ---- tensor types and shapes --------------------------------------------------------
    @cached_property
    def _infos(self) -> dict[str, TensorInfo]:
        g = self.proto.graph
        infos: dict[str, TensorInfo] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            info = _type_info(vi.type)
            if info is not None:
                infos[vi.name] = info
        for t in g.initializer:
            infos[t.name] = TensorInfo(t.data_type, tuple(int(d) for d in t.dims))
        return infos

    def info(self, tensor: str) -> TensorInfo | None:
        return self._infos.get(tensor)

    def shape(self, tensor: str) -> tuple[Dim, ...] | None:
        info = self._infos.get(tensor)
        return info.shape if info else None

    def static_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The shape if every dimension is a known integer, else None."""
        info = self._infos.get(tensor)
        return info.shape if info is not None and info.is_static else None  # type: ignore[return-value]

    def elem_type(self, tensor: str) -> int | None:
        info = self._infos.get(tensor)
        return info.elem_type if info else None
