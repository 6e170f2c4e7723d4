"""Every row's numbers, measured the same way on the ONNX files themselves:

- quality: the benchmark's own metric in onnxruntime (bench.quality)
- MACs per sample (graph.stats; symbolic dims count 1) and relative BOPs (quant/bops.py's
  convention: only layers with a weight count; BOPs = MACs x weight bits x activation bits,
  relative to the fp32 original at 32 x 32 bits). For geta-onnx rows the report's values are
  used (it knows the learned bit widths below the 8-bit containers); the bits read off the
  graph are kept beside them as `relative_bops_graph`.
- onnxruntime's fusion: integer kernels vs weighted ops left in float (deployment.md)
- file size and latency: ONE geta_onnx.bench.measure_latency call over all rows, which
  times the models in rotating blocks (one live session at a time) so a noisy neighbour
  slows every row alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from geta_onnx.bench import measure_latency
from geta_onnx.export.report import fusion_report
from geta_onnx.graph import OnnxModel, load_model
from geta_onnx.graph.stats import WEIGHTED_OPS, model_stats, op_cost

from .models import Bench

_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
         onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}


def layer_bits(model: OnnxModel) -> list[tuple[str, int, int, int]]:
    """(node, MACs, weight bits, activation bits) of every weighted layer: an op whose weight is
    a float initializer (32 bits) or a DequantizeLinear of an integer initializer (its
    container width); its data input is quantized when it comes from a DequantizeLinear."""
    out = []
    for node in model.nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        bits = [_input_bits(model, x) for x in node.input[:2] if x]
        weights = [b for b in bits if b[0]]
        if not weights:
            continue  # activation x activation (attention scores): counted in neither model
        data = [b for b in bits if not b[0]]
        out.append((node.name, int(op_cost(model, node).macs or 0), weights[0][1], data[0][1] if data else 32))
    return out


def _input_bits(model: OnnxModel, name: str) -> tuple[bool, int]:
    """(is a weight, bit width) of a weighted op's input."""
    if model.is_initializer(name):
        return True, 32
    dq = model.producer(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return False, 32
    src = dq.input[0]
    if model.is_initializer(src):
        return True, _BITS.get(model.initializers[src].data_type, 32)
    q = model.producer(src)
    if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2 and model.is_initializer(q.input[2]):
        return False, _BITS.get(model.initializers[q.input[2]].data_type, 8)
    return False, 8  # a quantized activation of unknown container: the default uint8


def macs_of(path: Path) -> int:
    """MACs per sample as geta-onnx's report counts them (graph.stats, symbolic dims = 1)."""
    return int(model_stats(load_model(path, check=False)).macs)


def relative_bops(path: Path, fp32_bops: float) -> float:
    bops = sum(m * bw * ba for _, m, bw, ba in layer_bits(load_model(path, check=False)))
    return bops / fp32_bops


def fp32_bops(path: Path) -> float:
    return float(sum(m * 32 * 32 for _, m, _, _ in layer_bits(load_model(path, check=False))))


def fusion(path: Path) -> dict:
    """{"int8": integer kernels after onnxruntime's optimiser, "float": weighted ops left in float}."""
    rep = fusion_report(onnx.load(str(path)))
    return {"int8": sum(rep["fused"].values()), "float": sum(rep["float"].values()), "detail": rep["fused"]}


def measure(rows: list[dict], bench: Bench, *, batches=(1, 32), threads: int = 2, repeats: int = 50,
            warmup: int = 5, log=print) -> dict:
    """Fill every row with its numbers (in place); returns the latency settings used."""
    base = fp32_bops(bench.model)
    for r in rows:
        path = Path(r["path"])
        log(f"  scoring {r['id']} ...")
        r["quality"] = _plain(bench.quality(path))
        report = r.get("report", {})
        r["macs"] = int(report["macs"]["compressed"]) if "macs" in report else macs_of(path)
        r["relative_bops_graph"] = relative_bops(path, base)
        r["relative_bops"] = float(report.get("relative_bops", r["relative_bops_graph"]))
        r["fusion"] = fusion(path)
    log(f"  latency: {len(rows)} models in rotating blocks, batches {list(batches)}, {threads} threads, {repeats} repeats")
    results = measure_latency([r["path"] for r in rows], list(batches), threads=threads, repeats=repeats,
                              warmup=warmup, shapes=bench.latency_shapes, seq=bench.seq)
    ptq = next((res for r, res in zip(rows, results) if r["id"] == "ptq"), None)
    for r, res in zip(rows, results):
        r["size_bytes"] = res["size_bytes"]
        r["latency_ms"] = {b: v["p50"] for b, v in res["latency_ms"].items()}
        r["latency_detail"] = res["latency_ms"]
        r["speedup"] = res["speedup"]  # vs the first row, the fp32 original
        if ptq is not None:
            r["speedup_vs_ptq"] = {b: ptq["latency_ms"][b]["p50"] / v["p50"] for b, v in res["latency_ms"].items()}
    return {"batches": list(batches), "threads": threads, "repeats": repeats, "warmup": warmup,
            "statistic": "median (p50) of the repeats", "seq": bench.seq, "shapes": bench.latency_shapes,
            "method": "rotating blocks of runs, one live session at a time"}


def _plain(d: dict) -> dict:
    """JSON-friendly copy (numpy scalars to floats)."""
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items()}
