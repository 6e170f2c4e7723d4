"""sentence-transformers/all-MiniLM-L6-v2 without transformers: a hand-written BERT encoder.

Reads config.json + model.safetensors (HF BertModel naming; the unused pooler is
dropped) and reproduces the sentence-transformers pipeline of this model:
Transformer -> mean pooling over the attention mask -> L2 normalisation.
`Tokenizer` is a minimal BERT WordPiece tokenizer (uncased basic tokenization +
greedy longest-match wordpiece over vocab.txt, [CLS] ... [SEP], max 256 tokens).
"""
from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import asset_path, export

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2


# --------------------------------------------------------------------------- model
class Embeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])
        self.register_buffer("position_ids", torch.arange(cfg["max_position_embeddings"]).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.size(1)]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = h // self.heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.dropout = nn.Dropout(cfg["attention_probs_dropout_prob"])

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2)
        return ctx.reshape(ctx.size(0), ctx.size(1), self.heads * self.head_dim)


class DenseNorm(nn.Module):
    """BertSelfOutput / BertOutput: dense -> dropout -> LayerNorm(residual + .)."""

    def __init__(self, cfg: dict, d_in: int):
        super().__init__()
        h = cfg["hidden_size"]
        self.dense = nn.Linear(d_in, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg, cfg["hidden_size"])

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (only exact gelu)")
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg, cfg["intermediate_size"])

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class MiniLM(nn.Module):
    """BERT encoder + sentence-transformers pooling. forward(input_ids, attention_mask,
    token_type_ids) -> (last_hidden_state (N, L, 384), sentence_embedding (N, 384))."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.config = dict(cfg)
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        mask = attention_mask.to(torch.float32)
        mask_bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), mask_bias)
        # sentence-transformers Pooling(mean) + Normalize
        m = mask.unsqueeze(-1)
        pooled = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        return hidden, F.normalize(pooled, p=2.0, dim=1)


def load(folder: str | Path | None = None) -> MiniLM:
    """The pretrained encoder in eval mode, from config.json + model.safetensors."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder else asset_path("minilm", "model.safetensors").parent
    cfg = json.loads((folder / "config.json").read_text())
    model = MiniLM(cfg)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("pooler.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- tokenizer
def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class Tokenizer:
    """Uncased BERT tokenizer (BasicTokenizer + WordPiece) from a vocab.txt."""

    def __init__(self, vocab_file: str | Path | None = None, max_length: int = MAX_SEQ_LENGTH):
        vocab_file = Path(vocab_file) if vocab_file else asset_path("minilm", "vocab.txt")
        tokens = vocab_file.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.max_length = max_length
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]

    # BasicTokenizer (do_lower_case=True, tokenize_chinese_chars=True, strip_accents follows lowercase)
    def basic_tokenize(self, text: str) -> list[str]:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        words = []
        for word in "".join(out).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for c in word:
                if _is_punctuation(c):
                    if current:
                        words.append(current)
                    words.append(c)
                    current = ""
                else:
                    current += c
            if current:
                words.append(current)
        return words

    def wordpiece(self, word: str, max_chars: int = 100) -> list[str]:
        if len(word) > max_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    piece = sub
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self.basic_tokenize(text) for p in self.wordpiece(w)]

    def encode(self, text: str) -> list[int]:
        ids = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text)][: self.max_length - 2]
        return [self.cls_id, *ids, self.sep_id]

    def __call__(self, texts: str | list[str]) -> dict[str, np.ndarray]:
        """Batch encoding padded to the longest: input_ids, attention_mask, token_type_ids (int64)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = [self.encode(t) for t in texts]
        n = max(len(e) for e in encoded)
        ids = np.full((len(encoded), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), n), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


# --------------------------------------------------------------------------- helpers
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = ["last_hidden_state", "sentence_embedding"]


def embed(model: MiniLM, tokenizer: Tokenizer, sentences: list[str]) -> np.ndarray:
    feeds = tokenizer(sentences)
    with torch.no_grad():
        _, emb = model(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES))
    return emb.numpy()


def export_onnx(path: str | Path, model: MiniLM | None = None, opset: int = 17) -> Path:
    model = model or load()
    tok = Tokenizer(Path(asset_path("minilm", "vocab.txt")))
    feeds = tok(["An example sentence for the export.", "A second, longer example sentence with padding in it."])
    args = tuple(torch.from_numpy(feeds[k]) for k in INPUT_NAMES)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUT_NAMES}
    axes.update({"last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}})
    return export(model, args, path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=axes, opset=opset)


# --------------------------------------------------------------------------- evidence
# (sentence, paraphrase) pairs: each sentence's nearest neighbour must be its paraphrase
PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an instrument."),
    ("The cat sits on the mat.", "A kitten is resting on a rug."),
    ("The stock market fell sharply today.", "Share prices dropped a lot this afternoon."),
]
SENTENCES = [s for pair in PAIRS for s in pair]
# the distillation run: sentence embeddings + 50 % noise, 5 SGD steps
TRAIN = {"output": 1, "noise": 0.5, "lr": 5.0, "steps": 5}  # unit-norm outputs: small gradients, large lr


def parity_feeds(tokenizer: Tokenizer | None = None) -> dict[str, np.ndarray]:
    """SENTENCES tokenized and padded to the longest (so the attention mask matters)."""
    return (tokenizer or Tokenizer())(SENTENCES)


def similarity_report(embeddings: np.ndarray) -> dict:
    """Cosine similarities of SENTENCES' embeddings: paraphrase pairs vs the best unrelated pair."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    n = len(SENTENCES)
    pair_of = {2 * i: 2 * i + 1 for i in range(len(PAIRS))} | {2 * i + 1: 2 * i for i in range(len(PAIRS))}
    paraphrase = [float(sim[i, pair_of[i]]) for i in range(0, n, 2)]
    unrelated = max(float(sim[i, j]) for i in range(n) for j in range(n) if i != j and pair_of[i] != j)
    nearest_ok = all(int(np.argsort(-sim[i])[1]) == pair_of[i] for i in range(n))
    return {"paraphrase": paraphrase, "max_unrelated": unrelated, "nearest_is_paraphrase": nearest_ok}
