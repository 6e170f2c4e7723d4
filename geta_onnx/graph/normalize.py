"""Normalisation passes run on every loaded model, on the graph layer (graph/editor.py).

`normalize_model` runs, in order:

1. name_nodes          every node gets a unique, non-empty name (errors and maps use it)
2. fold                nodes in topological order, stable in the file's order (GraphEditor
                       .stable_order), then
   fold_constants      nodes whose inputs are all constant are evaluated once. Constant
                       nodes and non-weight initializers are constants; folding stops at
                       weights (float initializers with more than one element), so
                       Transpose(W) -> MatMul keeps W trainable and a weight used twice
                       stays one tensor
   fold_constant_nodes the remaining Constant nodes become initializers
   and an initializer nothing reads is not written
3. inline_constant_ifs  an If whose condition is a constant becomes its taken branch
                       (graph/branches.py; conditions on shapes are decided on the data)
4. unlink_identity_initializers
                       Identity(initializer) becomes an initializer of its own: the
                       legacy exporter links EQUAL-valued tensors this way (e.g. zero
                       biases of different layers), which were independent parameters
5. infer_shapes        onnx shape inference with data propagation; onnxruntime's
                       symbolic shape inference where dims stay symbolic or unknown
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConfigError, ModelLoadError
from .editor import GraphEditor, Node, is_default_domain
from .internals import symbolic_shapes
from .model import FLOAT_TYPES, OnnxModel, bodies, fresh_name
from .roundtrip import copy_message

log = logging.getLogger(__name__)

# Ops never folded: random, stateful, or with subgraphs.
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
            "Bernoulli", "If", "Loop", "Scan", "Dropout", "QuantizeLinear", "DequantizeLinear"}
_MAX_FOLD_ELEMENTS = 1 << 20


def normalize_model(model: OnnxModel) -> OnnxModel:
    proto = fold(name_nodes(model.proto), label=model.label)
    proto = unlink_identity_initializers(inline_constant_ifs(proto), label=model.label)
    return model.with_proto(infer_shapes(proto, label=model.label))


def fold(proto: onnx.ModelProto, *, label: str = "model") -> onnx.ModelProto:
    """Sorted (stable), constants folded, Constant nodes as initializers (a new proto)."""
    return finish_folded(GraphEditor(proto), label=label)


def finish_folded(ed: GraphEditor, *, label: str, cleanup: bool = False) -> onnx.ModelProto:
    """`ed`'s graph with constants folded and Constant nodes as initializers, finished
    (`cleanup`: nodes that feed no output dropped too), shapes not inferred yet."""
    fold_constants(ed)
    fold_constant_nodes(ed)
    return ed.finish(label, cleanup=cleanup, infer=False)


def inline_constant_ifs(proto: onnx.ModelProto) -> onnx.ModelProto:
    from .branches import inline_ifs

    proto, notes = inline_ifs(proto)
    for line in notes:
        log.info(line)
    return proto


def name_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    proto = copy_message(proto)
    seen: Counter[str] = Counter()
    taken = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name or seen[node.name]:
            node.name = fresh_name(node.name or f"{node.op_type}_{i}", taken)
        seen[node.name] += 1
    return proto


def toposort(proto: onnx.ModelProto, *, label: str = "model") -> onnx.ModelProto:
    """The nodes in topological order, stable with respect to the file's (a new proto)."""
    return GraphEditor(proto).finish(label, cleanup=False, infer=False)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor name `node` reads: its inputs and, for If / Loop / Scan, the outer-scope
    names its bodies read."""
    names = list(node.input)
    for sub in bodies(node):
        local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        for n in sub.node:
            local.update(n.output)
        for n in sub.node:
            names.extend(x for x in node_reads(n) if x and x not in local)
    return names


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    kind = attr.name
    if kind == "value":
        return numpy_helper.to_array(attr.t)
    if kind == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if kind == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if kind == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if kind == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    if kind == "value_string":
        return np.array(attr.s.decode())
    if kind == "value_strings":
        return np.array([s.decode() for s in attr.strings])
    raise ModelLoadError(f"Constant node '{node.name}' uses '{kind}', which is not supported")


def _is_constant_node(node: Node) -> bool:
    return node.op == "Constant" and is_default_domain(node)


def fold_constant_nodes(ed: GraphEditor) -> None:
    """Each Constant node that is no graph output becomes an initializer of its output's name."""
    for node in ed.nodes:
        if _is_constant_node(node) and not ed.is_output(node.outputs[0]):
            ed.fold(node, [_constant_value(ed.node_proto(node))])


def unlink_identity_initializers(proto: onnx.ModelProto, *, label: str = "model") -> onnx.ModelProto:
    inits = {t.name for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    if not any(n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs for n in proto.graph.node):
        return proto
    ed = GraphEditor(proto)
    for node in ed.nodes:
        if node.op == "Identity" and ed.is_const(node.inputs[0]) and not ed.is_output(node.outputs[0]):
            ed.fold(node, [ed.const_proto(node.inputs[0])])
    return ed.finish(label, cleanup=False, infer=False)


def _is_weight(ed: GraphEditor, name: str) -> bool:
    """Float tensors with more than one element are (potential) trainable weights."""
    return ed.onnx_dtype(name) in FLOAT_TYPES and int(np.prod(ed.tensor(name).shape)) > 1


def fold_constants(ed: GraphEditor) -> None:
    """Evaluate nodes whose inputs are all constants (shape arithmetic, Constant chains); a
    folded node's outputs become initializers."""
    from onnx.reference import ReferenceEvaluator

    consts: dict[str, np.ndarray | None] = {n: None for n in ed.const_names() if not _is_weight(ed, n)}
    opset, ir_version = ed.opset(), ed.ir_version
    for node in ed.stable_order():
        is_constant = _is_constant_node(node)
        ins = [t.name for t in node.inputs]
        if (not is_default_domain(node) or node.op in _NO_FOLD or (not ins and not is_constant)
                or any(x and x not in consts for x in ins) or any(ed.is_output(o) for o in node.outputs)):
            continue
        proto = ed.node_proto(node)
        if is_constant:
            consts[node.outputs[0].name] = _constant_value(proto)
            continue  # fold_constant_nodes turns it into an initializer if still needed
        feeds = {}
        for x in ins:
            if x:
                if consts[x] is None:
                    consts[x] = numpy_helper.to_array(ed.const_proto(x))
                feeds[x] = consts[x]
        try:
            single = helper.make_model(
                helper.make_graph([proto], "fold", [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
                                  [helper.make_value_info(o, onnx.TypeProto()) for o in proto.output if o]),
                opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
            results = [np.asarray(r) for r in ReferenceEvaluator(single).run(None, feeds)]
        except Exception as e:  # noqa: BLE001 - an op the evaluator lacks just stays a node
            log.debug("not folding %s (%s): %s", node.name, node.op, e)
            continue
        if any(r.size > _MAX_FOLD_ELEMENTS for r in results):
            continue
        for name, value in zip([o for o in proto.output if o], results):
            consts[name] = value
        ed.fold(node, results)
    for node in ed.nodes:  # Constant nodes that only fed folded nodes
        if _is_constant_node(node) and not ed.consumers(node.outputs[0]) and not ed.is_output(node.outputs[0]):
            ed.remove(node)


def infer_shapes(proto: onnx.ModelProto, *, label: str) -> onnx.ModelProto:
    inferred = proto
    for _ in range(4):  # each round may pass one more ai.onnx.ml op on the way
        try:
            inferred = onnx.shape_inference.infer_shapes(inferred, check_type=False, strict_mode=False,
                                                         data_prop=True)
        except Exception as e:  # noqa: BLE001 - inference is best effort; the bridge works without it
            log.warning("%s: onnx shape inference failed (%s); continuing without shapes", label, e)
            break
        if not _shape_through_ml_ops(inferred):
            break
    if _has_unknown_shapes(inferred):
        symbolic = symbolic_shapes(inferred, label)
        if symbolic is not None:
            inferred = _keep_known_ranks(symbolic, inferred)
    return inferred


def _keep_known_ranks(symbolic: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's result, except where onnx inference knew a shape that it lost or
    guessed with another rank (it stops at an op it does not know, an ai.onnx.ml one)."""
    known = {vi.name: vi for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")}
    seen = set()
    for vi in symbolic.graph.value_info:
        seen.add(vi.name)
        mine = known.get(vi.name)
        if mine is not None and (not vi.type.tensor_type.HasField("shape") or
                                 len(vi.type.tensor_type.shape.dim) != len(mine.type.tensor_type.shape.dim)):
            vi.CopyFrom(mine)
    symbolic.graph.value_info.extend(vi for name, vi in known.items() if name not in seen)
    # an op it has no rule for (a com.microsoft DynamicQuantizeLSTM writing a graph output) can
    # leave entries without a type, which the checker refuses: keep onnx's there, or none
    typed = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    for field in (symbolic.graph.output, symbolic.graph.value_info):
        for vi in field:
            if vi.type.WhichOneof("value") is None and vi.name in typed:
                vi.CopyFrom(typed[vi.name])
    untyped = [vi for vi in symbolic.graph.value_info if vi.type.WhichOneof("value") is None]
    for vi in untyped:
        symbolic.graph.value_info.remove(vi)
    return symbolic


# ai.onnx.ml ops whose output has the input's shape, in float32 (scikit-learn's Scaler
# in front of a network): onnx and onnxruntime infer no shape for them, so every shape
# after them would stay unknown.
_ML_SAME_SHAPE = {"Scaler", "Normalizer"}


def _shape_through_ml_ops(proto: onnx.ModelProto) -> bool:
    """Give the outputs of _ML_SAME_SHAPE nodes their input's shape; True if any was new."""
    infos = {vi.name: vi for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output)}
    added = False
    for node in proto.graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type not in _ML_SAME_SHAPE:
            continue
        src, out = infos.get(node.input[0]), node.output[0]
        have = infos.get(out)
        if src is None or not src.type.tensor_type.HasField("shape") or \
                (have is not None and have.type.tensor_type.HasField("shape")):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in src.type.tensor_type.shape.dim]
        vi = helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, dims)
        if have is not None:
            have.CopyFrom(vi)
        else:
            proto.graph.value_info.append(vi)
        added = True
    return added


def _has_unknown_shapes(proto: onnx.ModelProto) -> bool:
    known = {vi.name for vi in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input)
             if vi.type.tensor_type.HasField("shape")}
    return any(o and o not in known for n in proto.graph.node for o in n.output)


def with_input_shapes(model: OnnxModel, shapes: dict[str, tuple[int, ...]]) -> OnnxModel:
    """Fix the dims of named graph inputs (e.g. a real sequence length) and re-infer shapes."""
    proto = copy_message(model.proto)
    known = {i.name: i for i in proto.graph.input}
    for name, dims in shapes.items():
        if name not in known:
            raise ConfigError(f"option '--shape': {model.label} has no graph input named '{name}' (inputs: "
                              f"{', '.join(sorted(known))})")
        tshape = known[name].type.tensor_type.shape
        if len(tshape.dim) != len(dims):
            raise ConfigError(f"option '--shape': input '{name}' of {model.label} has rank {len(tshape.dim)}, got "
                              f"shape {list(dims)}")
        for d, v in zip(tshape.dim, dims):
            d.Clear()
            d.dim_value = int(v)
    del proto.graph.value_info[:]
    for out in proto.graph.output:  # outputs are re-inferred from the new input shapes
        if out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.ClearField("shape")
    return model.with_proto(infer_shapes(proto, label=model.label))
