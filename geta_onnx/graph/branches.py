"""If nodes whose branch is decided before training: the taken branch replaces the node.

The bridge trains one static graph, and the QADG groups channels of one graph, so an `If`
is inlined when its condition cannot change between the samples a run sees:
- a constant condition (after constant folding), always;
- a condition computed from tensor SHAPES only (Shape / Size, constants and shape
  arithmetic: `if frames == 1: squeeze`, `if state.shape[0] != 0`), at the shapes of the
  user's data. It is evaluated in onnxruntime on those samples at two batch sizes (all of
  them, and the first alone); both must agree, so the batch a model is trained at and the
  batch it runs at later take the same branch.
A condition that reads the VALUES of an input (`if sr == 16000` with `sr` fed at run time)
is never decided here: the node stays, and check_no_ifs_left's one-line error names the input.

Inlining: the branch's nodes and initializers move into the main graph in place of the If
(names that clash with the main graph get the If's name as prefix, nested subgraphs'
references included); each branch output takes the If output's name (an Identity when the
branch passes an outer tensor or one tensor twice). Nested Ifs are decided in later rounds.
The decisions are returned as one line each, for the log and the report.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..errors import ModelLoadError
from .editor import GraphEditor, Node

MAX_ROUNDS = 8  # nested Ifs: one level per round
_SHAPE_OPS = ("Shape", "Size")  # their outputs depend on shapes only


def inline_ifs(proto: onnx.ModelProto, samples: dict[str, np.ndarray] | None = None, *,
               label: str = "model") -> tuple[onnx.ModelProto, list[str]]:
    """(proto with decided Ifs inlined, one line per decision). `samples`: a few samples of
    every graph input (first axis the batch); None decides constant conditions only."""

    notes: list[str] = []
    for _ in range(MAX_ROUNDS):
        ifs = [n for n in proto.graph.node if n.op_type == "If" and n.domain in ("", "ai.onnx")]
        if not ifs:
            break
        decided = _constant_conditions(proto, ifs)
        shaped = {n.name for n in ifs if n.name not in decided and not _value_inputs(proto, n.input[0])}
        if shaped and samples:
            decided.update(_evaluate(proto, [n for n in ifs if n.name in shaped], samples, label))
        if not decided:
            break
        for node in ifs:
            if node.name in decided:
                how = "at the data's shapes" if node.name in shaped else "constant"
                notes.append(f"If '{node.name}': condition {bool(decided[node.name])} ({how}); "
                             f"{'then' if decided[node.name] else 'else'} branch inlined")
        proto = _inline_decided(proto, decided, label)
    return proto, notes


def value_conditions(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """If node -> the graph inputs whose VALUES its condition reads (never decided here)."""
    out = {}
    for n in proto.graph.node:
        if n.op_type == "If":
            reads = _value_inputs(proto, n.input[0])
            if reads:
                out[n.name] = reads
    return out


def decide_ifs(model, samples: dict[str, np.ndarray]):
    """(OnnxModel with every If decided on `samples` inlined and re-normalised, one line per
    decision); an If that stays is a one-line ModelLoadError (check_no_ifs_left)."""
    from .normalize import normalize_model

    if not any(n.op_type == "If" for n in model.proto.graph.node):
        return model, []
    proto, notes = inline_ifs(model.proto, samples, label=model.label)
    check_no_ifs_left(proto, model.label)
    return normalize_model(model.with_proto(proto)), notes


# ---- deciding ------------------------------------------------------------------------------
def _constant_conditions(proto: onnx.ModelProto, ifs: list[onnx.NodeProto]) -> dict[str, bool]:
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for n in ifs:
        if n.input[0] in inits:
            out[n.name] = bool(onnx.numpy_helper.to_array(inits[n.input[0]]).reshape(-1)[0])
    return out


def _value_inputs(proto: onnx.ModelProto, tensor: str) -> list[str]:
    """The graph inputs whose VALUES `tensor` depends on; the walk stops at Shape / Size,
    whose outputs depend on shapes only."""
    from .normalize import node_reads

    producers = {o: n for n in proto.graph.node for o in n.output}
    inputs = {i.name for i in proto.graph.input}
    reads, seen, stack = set(), set(), [tensor]
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in inputs:
            reads.add(name)
        elif name in producers and producers[name].op_type not in _SHAPE_OPS:  # else an initializer, or shapes
            stack.extend(node_reads(producers[name]))
    return sorted(reads)


def _evaluate(proto: onnx.ModelProto, ifs: list[onnx.NodeProto], samples: dict[str, np.ndarray],
              label: str) -> dict[str, bool]:
    """Each If's condition in onnxruntime on `samples` (all, then the first alone); only the
    conditions that agree (every element, both runs) are returned."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    conds = list(dict.fromkeys(n.input[0] for n in ifs))
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(c, onnx.TensorProto.BOOL, None) for c in conds)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        runs = [session.run(None, {k: samples[k] for k in names}),
                session.run(None, _first_sample(proto, {k: samples[k] for k in names}))]
    except Exception as e:  # noqa: BLE001 - onnxruntime's error text is the finding
        raise ModelLoadError(f"{label}: cannot evaluate the conditions of its If nodes on the data "
                             f"({str(e).splitlines()[0]}); check that the data fits the model's inputs") from None
    values = {}
    for i, c in enumerate(conds):
        seen = {bool(v) for run in runs for v in np.asarray(run[i]).reshape(-1)}
        if len(seen) == 1:
            values[c] = seen.pop()
    return {n.name: values[n.input[0]] for n in ifs if n.input[0] in values}


def _first_sample(proto: onnx.ModelProto, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`samples` cut to one along each input's batch axis (feeds.batch_names: a state
    [2, batch, 128] carries it on axis 1), else axis 0; scalars as they are."""
    from .feeds import batch_names
    from .model import OnnxModel

    model = OnnxModel(proto)
    lead = batch_names(model)
    out = {}
    for k, x in samples.items():
        x = np.asarray(x)
        dims = list((model.info(k).shape if model.info(k) else None) or ())
        axis = next((i for i, d in enumerate(dims) if d in lead), 0)
        out[k] = x if x.ndim == 0 else np.take(x, [0], axis=axis)
    return out


# ---- inlining ------------------------------------------------------------------------------
def _inline_decided(proto: onnx.ModelProto, decided: dict[str, bool], label: str) -> onnx.ModelProto:
    """Each decided If replaced by its taken branch, then what no longer feeds an output
    dropped (the conditions' arithmetic) and constants folded again (a new proto)."""
    from .normalize import finish_folded

    ed = GraphEditor(proto)
    for node in ed.nodes:
        if node.name in decided:
            _inline(ed, node, decided[node.name])
    return finish_folded(ed, label=label, cleanup=True)


def _inline(ed: GraphEditor, node: Node, taken_branch: bool) -> None:
    """The branch's nodes and initializers move into the main graph in the If's place. Its
    names that the main graph has are renamed `<If>/<name>` (a tensor renamed once is renamed
    wherever it is read, nested bodies included: gs shares the tensor objects)."""
    key = "then_branch" if taken_branch else "else_branch"
    branch = node.attrs[key]
    written = next(a.g for a in ed.original_node(node.name).attribute if a.name == key)
    defined = {t.name for t in written.initializer} | {o for n in written.node for o in n.output if o}
    local = {name: t for name, t in branch.tensors().items() if name in defined}
    for name in sorted(local):
        local[name].name = ed.unique(f"{node.name}/{name}") if ed.taken(name) else ed.claim(name)
        if isinstance(local[name], gs.Constant):
            ed.adopt_const(local[name])
    results, at = list(node.outputs), ed.remove(node)
    body = list(branch.nodes)
    produced = {id(t) for n in body for t in n.outputs}
    claimed: set[int] = set()
    identities = []
    for src, dst in zip(branch.outputs, results):
        if not dst.name:
            continue
        if id(src) in produced and id(src) not in claimed:  # the If's output takes its place
            claimed.add(id(src))
            ed.reroute(src, dst, list(src.outputs))
            producer = src.inputs[0]
            producer.outputs[producer.outputs.index(src)] = dst
        else:
            identities.append((src, dst))
    for n in body:
        n.name = ed.unique(f"{node.name}/{n.name}") if ed.taken(n.name) else ed.claim(n.name)
    for src, dst in identities:
        ed.add_node("Identity", [src], f"{node.name}/output_{dst.name}", output=dst)
    ed.place(body + [dst.inputs[0] for _, dst in identities], at)


def check_no_ifs_left(proto: onnx.ModelProto, label: str) -> None:
    """A one-line error for an If that stays: the inputs its condition reads by value, or
    else a condition that changes with the batch."""
    left = [n for n in proto.graph.node if n.op_type == "If"]
    if not left:
        return
    node = left[0]
    reads = _value_inputs(proto, node.input[0])
    if reads:
        fixed_dims = {vi.name for vi in proto.graph.input
                      if all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
        if set(reads) <= fixed_dims:  # a sample rate, a flag: one value per run
            fix = " ".join(f"--input-value {r}=VALUE" for r in reads)
            how = f"give the value the model is deployed with ({fix}) and the branch it takes is compressed"
        else:
            how = "export the model for one branch and compress that file"
        raise ModelLoadError(f"{label}: If node '{node.name}' branches on the values of input(s) {', '.join(reads)}; "
                             f"geta-onnx trains one static graph: {how}")
    raise ModelLoadError(f"{label}: If node '{node.name}' branches on tensor shapes, and its condition differs "
                         "between the data's batch and a batch of 1 (or no data decided it); export the model "
                         "without that branch, or train on data of the shapes it is deployed at")
