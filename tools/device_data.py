"""Inputs of tools/device_check.sh, made offline on the machine that runs it.

    python tools/device_data.py runs/dev

Writes into the folder:
  mnv2.npz      320 ImageNet-normalised 224x224 crops of scikit-learn's two sample photos
                (samples/photos.py): label-free distillation data for MobileNetV2;
  minilm.onnx   assets/minilm/minilm.onnx when present, else the MiniLM architecture with seeded
                random weights from assets/minilm/config.json (a machine that cannot hold the
                90 MB file: step times and CPU-vs-GPU agreement do not depend on the weights);
  minilm.npz    512 token sequences of 32 (input_ids, attention_mask, token_type_ids): the
                sentences of samples/minilm's corpus when this machine has one, else random ids.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samples.photos import photo_crops  # noqa: E402
from samples.pretrained import asset_path, minilm, mobilenetv2  # noqa: E402


def minilm_model(dest: Path) -> Path:
    src = asset_path("minilm", "minilm.onnx", must_exist=False)
    if src.exists():
        shutil.copyfile(src, dest)
        return dest
    import json

    torch.manual_seed(0)
    cfg = json.loads(asset_path("minilm", "config.json").read_text())
    model = minilm.MiniLM(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return minilm.export_onnx(dest, model=model)


def minilm_tokens(n: int = 512, seq: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    try:
        from samples.minilm import sentences

        texts = sentences()[:n]
    except (OSError, ImportError):
        texts = []
    if len(texts) >= n:
        tok = minilm.Tokenizer(asset_path("minilm", "vocab.txt"))
        feeds = tok(texts)
        return {k: np.ascontiguousarray(feeds[k][:, :seq]).astype(np.int64) for k in minilm.INPUT_NAMES}
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1000, 20000, (n, seq)) * mask, "attention_mask": mask,
            "token_type_ids": np.zeros((n, seq), np.int64)}


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "mnv2.npz", x=photo_crops(320, (3, 224, 224), mobilenetv2.IMAGENET_MEAN, mobilenetv2.IMAGENET_STD))
    minilm_model(out / "minilm.onnx")
    np.savez(out / "minilm.npz", **minilm_tokens())
    print(f"wrote {out}/mnv2.npz, minilm.onnx, minilm.npz")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/dev")
