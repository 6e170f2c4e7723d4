"""Streaming metrics over onnxruntime outputs (numpy): top-1 hits and fidelity to a reference."""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..train.scores import predicted_classes, score_threshold


def check_label_range(labels: np.ndarray, classes: int, spec: str) -> None:
    """DataError unless every integer label indexes one of the model's `classes` scores."""
    if not labels.size:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise DataError(f"data spec '{spec}': labels must be class indices in [0, {classes}) for the model's "
                        f"{classes} class scores; found label {low if low < 0 else high}")


def top1_hits(out: np.ndarray, target: np.ndarray, *, spec: str) -> tuple[int, int]:
    """(correct, counted) of predicted_classes of (N, C[, d1, ...]) scores vs labels."""
    if out.ndim < 2:
        raise DataError(f"data spec '{spec}': integer labels need class scores (N, C, ...) from the model, "
                        f"its output has shape {out.shape}; pick another output with --output")
    check_label_range(target, max(out.shape[1], 2), spec)
    pred = predicted_classes(out)  # (N[, d1, ...])
    if target.size != pred.size:
        raise DataError(f"data spec '{spec}': labels of shape {target.shape} do not fit predictions of shape "
                        f"{pred.shape}")
    return int((pred == target.reshape(pred.shape)).sum()), int(pred.size)


class Fidelity:
    """Running agreement, cosine, MSE and max abs error of outputs against a reference.

    agreement: top-1 match over axis 1 (class logits, (N, C, ...)); with one score on axis 1
    (a sigmoid probability or its logit, (N, 1, ...)), the same side of 0.5 (of 0 for values
    outside [0, 1]): an argmax over one entry would always agree. cosine: mean cosine
    similarity of vectors along the LAST axis ((N, D) sentence embeddings, (N, T, D) token
    states); mse / max_abs: elementwise. All accumulate in float64."""

    def __init__(self):
        self.same = self.rows = self.vectors = self.elements = 0
        self.cos_sum = self.sq_sum = self.max_abs = 0.0
        self.unit_rows = True  # every reference vector has L2 norm 1 (normalised embeddings)
        self.shape: tuple[int, ...] | None = None
        self.is_float = True

    def update(self, out: np.ndarray, ref: np.ndarray) -> None:
        self.shape, self.is_float = out.shape, out.dtype.kind == "f"
        a, b = out.astype(np.float64), ref.astype(np.float64)
        if a.ndim >= 2:
            threshold = score_threshold(b) if b.shape[1] == 1 else None  # the reference's kind of score
            same = predicted_classes(a, threshold) == predicted_classes(b, threshold)
            self.same, self.rows = self.same + int(same.sum()), self.rows + same.size
        width = a.shape[-1] if a.ndim >= 2 else 1  # (N,) outputs: one-element vectors
        va, vb = a.reshape(-1, width), b.reshape(-1, width)  # (vectors, D)
        na, nb = np.linalg.norm(va, axis=1), np.linalg.norm(vb, axis=1)
        # two zero vectors are identical (cosine 1); one zero vector against another is 0
        cos = np.where((na == 0) & (nb == 0), 1.0, (va * vb).sum(1) / np.maximum(na * nb, 1e-30))
        self.cos_sum, self.vectors = self.cos_sum + float(cos.sum()), self.vectors + len(cos)
        self.unit_rows = self.unit_rows and bool(np.allclose(nb, 1.0, atol=1e-3))
        err = np.abs(a - b)
        self.sq_sum, self.elements = self.sq_sum + float((err**2).sum()), self.elements + err.size
        self.max_abs = max(self.max_abs, float(err.max()) if err.size else 0.0)

    def summary(self) -> dict[str, float]:
        s = {"cosine": self.cos_sum / self.vectors, "mse": self.sq_sum / self.elements, "max_abs": self.max_abs}
        if self.rows:
            s["agreement"] = self.same / self.rows
        return s


def choose_metric(fid: Fidelity, metric: str = "auto") -> str:
    """The headline fidelity metric. auto: integer or 1-D outputs -> mse; (N, C) scores
    -> agreement, unless every reference row has unit norm (normalised embeddings, which are
    not logits) -> cosine; (N, T, D) -> cosine; 4-D and more (N, C, H, W) -> agreement per
    position. Pass metric explicitly for anything else, e.g. unnormalised sentence embeddings."""
    shape = fid.shape or ()
    if metric != "auto":
        if metric == "agreement" and not fid.rows:
            raise DataError(f"option '--metric': agreement needs class scores (N, C, ...); "
                            f"the output has shape {shape}")
        return metric
    if not fid.is_float or len(shape) < 2:
        return "mse"
    if len(shape) == 2:
        return "cosine" if fid.unit_rows else "agreement"
    return "cosine" if len(shape) == 3 else "agreement"
