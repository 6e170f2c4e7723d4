"""python -m samples.minilm: corpus -> npz, label-free compress of all-MiniLM-L6-v2, gate."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samples.minilm import write_corpus
from samples.pipeline import compress_and_gate

CONFIG = Path(__file__).with_name("compress.toml")


def main() -> int:
    from samples.pretrained import onnx_path

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/minilm")
    p.add_argument("--train", type=int, default=4000, help="training sentences")
    p.add_argument("--held-out", type=int, default=500, help="held-out sentences of the cosine score")
    p.add_argument("--config", default=str(CONFIG), help="compress settings (TOML)")
    a, extra = p.parse_known_args()  # anything else goes to compress, e.g. --epochs 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = onnx_path("minilm")  # SystemExit with the instruction when the assets are missing
    npz = out / "minilm_text.npz"
    available = write_corpus(npz, a.train, a.held_out)
    print(f"{available} sentences available; wrote {npz} ({a.train} training, {a.held_out} held out)", flush=True)
    return compress_and_gate(model, f"npz:{npz}", out / "minilm_geta.onnx", a.config, extra,
                             max_accuracy_drop=0.02, min_speedup=2)


if __name__ == "__main__":
    sys.exit(main())
