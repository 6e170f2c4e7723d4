"""Measure train.memory's ACTIVATION_FACTOR: peak memory of `geta-onnx train` at two batch
sizes, the difference divided by the graph's per-sample activation bytes.

    python tools/bench_memory.py MODEL.onnx --shape 3x224x224 [--batches 4,16] [--steps 3]

Each batch size runs in its own process (peak RSS from /usr/bin/time -v, or getrusage of the
child); the slope (peak(b2) - peak(b1)) / ((b2 - b1) x per-sample bytes) is the factor: the
fixed costs (weights, the interpreter, onnxruntime) cancel out.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def peak_of_train(model: str, npz: Path, batch: int, steps: int, out: Path) -> int:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "geta_onnx.cli", "train", model, "--data", f"npz:{npz}", "-o", str(out),
                    "--steps", str(steps), "--batch-size", str(batch), "--no-progress", "--skip-data-check", "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise SystemExit("run the larger batch last: getrusage keeps the children's maximum")
    return after * 1024


def main() -> None:
    from geta_onnx.graph import load_model
    from geta_onnx.train.memory import activation_bytes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--shape", required=True, help="one sample's dims, e.g. 3x224x224")
    p.add_argument("--batches", default="4,16")
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    dims = tuple(int(d) for d in a.shape.split("x"))
    b1, b2 = sorted(int(b) for b in a.batches.split(","))
    model = load_model(a.model)
    name = model.inputs[0].name
    x = np.random.default_rng(0).random((max(64, 2 * b2), *dims), dtype=np.float32)
    per_sample = activation_bytes(model, {name: x[:1]})
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        np.savez(npz, x=x)
        peaks = [peak_of_train(a.model, npz, b, a.steps, Path(tmp) / f"run{b}") for b in (b1, b2)]
    factor = (peaks[1] - peaks[0]) / ((b2 - b1) * per_sample)
    print(f"{Path(a.model).name}: {per_sample / 2**20:.1f} MB of activations per sample; peak "
          f"{peaks[0] / 2**30:.2f} GB at batch {b1}, {peaks[1] / 2**30:.2f} GB at batch {b2}; "
          f"ACTIVATION_FACTOR measured {factor:.2f}")


if __name__ == "__main__":
    main()
