"""How onnxruntime runs an LSTM with int8 weights, side by side in one run (docs/deployment.md,
"Recurrent layers"): the float LSTM against com.microsoft DynamicQuantizeLSTM (int8 W and R,
activations rounded by the kernel per call) with one scale per direction and with one scale
per direction and gate column, at ddddocr captcha's size (bidirectional, input 512, hidden
512), sequence 64, batches 1 and 32; median ms of `--runs` runs, the median of `--repeats`
rounds; and the largest output difference of each int8 form from the float LSTM of its own
dequantized weights (what is left is the kernel's dynamic rounding of its activations: a
kernel that reads its scales as written differs by that rounding only).

    python tools/bench_lstm_int8.py [--input 512] [--hidden 512] [--steps 64] [--threads 2]
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from interleaved_timing import interleaved_medians  # tools/ (the script's folder)
from onnx import TensorProto, helper, numpy_helper


def _int8(w: np.ndarray, per_column: bool) -> tuple[np.ndarray, np.ndarray]:
    """w [D, in, G*H] -> (int8 w, scales [D] or [D, G*H]); symmetric, zero point 0."""
    m = np.abs(w).max(axis=1) if per_column else np.abs(w).max(axis=(1, 2))
    s = np.where(m > 0, m / 127, 1).astype(np.float32)
    q = np.clip(np.round(w / (s[:, None, :] if per_column else s[:, None, None])), -127, 127).astype(np.int8)
    return q, s


def _dequantized(w: np.ndarray, per_column: bool) -> np.ndarray:
    """The float weight [D, 4H, K] the int8 form of `w` stands for."""
    q, s = _int8(w.transpose(0, 2, 1), per_column)
    return (q * (s[:, None, :] if per_column else s[:, None, None])).transpose(0, 2, 1).astype(np.float32)


def _model(form: str, w: np.ndarray, r: np.ndarray, b: np.ndarray, hidden: int) -> bytes:
    d = w.shape[0]
    attrs = dict(hidden_size=hidden, direction="bidirectional" if d == 2 else "forward")
    if form == "float":
        nodes = [helper.make_node("LSTM", ["x", "w", "r", "b"], ["y"], **attrs)]
        inits = [("w", w), ("r", r), ("b", b)]
    else:
        per_column = form == "int8 per column"
        wq, ws = _int8(w.transpose(0, 2, 1), per_column)  # DynamicQuantizeLSTM: [D, in, 4H]
        rq, rs = _int8(r.transpose(0, 2, 1), per_column)
        nodes = [helper.make_node("DynamicQuantizeLSTM", ["x", "wq", "rq", "b", "", "", "", "", "ws", "wz", "rs", "rz"],
                                  ["y"], domain="com.microsoft", **attrs)]
        inits = [("wq", wq), ("rq", rq), ("b", b), ("ws", ws), ("wz", np.zeros(ws.shape, np.int8)), ("rs", rs),
                 ("rz", np.zeros(rs.shape, np.int8))]
    graph = helper.make_graph(nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", w.shape[2]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)]
                             ).SerializeToString()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    h = a.hidden
    w = (rng.standard_normal((2, 4 * h, a.input)) * 0.05).astype(np.float32)
    r = (rng.standard_normal((2, 4 * h, h)) * 0.05).astype(np.float32)
    b = (rng.standard_normal((2, 8 * h)) * 0.05).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    forms = ("float", "int8 per direction", "int8 per column")
    sessions = {f: ort.InferenceSession(_model(f, w, r, b, h), opts, providers=["CPUExecutionProvider"]) for f in forms}
    own = {f: ort.InferenceSession(_model("float", _dequantized(w, f == "int8 per column"),
                                          _dequantized(r, f == "int8 per column"), b, h), opts,
                                   providers=["CPUExecutionProvider"]) for f in forms[1:]}
    print(f"onnxruntime {ort.__version__}, bidirectional LSTM input {a.input} hidden {h}, {a.steps} steps, "
          f"{a.threads} threads; median ms (max |y - y of the float LSTM of its dequantized weights|)")
    print(f"{'batch':>5} " + " ".join(f"{f:>24}" for f in forms))
    for batch in (1, 32):
        x = {"x": rng.standard_normal((a.steps, batch, a.input)).astype(np.float32)}
        err = {f: float(np.abs(s.run(None, x)[0] - own[f].run(None, x)[0]).max()) if f in own else 0.0
               for f, s in sessions.items()}
        ms = interleaved_medians(sessions, x, runs=a.runs, repeats=a.repeats)
        print(f"{batch:>5} " + " ".join(f"{ms[f]:>8.2f} ({ms[f] / ms['float']:.2f}x, {err[f]:.4f})" for f in forms))


if __name__ == "__main__":
    main()
