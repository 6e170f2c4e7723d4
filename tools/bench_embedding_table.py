"""How onnxruntime runs an int8 embedding table, side by side in one run (docs/deployment.md,
"Embedding tables"): Gather of a float table against the int8 forms

    Gather(int8) -> DequantizeLinear(per tensor)
    Gather(int8) -> DequantizeLinear(axis -1, one scale per column)
    Gather(int8) -> Cast(float) -> Mul(one scale per column)      (what geta-onnx exports)

each followed by a Relu (so no form is the graph output as it is), at MiniLM's table size,
sequence 128, batches 1 and 32; median ms of `--runs` runs, the median of `--repeats` rounds.

    python tools/bench_embedding_table.py [--rows 30522] [--columns 384] [--threads 2]
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from interleaved_timing import interleaved_medians  # tools/ (the script's folder)
from onnx import TensorProto, helper, numpy_helper


def _model(form: str, table: np.ndarray) -> bytes:
    columns = table.shape[1]
    steps = np.abs(table).max(0) / 127
    ints = np.clip(np.round(table / steps), -127, 127).astype(np.int8)
    per_tensor = np.float32(np.abs(table).max() / 127)
    if form == "float":
        nodes, inits = [helper.make_node("Gather", ["w", "ids"], ["g"])], [("w", table)]
    elif form == "dq per tensor":
        nodes = [helper.make_node("Gather", ["q", "ids"], ["r"]), helper.make_node("DequantizeLinear", ["r", "s", "z"], ["g"])]
        inits = [("q", np.clip(np.round(table / per_tensor), -127, 127).astype(np.int8)), ("s", per_tensor),
                 ("z", np.int8(0))]
    elif form == "dq per column":
        nodes = [helper.make_node("Gather", ["q", "ids"], ["r"]),
                 helper.make_node("DequantizeLinear", ["r", "s", "z"], ["g"], axis=-1)]
        inits = [("q", ints), ("s", steps.astype(np.float32)), ("z", np.zeros(columns, np.int8))]
    else:  # cast mul
        nodes = [helper.make_node("Gather", ["q", "ids"], ["r"]), helper.make_node("Cast", ["r"], ["c"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["c", "s"], ["g"])]
        inits = [("q", ints), ("s", steps.astype(np.float32))]
    nodes.append(helper.make_node("Relu", ["g"], ["y"]))
    graph = helper.make_graph(nodes, form, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L", columns])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=30522)
    p.add_argument("--columns", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((a.rows, a.columns)) * rng.uniform(0.01, 0.3, a.columns)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    forms = ("float", "dq per tensor", "dq per column", "cast mul")
    sessions = {f: ort.InferenceSession(_model(f, table), opts, providers=["CPUExecutionProvider"]) for f in forms}
    print(f"onnxruntime {ort.__version__}, table {a.rows} x {a.columns}, {a.threads} threads; median ms")
    print(f"{'batch':>5} " + " ".join(f"{f:>14}" for f in forms))
    for batch in (1, 32):
        ids = {"ids": rng.integers(0, a.rows, (batch, 128)).astype(np.int64)}
        ms = interleaved_medians(sessions, ids, runs=a.runs, repeats=a.repeats, warmup=5)
        print(f"{batch:>5} " + " ".join(f"{ms[f]:>8.3f} ({ms[f] / ms['float']:.1f}x)" for f in forms))


if __name__ == "__main__":
    main()
