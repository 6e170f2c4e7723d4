"""all-MiniLM-L6-v2 (assets/minilm/minilm.onnx: BERT encoder + mean pooling + L2 norm), label-free.

Text: the sentences of the Debian package descriptions on this machine (/var/lib/dpkg/status)
and of the README files under /usr/share/doc, real English prose read offline; seeded
split into training and held-out sentences,
tokenized with the model's own WordPiece vocabulary and padded to SEQ tokens.
Quality: mean cosine similarity of the sentence embeddings (output 1) to the fp32
original's on the held-out sentences. Training (geta-onnx and the L1 fine-tuning alike)
distils the sentence embedding from the original.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from geta_onnx.bench import evaluate_onnx
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.train import load_data

from . import Bench, cached, calibration_batches

CORPUS = Path("/var/lib/dpkg/status")
READMES = "/usr/share/doc/*/README*"
SEQ = 64  # tokens per sentence (padded / truncated); also the latency sequence length
FULL = {"train": 4000, "eval": 500, "epochs": 3, "calibration": 256, "batch": 32}
QUICK = {"train": 256, "eval": 64, "epochs": 1, "calibration": 32, "batch": 8}
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def sentences(path: Path = CORPUS, readmes: str = READMES) -> list[str]:
    """Unique prose sentences (5-60 words, mostly letters) of the package Description fields,
    then of the README files, in file order."""
    paragraphs = _descriptions(path) + [p for f in sorted(Path("/").glob(readmes.lstrip("/"))) for p in _paragraphs(f)]
    out, seen = [], set()
    for para in paragraphs:
        for s in re.split(r"(?<=[.!?])\s+", para):
            s = " ".join(s.split())
            words = s.split()
            letters = sum(c.isalpha() or c == " " for c in s) / max(len(s), 1)
            if 5 <= len(words) <= 60 and letters >= 0.85 and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def _descriptions(path: Path) -> list[str]:
    """Paragraphs of the Description fields of a dpkg status file ('.' lines split them)."""
    text, inside = [], False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("Description:"):
            inside = True
            text.append(line.split(":", 1)[1].strip() + ".")
        elif line.startswith(" ") and inside:
            text.append(line.strip() if line.strip() != "." else "\n")
        else:
            inside = False
    return " ".join(text).split("\n")


def _paragraphs(path: Path) -> list[str]:
    """Blank-line separated paragraphs of a (possibly gzipped) text file; unreadable: none."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return []
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]


def encode(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """(N, SEQ) int64 arrays of the three model inputs, padded with [PAD] / mask 0."""
    feeds = tokenizer(texts)
    out = {}
    for k in NAMES:
        a = feeds[k][:, :SEQ]
        pad = np.zeros((a.shape[0], SEQ - a.shape[1]), dtype=a.dtype)
        if k == "input_ids":
            pad[:] = tokenizer.pad_id
        out[k] = np.concatenate([a, pad], axis=1)
    return out


def prepare(work: Path, quick: bool) -> Bench:
    from samples.pretrained import onnx_path
    from samples.pretrained.minilm import Tokenizer

    s = QUICK if quick else FULL
    npz = work / "minilm_text.npz"

    def make() -> dict:
        texts = sentences()
        order = np.random.default_rng(0).permutation(len(texts))
        if len(texts) < s["train"] + s["eval"]:
            raise SystemExit(f"{CORPUS}: only {len(texts)} sentences, need {s['train'] + s['eval']}")
        train = [texts[i] for i in order[:s["train"]]]
        held = [texts[i] for i in order[s["train"]:s["train"] + s["eval"]]]
        tok = Tokenizer(max_length=SEQ)
        a, b = encode(tok, train), encode(tok, held)
        np.savez(npz, **a, **{f"eval_{k}": v for k, v in b.items()})
        return {"sentences_available": len(texts), **s}

    prep = cached(work, {"model": "minilm", "seq": SEQ, **s}, make)
    model = onnx_path("minilm")
    data = load_data(f"npz:{npz}", DataConfig(batch_size=s["batch"], val_split=0.0), model=load_model(model), seed=0)
    return Bench(
        name="minilm", title=f"all-MiniLM-L6-v2 sentence embeddings (label-free, {SEQ} tokens)",
        model=model, data_spec=f"npz:{npz}", data=data,
        calibration=calibration_batches(data, s["calibration"], NAMES),
        quality=lambda p: evaluate_onnx(p, data, reference=model, output=1, metric="cosine"),
        quality_label="cosine to fp32 embeddings",
        epochs=s["epochs"], lr=1e-4, batch_size=s["batch"], finetune_loss="kd-cosine", output=1, geta_lr=1e-4,
        geta_config={"train": {"output": 1, "kd": "mse"}}, ptq_op_types=["MatMul", "Gemm"],
        seq=SEQ,
        notes=[f"text: {prep['sentences_available']} unique sentences of the Debian package descriptions in "
               f"{CORPUS} and the READMEs in /usr/share/doc; {s['train']} for training, {s['eval']} held out "
               f"for the quality; {SEQ} tokens each",
               "label-free: the L1 fine-tuning distils the sentence embedding (output 1) with a cosine loss; "
               "geta-onnx distils the same output with MSE (`--config`: [train] output = 1, kd = \"mse\"; "
               "on unit-norm embeddings MSE = 2 - 2 cos)",
               "int8 PTQ quantizes the MatMul / Gemm ops only (the usual setting for transformers): letting "
               "onnxruntime quantize every op type also quantizes the attention-mask Add and the LayerNorm "
               "inputs, and the embeddings' cosine to fp32 fell to 0.34 in the smoke run",
               "MACs per sample count the symbolic sequence axis as 1 (per token)"],
        prep=prep)
