"""When does onnxruntime's int8 QLinearConv beat its float Conv? One conv (+ Relu) per shape,
float vs the QDQ form geta-onnx exports (Q -> DQ -> Conv(DQ(int8 W), DQ(int32 b)) -> Relu -> Q
-> DQ, which onnxruntime fuses into QLinearConv), timed in the same run.

    python tools/bench_conv_int8.py [--threads 2] [--repeats 40] [--batches 1,32]

The thin-conv rule of quant.sites.is_thin_conv (group-1 convs with < 8 input channels and a
reduction depth < 256, or a single input channel, stay float) comes from this table;
docs/measurements.md has the figures. Sizes and kernels are square, or (height, 1) for the
1-D convs of an audio model (CREPE's front end: one channel, a 512-tap kernel, stride 4).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# (input channels, output channels, spatial size, kernel, stride, group); an int is square,
# a (height, width) pair is as given
SHAPES = [
    (1, 16, 28, 3, 1, 1), (1, 32, 28, 3, 1, 1), (3, 32, 32, 3, 1, 1), (3, 32, 112, 3, 2, 1),
    (3, 32, 28, 5, 1, 1), (4, 32, 28, 3, 1, 1), (8, 32, 28, 3, 1, 1), (16, 32, 28, 3, 1, 1),
    (3, 64, 32, 8, 8, 1), (3, 128, 224, 8, 8, 1), (3, 768, 224, 16, 16, 1),
    (8, 8, 28, 3, 1, 1), (16, 16, 28, 3, 1, 1), (32, 32, 28, 3, 1, 1), (64, 64, 14, 3, 1, 1),
    (96, 96, 28, 3, 1, 96),
    (1, 128, (1535, 1), (512, 1), (4, 1), 1), (1, 48, (1535, 1), (512, 1), (4, 1), 1),
    (1, 128, (8192, 1), (512, 1), (512, 1), 1), (2, 128, (1024, 1), (256, 1), (4, 1), 1),
    (2, 64, (1024, 1), (256, 1), (4, 1), 1), (4, 64, (200, 1), (64, 1), (1, 1), 1),
]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _fmt(v) -> str:
    return "x".join(str(d) for d in _pair(v))


def conv_model(cin: int, cout: int, size: int, k: int, stride: int, group: int, quantized: bool) -> bytes:
    """One Conv + Relu on a (N, cin, *size) input, float or in exported QDQ form."""
    rng = np.random.default_rng(0)
    (h, w_), (kh, kw), strides = _pair(size), _pair(k), list(_pair(stride))
    w = (rng.standard_normal((cout, cin // group, kh, kw)) * 0.1).astype(np.float32)
    pads = [kh // 2, kw // 2] * 2 if strides == [1, 1] else [0] * 4
    conv = dict(pads=pads, strides=strides, group=group)
    n, init = helper.make_node, numpy_helper.from_array
    if quantized:
        inits = [init(np.array(0.02, np.float32), "sx"), init(np.array(0, np.uint8), "zx"),
                 init(np.clip(np.round(w / 0.01), -127, 127).astype(np.int8), "wq"),
                 init(np.full(cout, 0.01, np.float32), "sw"), init(np.zeros(cout, np.int8), "zw"),
                 init(np.zeros(cout, np.int32), "bq"), init(np.full(cout, 2e-4, np.float32), "sb"),
                 init(np.zeros(cout, np.int32), "zb"), init(np.array(0.05, np.float32), "sy"),
                 init(np.array(0, np.uint8), "zy")]
        nodes = [n("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), n("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                 n("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
                 n("DequantizeLinear", ["bq", "sb", "zb"], ["bd"], axis=0),
                 n("Conv", ["xd", "wd", "bd"], ["c"], **conv), n("Relu", ["c"], ["r"]),
                 n("QuantizeLinear", ["r", "sy", "zy"], ["yq"]), n("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    else:
        inits = [init(w, "w"), init(np.zeros(cout, np.float32), "b")]
        nodes = [n("Conv", ["x", "w", "b"], ["c"], **conv), n("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, h, w_])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def median_ms(model: bytes, shape: tuple[int, ...], threads: int, repeats: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    for _ in range(max(3, repeats // 4)):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--batches", default="1,32")
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    print(f"onnxruntime {ort.__version__}, {a.threads} threads, median of {a.repeats}; speedup = float / int8")
    print("| conv (in -> out, size, kernel / stride, group) | depth | " +
          " | ".join(f"float / int8 ms, batch {b} | speedup" for b in batches) + " |")
    print("|---|---|" + "---|---|" * len(batches))
    for cin, cout, size, k, stride, group in SHAPES:
        cells = []
        for b in batches:
            shape = (b, cin, *_pair(size))
            f = median_ms(conv_model(cin, cout, size, k, stride, group, False), shape, a.threads, a.repeats)
            q = median_ms(conv_model(cin, cout, size, k, stride, group, True), shape, a.threads, a.repeats)
            cells += [f"{f:.3f} / {q:.3f}", f"{f / q:.2f}x"]
        depth = cin // group * _pair(k)[0] * _pair(k)[1]
        print(f"| {cin} -> {cout}, {_fmt(size)}, k{_fmt(k)}/s{_fmt(stride)}, g{group} | {depth} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
