"""One way to open an onnxruntime CPU session on a ModelProto (or its bytes / a path), for
everything that runs a graph to learn about it: shape probes, the batch proof, the search
for runnable input sizes, parity checks. Latency measurements open theirs in bench/session.py
(sequential execution, all graph optimisations, the run's thread count)."""
from __future__ import annotations

import onnx


def ort_session(proto: onnx.ModelProto | bytes | str, threads: int = 1, optimize: bool = True, log_level: int = 3):
    """`optimize` False: ORT_DISABLE_ALL (the op semantics, not onnxruntime's fused kernels).
    `log_level` 3 = errors only; 4 = nothing (failures the caller expects and handles)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = log_level
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = proto.SerializeToString() if isinstance(proto, onnx.ModelProto) else proto
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
