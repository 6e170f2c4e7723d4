"""Side-by-side timing of onnxruntime sessions for the micro-benchmarks under tools/: each
round times every session in turn (interleaved, so a slow moment of the host hits every
form), the median of `runs` runs after `warmup`; the result is the median over `repeats`
rounds, in ms.

    ms = interleaved_medians({"float": s1, "int8": s2}, feeds, runs=20, repeats=3)
"""
from __future__ import annotations

import time

import numpy as np


def interleaved_medians(sessions: dict, feeds: dict, *, runs: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    rounds: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            for _ in range(warmup):
                session.run(None, feeds)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - start)
            rounds[name].append(float(np.median(times)) * 1e3)
    return {name: float(np.median(v)) for name, v in rounds.items()}
