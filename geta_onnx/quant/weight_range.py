"""The weight grid onnxruntime's int8 kernels compute exactly on this CPU: `[quant] reduce_range`
(docs/deployment.md, "int8 kernels can compute another model").

onnxruntime runs a QDQ Conv / Gemm / MatMul as QLinearConv / QGemm / MatMulInteger on uint8
activations and int8 weights (u8s8). On x86 CPUs without VNNI its kernels multiply them with
VPMADDUBSW, which adds each pair of neighbouring products into a SATURATING int16: 2 x 255 x 127
does not fit, so the kernel computes another model than the QDQ file's own math (and than the
PyTorch fake-quant model it was trained as). Weights on a 7-bit grid (|q| <= 63 in the int8
container) fit: 2 x 255 x 63 = 32130 <= 32767. onnxruntime's own quantizer offers the same
remedy as `reduce_range`.

Whether the kernels saturate is decided by measurement, not by CPU flags: `int8_saturates`
runs one QDQ conv built to saturate (every pair of weights at +127 against activations near
255) with onnxruntime's graph optimizations on (the fused int8 kernel) and off (Dequantize-
Linear / float Conv / QuantizeLinear) and compares. A latency table records the probe of the
machine it was measured on (latency.table, `int8_saturates`), so `--latency-table` of another
target decides for that target, and compress then scores the int8 file as that target
computes it (`scored_unfused`).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from ..errors import ConfigError

REDUCED_BITS = 7  # the widest signed grid whose pair sums fit an int16 against uint8 activations
REDUCED_LEVEL = 2 ** (REDUCED_BITS - 1) - 1  # 63: its largest |q|
FULL_LEVEL = 2 ** 7 - 1  # 127: the int8 grid's

# The probe: a 3x3 conv over C channels, weights at +-LEVEL, activations quantized to 150..255
_C, _M, _HW = 32, 8, 6
_X_SCALE, _W_SCALE, _Y_SCALE = 0.02, 0.01, 8.0  # _Y_SCALE: no output reaches the uint8 Q's 255 steps


def resolve(config, profile: str, table_path: str = ""):
    """`config` (a QuantConfig) with reduce_range "auto" decided: "on" where the target's int8
    kernels saturate 8-bit weights (profile ort; TensorRT's int8 kernels do not), else "off".
    The target is the latency table's (`table_path`, [prune] latency_table) when that file
    records its probe, else this CPU. "on" with the tensorrt profile is a ConfigError (nothing
    to reduce there)."""
    return decide(config, profile, table_path)[0]


def decide(config, profile: str, table_path: str = ""):
    """(resolve's config, decision_note's line) from one read of the latency table file."""
    if config.reduce_range == "on" and profile == "tensorrt":
        raise ConfigError(option="quant.reduce_range",
                          detail="'on' applies to the ort profile (onnxruntime's u8s8 kernels); TensorRT's int8 "
                                 "kernels do not saturate: use 'auto' or 'off' with [export] profile = \"tensorrt\"")
    if config.reduce_range != "auto":
        return config, None
    table = _table(table_path)
    recorded = None if table is None else table.int8_saturates
    reduce = profile == "ort" and (int8_saturates() if recorded is None else recorded)
    return (dataclasses.replace(config, reduce_range="on" if reduce else "off"),
            _note(profile, table, table_path))


def table_probe(table_path: str) -> bool | None:
    """Whether the target's int8 kernels saturate, as the latency table file `table_path`
    records it; None without a file there or without the record (a table written before it,
    or timed by another tool). A damaged file is latency.table's ConfigError."""
    table = _table(table_path)
    return None if table is None else table.int8_saturates


def decision_note(given: str, profile: str, table_path: str) -> str | None:
    """The log's line when a latency table of another CPU decides (or cannot decide) the
    `given` reduce_range "auto" for its target (profile ort); None otherwise."""
    return _note(profile, _table(table_path), table_path) if given == "auto" else None


def _table(table_path: str):
    """The latency.table.LatencyTable at `table_path`, or None without a file there."""
    if not table_path or not Path(table_path).is_file():
        return None
    from ..latency.table import LatencyTable

    return LatencyTable.load(table_path)


def _note(profile: str, table, table_path: str) -> str | None:
    """decision_note's line for "auto" given `table` (None: no table file)."""
    from ..latency.table import cpu_name

    if profile != "ort" or table is None or table.target.cpu == cpu_name():
        return None
    if table.int8_saturates is None:
        return (f"latency table '{table_path}' ({table.target.cpu}) does not record whether its target's int8 kernels "
                "saturate full-range weights: [quant] reduce_range \"auto\" decided on this CPU; --reduce-range on "
                "or off decides for the target (docs/deployment.md)")
    how = "saturate" if table.int8_saturates else "compute full-range weights exactly"
    return (f"[quant] reduce_range \"auto\" decided for the latency table's target ({table.target.cpu}): its int8 "
            f"kernels {how}")


# the report's line for a file scored so (precision.scored_unfused)
UNFUSED_NOTE = ("{name} scored as its QDQ math (onnxruntime's basic graph optimizations): the latency table's target "
                "computes its full-range int8 weights exactly, this CPU's int8 kernels do not (docs/deployment.md); "
                "timed with this CPU's kernels")


def scored_unfused(config, table_path: str) -> bool:
    """Whether compress scores the int8 file with the QDQ model's own math (onnxruntime's basic
    graph optimizations: no fused int8 kernels) rather than this CPU's kernels: full-range
    weights (`config`, resolved) bound for a latency table's target whose kernels compute them
    exactly, on a CPU whose kernels do not. This CPU's score would be of another model than the
    target runs (and would ship the float twin by bench.choice's rule 0)."""
    if config.reduce_range != "off":
        return False
    return table_probe(table_path) is False and int8_saturates()


def weight_bits(config) -> tuple[int, int]:
    """The [b_l, b_u] every weight quantizer is held in: config.weight_bits, capped at
    REDUCED_BITS when reduce_range is on (an 8-bit weight then deploys on the 7-bit grid)."""
    lo, hi = config.weight_bits
    if config.reduce_range != "on":
        return lo, hi
    return min(lo, REDUCED_BITS), min(hi, REDUCED_BITS)


def describe() -> str:
    """The log's and the report's line for a run with reduce_range on: the grid and why."""
    return (f"8-bit weights train and deploy on a {REDUCED_BITS}-bit grid (|q| <= {REDUCED_LEVEL}; "
            "[quant] reduce_range = \"on\"): onnxruntime's u8s8 kernels on x86 CPUs without VNNI saturate "
            "full-range int8 weights (docs/deployment.md)")


# where an op reads its int8 weight: a QDQ file's DequantizeLinear, and the integer ops of a file
# quantized to onnxruntime's operator format (static QLinear*, dynamic *Integer)
WEIGHT_INPUT = {"DequantizeLinear": 0, "QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1,
                "MatMulInteger": 1, "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1}


def widest_int8_weight(proto) -> int:
    """The largest |q| of the int8 weights in the ModelProto `proto`: INT8 initializers that a
    DequantizeLinear or an integer op reads as its weight (WEIGHT_INPUT); 0 when there are
    none. Past SAFE_LEVEL a pair of neighbouring weights can overflow the int16 of a u8s8
    kernel that saturates; at or below it (a file quantized with reduce_range) none can."""
    return max(_widest_by_reader(proto).values(), default=0)


def _widest_by_reader(proto) -> dict[str, int]:
    """op type -> the largest |q| of the INT8 weights ops of that type read (WEIGHT_INPUT)."""
    from onnx import TensorProto, numpy_helper

    weights = {t.name: t for t in proto.graph.initializer if t.data_type == TensorProto.INT8}
    widest: dict[str, int] = {}
    for n in proto.graph.node:
        k = WEIGHT_INPUT.get(n.op_type)
        if k is None or len(n.input) <= k or n.input[k] not in weights:
            continue
        q = numpy_helper.to_array(weights[n.input[k]])
        if q.size:
            widest[n.op_type] = max(widest.get(n.op_type, 0), int(np.abs(q.astype(np.int16)).max()))
    return widest


SAFE_LEVEL = 64  # 2 x 255 x 64 = 32640 fits an int16: a 7-bit grid's [-64, 63] never saturates


def saturated_here(proto) -> bool:
    """Whether this CPU's fused int8 kernels compute another model than the ModelProto
    `proto`'s own math: int8 weights past SAFE_LEVEL on a CPU whose probe saturates. Such a
    file runs as itself with onnxruntime's basic optimizations (bench.session, `unfused`)."""
    return _saturated(widest_int8_weight(proto))


def _saturated(widest: int) -> bool:
    return widest > SAFE_LEVEL and int8_saturates()  # the probe runs only for a file it could concern


def saturation_note(path, proto=None) -> str | None:
    """`geta-onnx eval`'s line when the file at `path` (`proto`: its ModelProto, when loaded
    already) has int8 weights past SAFE_LEVEL and this CPU's fused int8 kernels saturate such
    weights (int8_saturates): its score is then of another model than the QDQ file's own math
    (docs/deployment.md); None otherwise."""
    import onnx

    by_reader = _widest_by_reader(proto if proto is not None else onnx.load(str(path)))
    widest = max(by_reader.values(), default=0)
    if not _saturated(widest):
        return None
    remedy = ("--unfused scores the QDQ file's own math, as a CPU with VNNI or ARM runs it"
              if by_reader.get("DequantizeLinear", 0) > SAFE_LEVEL else
              "its integer ops (QLinear / Integer) have no unfused form to score instead")
    return (f"note: {path} has int8 weights up to |q| = {widest} and this CPU's onnxruntime int8 kernels saturate "
            f"weights past {SAFE_LEVEL} (x86 without VNNI): the score is of the model those kernels compute, which "
            f"a CPU with VNNI or ARM does not; {remedy} (docs/deployment.md)")


@functools.lru_cache(maxsize=None)
def int8_saturates() -> bool:
    """Whether onnxruntime's fused int8 conv on this CPU departs from the QDQ model's own math
    with full-range int8 weights (more than one output step on the probe)."""
    return _probe_error(FULL_LEVEL) > 1.0


def _probe_error(level: int) -> float:
    """Largest |fused - unfused| of the probe conv with weights at +-`level`, in output steps."""
    import onnxruntime as ort

    model = _probe_model(level)
    x = np.random.default_rng(1).uniform(150 * _X_SCALE, 255 * _X_SCALE, (1, _C, _HW, _HW)).astype(np.float32)
    outs = []
    for opt in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level, options.intra_op_num_threads = opt, 1
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"x": x})[0])
    return float(np.abs(outs[0] - outs[1]).max() / _Y_SCALE)


def _probe_model(level: int) -> bytes:
    """x -> Q/DQ (uint8) -> Conv 3x3 (int8 weights, mostly +level) -> Relu -> Q/DQ (uint8)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = np.where(rng.random((_M, _C, 3, 3)) < 0.8, level, rng.integers(-level, level + 1, (_M, _C, 3, 3)))
    scalar = lambda value, dtype, name: numpy_helper.from_array(np.array(value, dtype=dtype), name)  # noqa: E731
    inits = [numpy_helper.from_array(w.astype(np.int8), "w_q"), scalar(_W_SCALE, np.float32, "w_s"),
             scalar(0, np.int8, "w_z"), scalar(_X_SCALE, np.float32, "x_s"), scalar(0, np.uint8, "x_z"),
             scalar(_Y_SCALE, np.float32, "y_s"), scalar(0, np.uint8, "y_z")]
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"]),
             node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
             node("Relu", ["y"], ["r"]),
             node("QuantizeLinear", ["r", "y_s", "y_z"], ["yq"]),
             node("DequantizeLinear", ["yq", "y_s", "y_z"], ["out"])]
    graph = helper.make_graph(nodes, "saturation_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _C, _HW, _HW])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, _M, _HW, _HW])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
