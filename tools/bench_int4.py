"""MatMul in its three deployed forms side by side: float MatMul, int8 (DQ -> MatMul, which
onnxruntime runs as MatMulIntegerToFloat) and int4 (a blocked INT4 DequantizeLinear -> MatMul,
run as MatMulNBits), the one-layer graphs of the latency table (geta_onnx/latency/micro.py).

    python tools/bench_int4.py [--shapes 384x384,384x1536,1536x384] [--rows 1,32,128,4096]
                               [--threads 2] [--repeats 5]

`--rows`: the rows the layer multiplies (batch x sequence positions). Per shape and rows: the
median ms of `--repeats` timings (each the median of one latency-table measurement), and the
int4 / int8 and int4 / float ratios. Figures: docs/latency.md, "INT4 MatMul".
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geta_onnx.latency.measure import time_ms  # noqa: E402
from geta_onnx.latency.micro import layer_graph  # noqa: E402
from geta_onnx.latency.spec import LayerSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="384x384,384x1536,1536x384", help="K x N of the weight, comma-separated")
    p.add_argument("--rows", default="1,32,128,4096")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"{'weight':>10} {'rows':>6} {'float ms':>9} {'int8 ms':>9} {'int4 ms':>9} {'int4/int8':>9} {'int4/float':>10}")
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        for rows in (int(r) for r in a.rows.split(",")):
            spec = LayerSpec("mm", "MatMul", (rows, k), k, n, out_elems=rows)
            ms = {}
            for form in ("float", "int8", "int4"):
                proto, feeds = layer_graph(spec, k, n, 1, form)
                ms[form] = statistics.median(time_ms(proto, feeds, a.threads) for _ in range(a.repeats))
            print(f"{shape:>10} {rows:>6} {ms['float']:>9.4f} {ms['int8']:>9.4f} {ms['int4']:>9.4f} "
                  f"{ms['int4'] / ms['int8']:>8.2f}x {ms['int4'] / ms['float']:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
