"""A static leading batch of 1 -> a symbolic batch, where the graph allows it.

The torch exporters without `dynamic_axes` write every input as [1, ...] and fold the batch
into shape constants: Reshape(x, [1, 512]), Expand(cls_token, [1, 1, D]), a Slice ending at
1 on axis 0. Such a model trains at batch 8 only after those constants follow the batch:

    change = make_batch_dynamic(model, samples)   # samples: {input name: (n >= 3, ...) array}
    change.dynamic          # True: change.model accepts any batch (proven), else the original
    change.rewrites         # what was changed, for the report

Rewrites (graph inputs and outputs get the dim "batch"; intermediate shapes are re-inferred):
- Reshape with a constant target whose input carries the batch on axis k (found by shape
  inference at a probe batch, _track_reshapes): the target axis j where the batch lands
  becomes 0 (copy, when j == k) or -1 (infer: the batch merged with other axes, e.g.
  attention's (L, N*H, d) or (L*N, E)); when several axes could hold it, the one where the
  batch is the outer factor, never the last (feature) axis (_batch_target);
- Expand / ConstantOfShape with a constant target whose first entry is 1:
  Concat(Shape(first graph input)[0:1], target[1:]) (the batch read at run time);
- Slice with constant starts 0 and ends 1 on axis 0: the end becomes INT64_MAX.

Proof (never assumed): onnxruntime runs the rewritten model at batch 2 and 3 on the given
samples and must reproduce, sample by sample, the original at batch 1 (within
PROOF_RTOL / PROOF_ATOL of the output's scale). When it does not (a batch folded into some
other constant, an op mixing samples), `dynamic` is False, `reason` says why, and the caller
trains the original graph one sample per forward (bridge.OnnxModule.per_sample).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .editor import GraphEditor
from .model import OnnxModel, attr
from .session import ort_session

BATCH = "batch"
PROOF_RTOL, PROOF_ATOL = 1e-4, 1e-5  # per element, relative to the output's max |value|
_INT64_MAX = np.iinfo(np.int64).max


@dataclass
class BatchChange:
    model: OnnxModel  # the dynamic-batch model when proven, else the original
    static: bool  # the original's inputs all have a static leading 1
    dynamic: bool  # `model` accepts any batch
    rewrites: list[str] = field(default_factory=list)
    reason: str = ""  # why the batch could not be made dynamic
    branches: list[str] = field(default_factory=list)  # If nodes decided on the data (graph/branches.py)
    notes: list[str] = field(default_factory=list)  # other choices made on the model (preflight.scored_output)
    interface: object = None  # graph.interface.Interface: inputs adapted for training, restored in the export

    def describe(self) -> str:
        if not self.static:
            return "dynamic batch"
        if self.dynamic:
            return f"static batch 1 made dynamic ({len(self.rewrites)} shape constants follow the batch), proven at batch 2 and 3"
        return f"static batch 1 kept ({self.reason}): trained on micro-batches of 1 with gradient accumulation"


def static_batch_one(model: OnnxModel) -> bool:
    """Every graph input has rank >= 1 and a leading dim of exactly 1."""
    dims = []
    for vi in model.inputs:
        info = model.info(vi.name)
        if info is None or not info.shape:
            return False
        dims.append(info.shape[0])
    return bool(dims) and all(d == 1 for d in dims)


def make_batch_dynamic(model: OnnxModel, samples: dict[str, np.ndarray] | None) -> BatchChange:
    """See the module docstring. `samples`: at least 3 samples per graph input (e.g. the
    first batch of the training data); None skips the proof (the result is then not used)."""
    if not static_batch_one(model):
        return BatchChange(model, static=False, dynamic=True)
    batch_one, seen = _shapes(model.proto), set()
    candidate, rewrites = _candidate(model, batch_one, frozenset(), seen)
    if samples is None:
        return BatchChange(model, static=True, dynamic=False, rewrites=rewrites, reason="no samples to prove it on")
    reason = _prove(model, candidate, samples)
    # merged batch axes whose layout the shapes leave open: try the other reading, per kind of
    # Reshape (one attention block's pattern repeats in every layer), at most 2^MAX_AMBIGUOUS proofs
    kinds = sorted(seen)
    if reason and 0 < len(kinds) <= MAX_AMBIGUOUS:
        for mask in range(1, 2 ** len(kinds)):
            inner = frozenset(sig for b, sig in enumerate(kinds) if mask >> b & 1)
            other, other_rewrites = _candidate(model, batch_one, inner, set())
            if not _prove(model, other, samples):
                return BatchChange(other, static=True, dynamic=True, rewrites=other_rewrites)
    if reason:
        return BatchChange(model, static=True, dynamic=False, rewrites=rewrites, reason=reason)
    return BatchChange(candidate, static=True, dynamic=True, rewrites=rewrites)


MAX_AMBIGUOUS = 3


def _candidate(model: OnnxModel, batch_one: dict, inner: frozenset, seen: set) -> tuple[OnnxModel, list[str]]:
    """The model with every rewrite of the module docstring (not yet proven)."""
    from .normalize import infer_shapes

    ed = GraphEditor(model.proto)
    rewrites = _rewrite(ed)
    proto = ed.finish(model.label, cleanup=False, infer=False)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = BATCH
    rewrites += _track_reshapes(proto, batch_one, inner, seen)
    del proto.graph.value_info[:]
    return model.with_proto(infer_shapes(proto, label=model.label)), rewrites


def restore_batch_one(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The user's signature back: graph inputs / outputs with the dim "batch" get 1 again
    (the rewritten constants read the batch at run time, so 1 stays valid)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for vi in list(out.graph.input) + list(out.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_param == BATCH:
            dims[0].dim_value = 1
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out, check_type=False, strict_mode=False)


# ---- rewrites -------------------------------------------------------------------------------
def _rewrite(ed: GraphEditor) -> list[str]:
    """The Expand / ConstantOfShape and Slice rules of the module docstring."""
    first = ed.graph.inputs[0]
    batch_dim = None  # Shape(first input)[0:1], made once when an Expand / ConstantOfShape needs it
    done, reading = [], []  # reading: the new nodes that read the batch, placed first
    for node in ed.nodes:  # Reshapes: _track_reshapes, which needs the batch axis of the input
        op = node.op
        if op in ("Expand", "ConstantOfShape"):
            slot = 1 if op == "Expand" else 0
            target = ed.input_const(node, slot)
            if target is None or target.ndim != 1 or len(target) < 2 or target[0] != 1:
                continue
            if batch_dim is None:
                shape = ed.add_node("Shape", [first], "geta_batch_dim__Shape", output=ed.variable("geta_batch_dim__shape"))
                bounds = [ed.add_const(f"geta_batch_dim__{k}", np.array([v], np.int64)) for k, v in (("start", 0), ("end", 1))]
                batch_dim = ed.add_node("Slice", [shape, *bounds], "geta_batch_dim__Slice", output=ed.variable("geta_batch_dim"))
                reading += [shape.inputs[0], batch_dim.inputs[0]]
            rest = ed.add_const(f"{node.name}__batch_rest", target[1:].astype(np.int64))
            out = ed.add_node("Concat", [batch_dim, rest], f"{node.name}__Concat",
                              output=ed.variable(f"{node.name}__batch_target"), axis=0)
            reading.append(out.inputs[0])
            ed.set_input(node, slot, out)
            done.append(f"{op} '{node.name}' target {target.tolist()} -> [batch, {', '.join(map(str, target[1:]))}]")
        elif op == "Slice" and len(node.inputs) >= 3:
            starts, ends = ed.input_const(node, 1), ed.input_const(node, 2)
            has_axes = len(node.inputs) > 3 and bool(node.inputs[3].name)
            axes = ed.input_const(node, 3) if has_axes else (np.arange(len(starts)) if starts is not None else None)
            if starts is None or ends is None or axes is None:
                continue
            hit = [k for k, a in enumerate(axes) if a == 0 and starts[k] == 0 and ends[k] == 1]
            if hit:
                new = ends.astype(np.int64)
                new[hit] = _INT64_MAX
                # a new initializer per node: a shared one may feed a non-batch use
                ed.set_input(node, 2, ed.add_const(f"{node.name}__batch_ends", new))
                done.append(f"Slice '{node.name}' end 1 on axis 0 -> the whole batch")
    ed.place(reading, at=-1.0)  # they read only a graph input and constants
    return done


def _track_reshapes(proto: onnx.ModelProto, batch_one: dict[str, list], inner: frozenset = frozenset(),
                    seen: set | None = None) -> list[str]:
    """The Reshape rule of the module docstring. The batch axis of a Reshape's input is found
    by comparing its shape at batch 1 (`batch_one`, the original's shapes) with its shape when
    the graph inputs take a batch of PROBE: exactly one axis is PROBE times larger. Reshapes
    are settled in graph order, shape inference re-run after each change (a Reshape after an
    unsettled one would see a wrong shape).

    An input axis of size > 1 at batch 1 holds the batch merged with other factors, either as
    their outer factor ((N*H, L, d)) or inner one ((L*N, E)); shapes cannot tell which. The
    outer one is assumed unless the Reshape's signature (batch-1 input dims, axis, target) is
    in `inner`; the signatures met are added to `seen` (make_batch_dynamic tries the others)."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    done: list[str] = []
    shapes = _probe_shapes(proto)
    for node in list(g.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        one, many = batch_one.get(node.input[0]), shapes.get(node.input[0])
        if not one or not many or len(one) != len(many) or not all(isinstance(d, int) for d in one + many):
            continue
        axes = [k for k, (a, b) in enumerate(zip(one, many)) if a != b]
        if len(axes) != 1 or many[axes[0]] != PROBE * one[axes[0]]:
            continue  # no batch here (a weight reshape), or a shape the rule cannot read
        target = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64)
        signature = (tuple(one), axes[0], tuple(target.tolist()))
        if one[axes[0]] > 1 and seen is not None:
            seen.add(signature)
        new = _batch_target(one, axes[0], target, attr(node, "allowzero", 0),
                            inner=signature in inner)
        if new is None or np.array_equal(new, target):
            continue
        name = f"{node.name}__batch_shape"
        g.initializer.append(numpy_helper.from_array(new, name))
        node.input[1] = name
        done.append(f"Reshape '{node.name}' target {target.tolist()} -> {new.tolist()}")
        shapes = _probe_shapes(proto)
    return done


PROBE = 7  # the batch of the shape probe: a prime that no model dimension is likely to be


def _probe_shapes(proto: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> dims (ints or None) by onnx shape inference with every graph input's
    batch set to PROBE."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    del work.graph.value_info[:]
    for vi in work.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_value = PROBE
    return _shapes(work)


def _shapes(proto: onnx.ModelProto) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - no shapes: nothing is rewritten, the proof decides
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return out


def _batch_target(one: list[int], k: int, target: np.ndarray, allowzero: int,
                  inner: bool = False) -> np.ndarray | None:
    """The Reshape target at any batch, from the input dims at batch 1 (`one`, the batch on
    axis k, as the outer factor of that axis or, with `inner`, the inner one) and the target
    at batch 1; None when the batch does not land on one target axis."""
    out = [one[i] if (t == 0 and not allowzero and i < len(one)) else int(t) for i, t in enumerate(target)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known == 0:
            return None
        out[out.index(-1)] = int(np.prod(one)) // known
    # the batch is the outer factor of input axis k (alone, or merged: attention's N*H), so in
    # the flat layout `outer` elements precede it and `inner` follow each of its entries
    split = k + 1 if inner else k
    outer, rest = int(np.prod(one[:split])), int(np.prod(one[split:]))  # elements before / after the batch

    def holds(j: int) -> bool:  # output axis j = a * batch * b: a from before the batch, b from after it
        before, after = int(np.prod(out[:j])), int(np.prod(out[j + 1:]))
        return bool(before and after and outer % before == 0 and rest % after == 0
                    and out[j] == outer // before * (rest // after))

    fits = [j for j in range(len(out)) if holds(j)]
    if not fits:
        return None
    # the batch as the outer factor of its axis (N, H*d -> N*H, d ...), but not merged into the
    # last axis, which a MatMul / Gemm / LayerNorm reads at a fixed size ((L, N, E) -> (L*N, E))
    lead = [j for j in fits if int(np.prod(out[:j])) == outer]
    j = next((j for j in lead + fits if j != len(out) - 1), fits[0])
    new = np.array(out, dtype=np.int64)
    new[j] = 0 if (j == k and not allowzero and out[j] == one[k]) else -1
    return new


# ---- proof ----------------------------------------------------------------------------------
def _prove(original: OnnxModel, candidate: OnnxModel, samples: dict[str, np.ndarray]) -> str:
    """'' when the candidate at batch 2 and 3 reproduces the original per sample."""
    names = [vi.name for vi in original.inputs]
    if any(n not in samples or len(samples[n]) < 3 for n in names):
        return "fewer than 3 samples to prove a dynamic batch on"
    try:
        ref, new = ort_session(original.proto), ort_session(candidate.proto)
        singles = [ref.run(None, {n: samples[n][k:k + 1] for n in names}) for k in range(3)]
        for b in (2, 3):
            outs = new.run(None, {n: samples[n][:b] for n in names})
            for j, out in enumerate(outs):
                want = np.concatenate([s[j] for s in singles[:b]])
                if out.shape != want.shape:
                    return f"output '{original.outputs[j].name}' has shape {list(out.shape)} at batch {b}"
                scale = float(np.abs(want).max()) if want.size else 0.0
                if not np.allclose(out, want, rtol=PROOF_RTOL, atol=PROOF_ATOL * max(scale, 1.0)):
                    return f"output '{original.outputs[j].name}' at batch {b} differs from the batch-1 runs"
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: the rewrite does not hold
        return f"onnxruntime refuses the rewritten graph at batch 2 ({str(e).splitlines()[0][:160]})"
    return ""
