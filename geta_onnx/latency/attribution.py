"""Where a whole model's time goes, read from onnxruntime's own profile of it.

The latency model adds one-layer kernel times (the table) to the time the whole model spends
outside its layers (the rest). Taken as the difference of two measurements, the whole model
now and the table measured earlier, the rest also holds whatever made the host faster or
slower in between: on the 2-vCPU AMD host of 2026-12-06 the same MiniLM export ran 60 or
88 ms per batch depending on the minute, and a rest of 73 ms (really 53) priced a 70 %-pruned
MiniLM 48 % slow (docs/latency.md, "The rest, attributed"). One profiled session instead
times the layers and every other node in the same runs, so its shares do not move with the
host, and its graph says which layer's channels each other node reads:

    split = time_split(proto, feeds, threads, nodes)   # nodes: the layers' node names
    split.layers / split.total                         # share of kernel time in the layers
    split.fixed / split.total                          # in nodes no layer feeds
    split.per_layer[i] / split.total                   # in nodes fed by layer i's outputs

A node's time is given to the layers nearest upstream of it in the graph onnxruntime runs
(through other non-layer nodes, stopping at layers), split evenly between them: a Softmax
behind the query and key projections shrinks with the heads they keep, a BiasGelu with the
FFN channels, a residual Add with the stream. A node with no layer upstream (the input's
Q, an embedding Gather) is fixed; so, in effect, is one fed only by layers whose outputs are
never pruned (LayerNorm on a hidden size no group removes).

onnxruntime renames the nodes it fuses. A layer is found in its optimised graph under its own
name, with a "_token_N" suffix (the NHWC QLinearConv), as "fused <name>" (a Gemm with its
activation: FusedGemm), as "<name>/MatMulAddFusion" (a MatMul with its bias Add, as a Gemm;
"fused <name>/MatMulAddFusion" with an activation too), or as "<tensor>_nchwc" for a tensor of
its fused chain (the float NCHWc Conv, named after the output of the BatchNormalization /
activation fused into it). When a layer is not found the profile cannot be split, and the
caller keeps the older fit (None).
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

# profiled runs: at least MIN_RUNS and MIN_SECONDS, at most MAX_RUNS (each run's events are
# kept in memory and parsed from JSON: a small model would otherwise profile thousands of runs)
WARMUP, MIN_RUNS, MAX_RUNS, MIN_SECONDS = 3, 10, 50, 0.3
# ops onnxruntime fuses into the conv before it (their output names its NCHWc node)
FUSED_AFTER = {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Add", "Sum",
               "HardSwish", "Mul"}
CHAIN = 4  # ops followed after a layer for its fused name


@dataclass
class Split:
    total: float  # ms of kernel time per run, all nodes
    layers: float  # ms in the layers' own kernels
    fixed: float  # ms in nodes that no layer feeds
    per_layer: np.ndarray  # (layers,) ms in the nodes each layer's outputs feed

    def to_json(self) -> dict:
        return {"total": self.total, "layers": self.layers, "fixed": self.fixed,
                "per_layer": [float(x) for x in self.per_layer]}


def time_split(proto: onnx.ModelProto, feeds: dict, threads: int, nodes: list[str],
               min_seconds: float = MIN_SECONDS) -> Split | None:
    """The kernel time of `proto` per run at the target, split between the layers named
    `nodes`, the nodes they feed (per layer) and the rest; None when onnxruntime's profile or
    its optimised graph cannot be read, or a layer is not found in it."""
    import onnxruntime as ort

    from ..bench.session import session_options

    with tempfile.TemporaryDirectory(prefix="geta-onnx-profile-") as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            for _ in range(WARMUP):
                sess.run(None, feeds)
            runs, start = 0, time.perf_counter()
            while runs < MIN_RUNS or (runs < MAX_RUNS and time.perf_counter() - start < min_seconds):
                sess.run(None, feeds)
                runs += 1
            events = json.loads(Path(sess.end_profiling()).read_text())
            optimized = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - the split is an aid: without it the older fit holds
            log.info("no profile of the whole model (%s)", e)
            return None
    kernel_ms = _kernel_ms(events, WARMUP + runs)
    return split_graph(proto, optimized, kernel_ms, nodes)


def _kernel_ms(events: list, runs: int, warmup: int = WARMUP) -> dict[str, float]:
    """Node name -> kernel ms per timed run: the sum over the runs after the `warmup` first of
    `runs` (which allocate), over the timed runs, so every node's share is of the same runs. A
    node inside a loop runs several times per run, and its events are dropped in proportion."""
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node.setdefault(e["name"][:-len("_kernel_time")], []).append(e["dur"] / 1e3)
    timed = runs - warmup
    return {name: float(np.sum(durs[len(durs) * warmup // runs:])) / timed for name, durs in per_node.items()}


def split_graph(original: onnx.ModelProto, optimized: onnx.ModelProto, kernel_ms: dict[str, float],
                nodes: list[str]) -> Split | None:
    """The Split of `kernel_ms` (optimised node name -> ms) over the optimised graph, whose
    layers are found by their names in `original` (module docstring)."""
    names = [n.name for n in optimized.graph.node]
    found = _find_layers(original, names, nodes)
    if found is None:
        return None
    layer_of = found  # optimised node name -> layer index
    producer = {out: n for n in optimized.graph.node for out in n.output}
    reached: dict[str, frozenset[int]] = {}

    def upstream(node) -> frozenset[int]:
        """The layers nearest upstream of a non-layer node (memoised, iterative: graphs are deep)."""
        stack = [node]
        while stack:
            n = stack[-1]
            if n.name in reached:
                stack.pop()
                continue
            todo = [p for t in n.input if (p := producer.get(t)) is not None
                    and p.name not in layer_of and p.name not in reached]
            if todo:
                stack.extend(todo)
                continue
            found_here: set[int] = set()
            for t in n.input:
                p = producer.get(t)
                if p is None:
                    continue
                found_here |= {layer_of[p.name]} if p.name in layer_of else reached[p.name]
            reached[n.name] = frozenset(found_here)
            stack.pop()
        return reached[node.name]

    per_layer = np.zeros(len(nodes))
    layers_ms = fixed = 0.0
    for n in optimized.graph.node:
        ms = kernel_ms.get(n.name, 0.0)
        if n.name in layer_of:
            layers_ms += ms
            continue
        feeders = upstream(n)
        if not feeders:
            fixed += ms
        else:
            for i in feeders:
                per_layer[i] += ms / len(feeders)
    total = float(sum(kernel_ms.get(n, 0.0) for n in names))
    if total <= 0 or layers_ms <= 0:
        return None
    return Split(total, layers_ms, fixed, per_layer)


def _find_layers(original: onnx.ModelProto, optimized_names: list[str], nodes: list[str]) -> dict[str, int] | None:
    """Optimised node name -> index into `nodes`, for every layer; None (logged) when one is
    missing."""
    available = set(optimized_names)
    renamed: dict[str, list[str]] = {}  # original name -> optimised names it may have become
    for name in optimized_names:
        base = _unfused(name)
        if base != name:
            renamed.setdefault(base, []).append(name)
    consumers: dict[str, list] = {}
    for n in original.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    by_name = {n.name: n for n in original.graph.node}
    found: dict[str, int] = {}
    for i, node in enumerate(nodes):
        candidates = [node] + renamed.get(node, [])
        if node in by_name:
            candidates += [t + "_nchwc" for t in _chain(by_name[node], consumers)]
        hit = next((c for c in candidates if c in available and c not in found), None)
        if hit is None:
            log.info("latency profile: layer %s not found in onnxruntime's optimised graph", node)
            return None
        found[hit] = i
    return found


def _unfused(name: str) -> str:
    """The original node name behind an optimised one (module docstring): "fused a/MatMulAddFusion_token_2"
    -> "a"; a name onnxruntime kept comes back as it is."""
    name = re.sub(r"_token_\d+$", "", name)
    name = name.removesuffix("/MatMulAddFusion")
    return name.removeprefix("fused ")


def _chain(node, consumers: dict[str, list]) -> list[str]:
    """The output tensors of `node` and of the ops fused after it, in order."""
    out, n = [], node
    for _ in range(CHAIN + 1):
        if not n.output:
            break
        out.append(n.output[0])
        nxt = consumers.get(n.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type not in FUSED_AFTER:
            break
        n = nxt[0]
    return out
