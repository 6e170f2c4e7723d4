"""`geta-onnx inspect`: what a model is made of, and whether the bridge supports it."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import onnx

from .bridge import registry
from .graph import load_model
from .graph.half import computes_in_half
from .graph.interface import adapt_interface
from .graph.model import OnnxModel
from .graph.normalize import with_input_shapes
from .graph.quantized import as_float
from .graph.stats import model_stats
from .qadg import analyze
from .quant.recurrent import find_lstms
from .quant.tables import find_tables


def _shape_str(model: OnnxModel, vi: onnx.ValueInfoProto) -> dict:
    info = model.info(vi.name)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type).name if info and info.elem_type else "?"
    shape = ["?" if d is None else d for d in info.shape] if info and info.shape is not None else None
    return {"name": vi.name, "dtype": dtype, "shape": shape}


def unsupported_ops(model: OnnxModel, decided: list[str] = ()) -> list[dict]:
    """Ops the bridge lacks, but for the `decided` If nodes (shape_decided_ifs)."""
    registry._ensure_loaded()
    seen: dict[tuple, dict] = {}
    decided = set(decided)
    for n in model.nodes:
        if n.name not in decided and registry.lookup(n.domain, n.op_type, model.opset(n.domain)) is None:
            key = (n.domain or "ai.onnx", n.op_type, model.opset(n.domain))
            entry = seen.setdefault(key, {"domain": key[0], "op_type": n.op_type, "opset": key[2], "nodes": []})
            entry["nodes"].append(n.name)
    return list(seen.values())


def shape_decided_ifs(model: OnnxModel) -> list[str]:
    """If nodes whose condition reads shapes only: compress decides them on the data and
    trains the taken branch (graph/branches.py)."""
    from .graph.branches import value_conditions

    reads = value_conditions(model.proto)
    return [n.name for n in model.nodes if n.op_type == "If" and n.name not in reads]


def inspect_model(path: str | Path, shapes: dict[str, tuple[int, ...]] | None = None,
                  values: dict[str, str] | None = None) -> dict:
    """`values`: inputs fixed for the run (--input-value, graph/interface.py), as compress
    would train the model."""
    model, quantized = as_float(load_model(path))  # an int8 QDQ file: the float model compress trains
    if values:
        model, _ = adapt_interface(model, values, move_batch=False)
    if shapes:
        model = with_input_shapes(model, shapes)
    stats = model_stats(model)
    qadg = analyze(model)
    ifs = shape_decided_ifs(model)
    reasons = Counter(g.reason for g in qadg.groups if not g.prunable)
    return {
        "model": str(path),
        "ir_version": model.proto.ir_version,
        "opset": model.opset(""),
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        "inputs": [_shape_str(model, vi) for vi in model.inputs],
        "outputs": [_shape_str(model, vi) for vi in model.outputs],
        "quantized": quantized,
        # a float16 / bfloat16 file: compress trains the float32 model it computes (graph/half.py)
        "half": computes_in_half(model.proto),
        **stats.to_dict(),
        # the tables compress stores in int8 (profile ort; every float initializer trains in the bridge)
        "embedding_tables": [{"name": name, "shape": list(model.initializers[name].dims), "gathers": len(gathers)}
                             for name, gathers in find_tables(model, frozenset(model.initializers))],
        # the LSTMs compress exports with int8 weights (profile ort, quant/recurrent.py)
        "int8_lstms": [{"node": node, "weights": list(weights),
                        "parameters": sum(math.prod(model.initializers[w].dims) for w in weights)}
                       for node, weights in find_lstms(model, frozenset(model.initializers))],
        "unsupported_ops": unsupported_ops(model, ifs),
        "shape_decided_ifs": ifs,
        "groups": {**qadg.summary(), "unprunable_reasons": dict(reasons.most_common()),
                   "list": [g.to_dict() for g in qadg.groups]},
    }


def _human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def render_text(r: dict) -> str:
    lines = [
        f"model     {r['model']}",
        f"opset     {r['opset']} (IR {r['ir_version']}){'  producer ' + r['producer'] if r['producer'] else ''}",
        f"nodes     {r['nodes']}",
    ]
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(r[kind]):
            label = kind if i == 0 else ""
            lines.append(f"{label:<9} {t['name']}: {t['dtype']} {t['shape']}")
    if r.get("quantized"):
        lines.append(f"quantized {r['quantized']}; the figures below are of that float model")
    if r.get("half"):
        lines.append("half      the model computes in float16 / bfloat16: compress trains it as the float32 model it "
                     "computes, and its file keeps the half inputs and outputs (docs/realworld.md)")
    lines.append(f"params    {r['params']:,} ({_human(r['params'])}) in float initializers")
    note = " (symbolic dims counted as 1; fix them with --shape)" if any(
        isinstance(d, str) for t in r["inputs"] for d in (t["shape"] or [])) else ""
    lines.append(f"MACs      {r['macs']:,} ({_human(r['macs'])}) per sample{note}")
    lines.append("ops       " + ", ".join(f"{k} {v}" for k, v in r["op_histogram"].items()))
    if r["ops"]:
        lines.append("")
        width = max([len("weighted op")] + [len(o["node"]) for o in r["ops"]])
        lines.append(f"{'weighted op':<{width}}  {'type':<13} {'params':>10} {'MACs':>14}")
        for o in r["ops"]:
            macs = "?" if o["macs"] is None else f"{o['macs']:,}"
            lines.append(f"{o['node']:<{width}}  {o['op_type']:<13} {o['params']:>10,} {macs:>14}")
    g = r["groups"]
    lines.append("")
    lines.append(f"pruning groups  {g['groups']} ({g['prunable_groups']} prunable: "
                 + ", ".join(f"{n} {k.split(':')[0]}(s) of width {k.split(':')[1]}" for k, n in g["kinds"].items()) + ")")
    lines.append(f"prunable share  {g['prunable_param_share']:.1%} of parameters, {g['prunable_mac_share']:.1%} of MACs"
                 f"  (analysis {g['analysis_seconds']:.2f} s)")
    for reason, n in list(g["unprunable_reasons"].items())[:8]:
        lines.append(f"  not prunable: {n} group(s): {reason}")
    if r.get("embedding_tables"):
        lines.append("embedding tables  " + ", ".join(f"{t['name']} {' x '.join(f'{d:,}' for d in t['shape'])}"
                                                      for t in r["embedding_tables"])
                     + " (int8, one step per column, in compress's ort export)")
    if r.get("int8_lstms"):
        lines.append("LSTMs             " + ", ".join(f"{t['node']} ({t['parameters']:,} weights)" for t in r["int8_lstms"])
                     + " (int8 weights, DynamicQuantizeLSTM, in compress's ort export)")
    lines.append("")
    if r.get("shape_decided_ifs"):
        ifs = r["shape_decided_ifs"]
        lines.append(f"If nodes        {len(ifs)} on tensor shapes, decided on the data before training (e.g. {ifs[0]})")
    if r["unsupported_ops"]:
        lines.append("unsupported ops (the bridge cannot train this model until they are supported):")
        for u in r["unsupported_ops"]:
            lines.append(f"  {u['domain']}::{u['op_type']} (opset {u['opset']}): {len(u['nodes'])} node(s), e.g. {u['nodes'][0]}")
    else:
        lines.append("unsupported ops: none")
    return "\n".join(lines)
