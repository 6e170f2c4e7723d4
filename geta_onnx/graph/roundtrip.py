"""What writing an onnx-graphsurgeon graph back to ONNX must keep, for GraphEditor.finish
(graph/editor.py): the file's node order where the edits allow it (`stable_order`), weights in
the main graph although only a body reads them, graph inputs that are also initializers, the
file's input / output declarations, node doc strings and metadata. docs/measurements.md, "The
graph layer on onnx-graphsurgeon", says what each of these broke."""
from __future__ import annotations

import heapq

import onnx
import onnx_graphsurgeon as gs

from ..errors import ModelLoadError
from .model import bodies


def stable_order(nodes: list[gs.Node], keys: list[float], where: str) -> list[gs.Node]:
    """`nodes` in topological order, stable: Kahn's algorithm, the ready node with the
    smallest key first. A node waits for the producers of every tensor it reads, inside its
    If / Loop / Scan bodies too."""
    index = {id(n): i for i, n in enumerate(nodes)}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        producers = {index[id(t.inputs[0])] for t in _reads(node) if t.inputs and id(t.inputs[0]) in index}
        producers.discard(i)
        for p in producers:
            users[p].append(i)
        waiting[i] = len(producers)
    ready = [(keys[i], i) for i in range(len(nodes)) if not waiting[i]]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (keys[u], u))
    if len(order) != len(nodes):
        stuck = [nodes[i].name for i in range(len(nodes)) if waiting[i]][:3]
        raise ModelLoadError(f"{where} has a cycle or a missing tensor near nodes {stuck}")
    return [nodes[i] for i in order]


def signature(before, exported, written: set[str], declared: dict[str, onnx.ValueInfoProto],
              undeclared: set[str]) -> list[onnx.ValueInfoProto]:
    """Graph inputs or outputs in gs's order: as `declared` (GraphEditor.declare), else the
    file's declaration (gs may drop a shape or a denotation), else gs's; and the file's inputs
    that are also initializers still `written` (gs drops those: IR < 4 files declare every
    weight so) in their places, unless `undeclared`."""
    file = {vi.name: vi for vi in before}
    out = [declared.get(vi.name) or file.get(vi.name) or vi for vi in exported]
    present = {vi.name for vi in out}
    extra = [vi for vi in before if vi.name not in present and vi.name in written and vi.name not in undeclared]
    if not extra:
        return out
    place = {vi.name: i for i, vi in enumerate(before)}
    keys, last = [], -1.0
    for vi in out:  # a new input goes right after the one before it
        last = float(place[vi.name]) if vi.name in place else last + 1e-3
        keys.append(last)
    merged = sorted(zip(keys + [float(place[vi.name]) for vi in extra], range(len(out) + len(extra)), out + extra))
    return [vi for _, _, vi in merged]


def node_details(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The nodes with a doc string or metadata, by name (gs drops both)."""
    return {n.name: n for n in graph.node if n.doc_string or len(n.metadata_props)}


def restore_details(graph: onnx.GraphProto, details: dict[str, onnx.NodeProto]) -> None:
    for node in graph.node:
        if node.name in details:
            if details[node.name].doc_string:
                node.doc_string = details[node.name].doc_string
            node.metadata_props.extend(details[node.name].metadata_props)


def outer_initializers(graph: onnx.GraphProto, main: set[str], local: set[str]) -> list[onnx.TensorProto]:
    """gs writes a main-graph initializer that only an If / Loop / Scan body reads into that
    body's initializers: taken out of the bodies here (returned, once each) to stay main-graph
    initializers, where the bridge trains them and one copy serves every body."""
    found: dict[str, onnx.TensorProto] = {}

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            for body in bodies(node):
                outer = [t for t in body.initializer if t.name in main and t.name not in local]
                if outer:
                    rest = [t for t in body.initializer if not (t.name in main and t.name not in local)]
                    for t in outer:
                        found.setdefault(t.name, copy_message(t))
                    replace_field(body.initializer, rest)
                visit(body)

    visit(graph)
    return [t for name, t in found.items() if name not in {x.name for x in graph.initializer}]


def _reads(node: gs.Node) -> list[gs.Tensor]:
    """Every tensor `node` reads: its inputs and what its subgraphs read (gs links a body's
    outer-scope names to the outer tensors)."""
    tensors = list(node.inputs)
    for value in node.attrs.values():
        for sub in value if isinstance(value, list) else [value]:
            if isinstance(sub, gs.Graph):
                for inner in sub.nodes:
                    tensors.extend(_reads(inner))
    return tensors


def body_initializers(graph: onnx.GraphProto) -> set[str]:
    """Names of the initializers the file itself puts in If / Loop / Scan bodies."""
    names: set[str] = set()
    for node in graph.node:
        for body in bodies(node):
            names.update(t.name for t in body.initializer)
            names |= body_initializers(body)
    return names


def replace_field(field, items) -> None:
    """A repeated protobuf field's contents replaced by `items` (copied first: they may be its own)."""
    items = [copy_message(x) for x in items]
    del field[:]
    field.extend(items)


def copy_message(message):
    out = type(message)()
    out.CopyFrom(message)
    return out
