"""What class a row of model scores says, for numpy arrays and torch tensors alike: the
held-out scores of training (train/evaluate.py) and of onnxruntime (bench/metrics.py) must
call the same outputs the same class."""
from __future__ import annotations


def score_threshold(scores) -> float:
    """Where one score per row decides its class: 0.5 for probabilities (values in [0, 1]),
    0 for logits."""
    return 0.5 if len(scores) and scores.min() >= 0 and scores.max() <= 1 else 0.0


def predicted_classes(out, threshold: float | None = None):
    """The class of each row (or position) of (N, C[, d1, ...]) scores: the argmax over axis
    1, or with ONE score there (a sigmoid probability or its logit, (N, 1, ...)) 1 where it
    is above `threshold` (default score_threshold(out)): an argmax over one entry is always 0."""
    if out.shape[1] == 1:
        t = score_threshold(out) if threshold is None else threshold
        return (out[:, 0] > t) * 1  # an integer array / tensor
    return out.argmax(1)
