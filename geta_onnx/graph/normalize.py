"""Normalisation passes run on every loaded model.

Each pass takes a ModelProto and returns a new one; `normalize_model` runs them in order:

1. name_nodes          every node gets a unique, non-empty name (errors and maps use it)
2. toposort            nodes in topological order
3. fold_constants      nodes whose inputs are all constant are evaluated once. Constant
                       nodes and non-weight initializers are constants; folding stops at
                       weights (float initializers with more than one element), so
                       Transpose(W) -> MatMul keeps W trainable and a weight used twice
                       stays one tensor
4. fold_constant_nodes the remaining Constant nodes become initializers
5. inline_constant_ifs  an If whose condition is a constant becomes its taken branch
                       (graph/branches.py; conditions on shapes are decided on the data)
6. unlink_identity_initializers
                       Identity(initializer) becomes an initializer of its own: the
                       legacy exporter links EQUAL-valued tensors this way (e.g. zero
                       biases of different layers), which were independent parameters
7. infer_shapes        onnx shape inference with data propagation; onnxruntime's
                       symbolic shape inference where dims stay symbolic or unknown
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConfigError, ModelLoadError
from .internals import symbolic_shapes
from .model import FLOAT_TYPES, OnnxModel, fresh_name

log = logging.getLogger(__name__)

# Ops never folded: random, stateful, or with subgraphs.
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
            "Bernoulli", "If", "Loop", "Scan", "Dropout", "QuantizeLinear", "DequantizeLinear"}
_MAX_FOLD_ELEMENTS = 1 << 20


def normalize_model(model: OnnxModel) -> OnnxModel:
    proto = model.proto
    for step in (name_nodes, toposort, fold_constants, fold_constant_nodes, inline_constant_ifs,
                 unlink_identity_initializers):
        proto = step(proto)
    proto = infer_shapes(proto, label=model.label)
    return model.with_proto(proto)


def inline_constant_ifs(proto: onnx.ModelProto) -> onnx.ModelProto:
    from .branches import inline_ifs

    proto, notes = inline_ifs(proto)
    for line in notes:
        log.info(line)
    return proto


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def name_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    proto = _copy(proto)
    seen: Counter[str] = Counter()
    taken = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name or seen[node.name]:
            node.name = fresh_name(node.name or f"{node.op_type}_{i}", taken)
        seen[node.name] += 1
    return proto


def toposort(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Kahn's algorithm, stable with respect to the original order."""
    g = proto.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    producers = {o: idx for idx, n in enumerate(g.node) for o in n.output}
    deps: list[set[int]] = []
    for n in g.node:
        need = set()
        for name in node_reads(n):
            if name not in available and name in producers:
                need.add(producers[name])
        deps.append(need)
    users = defaultdict(list)
    for idx, need in enumerate(deps):
        for d in need:
            users[d].append(idx)
    remaining = [len(d) for d in deps]
    ready = sorted(i for i, r in enumerate(remaining) if r == 0)
    order: list[int] = []
    import heapq

    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(g.node):
        stuck = [g.node[i].name for i in range(len(g.node)) if i not in set(order)][:3]
        raise ModelLoadError(f"graph '{g.name}' has a cycle or a missing tensor near nodes {stuck}")
    if order == list(range(len(g.node))):
        return proto
    proto = _copy(proto)
    nodes = [proto.graph.node[i] for i in order]
    new_nodes = [onnx.NodeProto() for _ in nodes]
    for dst, src in zip(new_nodes, nodes):
        dst.CopyFrom(src)
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    return proto


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor name `node` reads: its inputs and, for If / Loop / Scan, the outer-scope
    names its bodies read."""
    names = list(node.input)
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
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


def fold_constant_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.op_type == "Constant" and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        return proto
    proto = _copy(proto)
    keep = []
    outputs = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            proto.graph.initializer.append(numpy_helper.from_array(_constant_value(node), node.output[0]))
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def unlink_identity_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    inits = {t.name: t for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    linked = [n for n in proto.graph.node
              if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs]
    if not linked:
        return proto
    proto = _copy(proto)
    drop = {n.name for n in linked}
    for n in linked:
        t = onnx.TensorProto()
        t.CopyFrom(inits[n.input[0]])
        t.name = n.output[0]
        proto.graph.initializer.append(t)
    keep = [n for n in proto.graph.node if n.name not in drop]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def _is_weight(t: onnx.TensorProto) -> bool:
    """Float tensors with more than one element are (potential) trainable weights."""
    return t.data_type in FLOAT_TYPES and int(np.prod(t.dims)) > 1


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate nodes whose inputs are all constants (shape arithmetic, Constant chains)."""
    from onnx.reference import ReferenceEvaluator

    g = proto.graph
    tensors = {t.name: t for t in g.initializer}
    consts: dict[str, np.ndarray | None] = {t.name: None for t in g.initializer if not _is_weight(t)}
    outputs = {o.name for o in g.output}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    folded: dict[str, np.ndarray] = {}
    drop: set[str] = set()
    for node in g.node:
        is_constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        if (node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD or (not node.input and not is_constant)
                or any(x and x not in consts for x in node.input)
                or any(o in outputs for o in node.output)):
            continue
        if is_constant:
            consts[node.output[0]] = _constant_value(node)
            continue  # fold_constant_nodes turns it into an initializer if still needed
        feeds = {}
        for x in node.input:
            if x:
                if consts[x] is None:
                    consts[x] = numpy_helper.to_array(tensors[x])
                feeds[x] = consts[x]
        try:
            single = helper.make_model(
                helper.make_graph([node], "fold", [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
                                  [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o]),
                opset_imports=[helper.make_opsetid("", opset)], ir_version=proto.ir_version)
            results = ReferenceEvaluator(single).run(None, feeds)
        except Exception as e:  # noqa: BLE001 - an op the evaluator lacks just stays a node
            log.debug("not folding %s (%s): %s", node.name, node.op_type, e)
            continue
        values = dict(zip([o for o in node.output if o], results))
        if any(np.asarray(v).size > _MAX_FOLD_ELEMENTS for v in values.values()):
            continue
        for name, value in values.items():
            consts[name] = folded[name] = np.asarray(value)
        drop.add(node.name)
    if not drop:
        return proto
    proto = _copy(proto)
    keep = [n for n in proto.graph.node if n.name not in drop]
    needed = {x for n in keep for x in node_reads(n)} | outputs  # If bodies read outer names too
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    for name, value in folded.items():
        if name in needed:
            proto.graph.initializer.append(numpy_helper.from_array(value, name))
    # drop initializers and Constant nodes that only fed folded nodes
    used = [t for t in proto.graph.initializer if t.name in needed]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(used)
    live = [n for n in proto.graph.node if not (n.op_type == "Constant" and n.output[0] not in needed)]
    del proto.graph.node[:]
    proto.graph.node.extend(live)
    return proto


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
    proto = _copy(model.proto)
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
