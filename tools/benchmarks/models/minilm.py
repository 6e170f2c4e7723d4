"""all-MiniLM-L6-v2 (assets/minilm/minilm.onnx: BERT encoder + mean pooling + L2 norm), label-free.

Text: the sentences of the Debian package descriptions on this machine (/var/lib/dpkg/status)
and of the README files under /usr/share/doc, real English prose read offline; seeded
split into training and held-out sentences,
tokenized with the model's own WordPiece vocabulary and padded to SEQ tokens.
Quality: mean cosine similarity of the sentence embeddings (output 1) to the fp32
original's on the held-out sentences. Training (geta-onnx and the L1 fine-tuning alike)
distils both outputs of the original, the token embeddings and the sentence embedding, with
one loss: compress's label-free default (every float output, MSE relative to the teacher's
mean square: geta_onnx/train/losses.py).
"""
from __future__ import annotations

from pathlib import Path


from geta_onnx.bench import evaluate_onnx
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.train import load_data
from samples.minilm import CORPUS, NAMES, SEQ, write_corpus

from . import Bench, cached, calibration_batches

FULL = {"train": 4000, "eval": 500, "epochs": 3, "calibration": 256, "batch": 32}
QUICK = {"train": 256, "eval": 64, "epochs": 1, "calibration": 32, "batch": 8}


def prepare(work: Path, quick: bool) -> Bench:
    from samples.pretrained import onnx_path

    s = QUICK if quick else FULL
    npz = work / "minilm_text.npz"

    def make() -> dict:
        return {"sentences_available": write_corpus(npz, s["train"], s["eval"]), **s}

    prep = cached(work, {"model": "minilm", "seq": SEQ, **s}, make)
    model = onnx_path("minilm")
    data = load_data(f"npz:{npz}", DataConfig(batch_size=s["batch"], val_split=0.0), model=load_model(model), seed=0)
    return Bench(
        name="minilm", title=f"all-MiniLM-L6-v2 sentence embeddings (label-free, {SEQ} tokens)",
        model=model, data_spec=f"npz:{npz}", data=data,
        calibration=calibration_batches(data, s["calibration"], NAMES),
        quality=lambda p: evaluate_onnx(p, data, reference=model, output=1, metric="cosine"),
        quality_label="cosine to fp32 embeddings",
        epochs=s["epochs"], lr=1e-4, batch_size=s["batch"], finetune_loss="kd-all-mse", output=1, geta_lr=1e-4,
        geta_config={"train": {"output": 1, "kd": "mse"}}, ptq_op_types=["MatMul", "Gemm"],
        seq=SEQ,
        notes=[f"text: {prep['sentences_available']} unique sentences of the Debian package descriptions in "
               f"{CORPUS} and the READMEs in /usr/share/doc; {s['train']} for training, {s['eval']} held out "
               f"for the quality; {SEQ} tokens each",
               "label-free: geta-onnx and the L1 fine-tuning distil with the same loss, compress's default for "
               "a label-free multi-output model: both outputs (the token embeddings and the sentence embedding), "
               "each MSE over the teacher's mean square, averaged (`--config`: [train] output = 1, the output the "
               "quality reads, kd = \"mse\"; the fine-tuning's loss `kd-all-mse`)",
               "int8 PTQ quantizes the MatMul / Gemm ops only (the usual setting for transformers): letting "
               "onnxruntime quantize every op type also quantizes the attention-mask Add and the LayerNorm "
               "inputs, and the embeddings' cosine to fp32 fell to 0.34 in the smoke run",
               "MACs per sample count the symbolic sequence axis as 1 (per token)"],
        prep=prep)
