"""Importance scores of pruning groups (docs/algorithm.md section 3): a weighted sum of
five criteria, each normalised to [0, 1] by its maximum over the groups of the same
cluster (layer). Low scores are redundant.

Per-cluster normalisation: with one global maximum a layer whose groups are all small in
absolute terms (the first conv: few weights per channel) lost 31 of its 32 channels on a
digits CNN and the accuracy collapsed; relative to its own layer, a channel's score says
how dispensable it is there, and the global ranking then spreads the removals.

    magnitude        ||x_g||
    avg_magnitude    ||x_g|| / n_g
    cosine           (1 - cos(x_g, ghat_g)) / 2: the processed gradient pointing along x_g
                     means the next steps shrink it anyway -> low importance
    taylor_first     |<x_g, ghat_g>|
    taylor_second    0.5 <x_g, ghat_g>^2
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .slices import GroupView

CRITERIA = ("magnitude", "avg_magnitude", "cosine", "taylor_first", "taylor_second")


@dataclass(frozen=True)
class ImportanceWeights:
    magnitude: float = 0.2
    avg_magnitude: float = 0.2
    cosine: float = 0.2
    taylor_first: float = 0.2
    taylor_second: float = 0.2


def criteria(view: GroupView, ghat: dict[int, torch.Tensor]) -> dict[str, float]:
    x = view.values().double()
    g = view.values(ghat).double() if ghat else torch.zeros_like(x)
    norm_x, norm_g = float(x.norm()), float(g.norm())
    dot = float(x @ g)
    cos = dot / (norm_x * norm_g) if norm_x > 0 and norm_g > 0 else 0.0
    cos = max(-1.0, min(1.0, cos))  # departure: clamp rounding noise, never NaN
    return {
        "magnitude": norm_x,
        "avg_magnitude": norm_x / max(x.numel(), 1),
        "cosine": (1.0 - cos) / 2.0,
        "taylor_first": abs(dot),
        "taylor_second": 0.5 * dot * dot,
    }


def scores(views: list[GroupView], ghat: dict[int, torch.Tensor], weights: ImportanceWeights) -> dict[int, float]:
    """{group id: score}; every criterion is divided by its maximum over the group's cluster."""
    raw = {v.id: criteria(v, ghat) for v in views}
    top: dict[tuple, dict[str, float]] = {}
    for v in views:
        cluster = top.setdefault(v.cluster, dict.fromkeys(CRITERIA, 0.0))
        for c in CRITERIA:
            cluster[c] = max(cluster[c], raw[v.id][c])
    out = {}
    for v in views:
        r, t = raw[v.id], top[v.cluster]
        out[v.id] = sum(getattr(weights, c) * (r[c] / t[c] if t[c] > 0 else 0.0) for c in CRITERIA)
    return out
