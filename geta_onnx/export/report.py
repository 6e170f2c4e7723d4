"""fusion_report: what onnxruntime's CPU graph optimiser makes of an exported model.

Builds a session with ORT_ENABLE_ALL and `optimized_model_filepath` (in a temporary
folder), reads the optimised graph back and counts the integer kernels the QDQ patterns
became versus the weighted ops left in float.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

FUSED = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "MatMulNBits", "ConvInteger",
         "MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM")
FLOAT = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul")


def optimized_graph(proto: onnx.ModelProto, threads: int = 1) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="geta-fusion-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(path)
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def fusion_report(proto: onnx.ModelProto) -> dict:
    """{"fused": {op: n}, "float": {op: n}, "float_nodes": [names of float weighted ops],
    "quantize": n Q left, "dequantize": n DQ left} for the onnxruntime CPU EP."""
    opt = optimized_graph(proto)
    ops = Counter(n.op_type for n in opt.graph.node)
    return {
        "fused": {op: ops[op] for op in FUSED if ops[op]},
        "float": {op: ops[op] for op in FLOAT if ops[op]},
        "float_nodes": sorted(n.name for n in opt.graph.node if n.op_type in FLOAT),
        "quantize": ops["QuantizeLinear"],
        "dequantize": ops["DequantizeLinear"],
    }
