"""onnxruntime latency of one or more models, measured in rotating blocks, one live session at a time.

    results = measure_latency(["model.onnx", "model.int8.onnx"], batches=[1, 32], threads=2,
                              repeats=50, warmup=5)
    results[1]["latency_ms"]["32"]["p50"], results[1]["speedup"]["32"]

Models are timed round-robin in blocks: model A runs a block of consecutive timed runs, then
B, then C, then A again, ... (BLOCK_ROUNDS blocks per model, the starting model rotated per
round), so a noisy neighbour or a frequency change on this shared machine slows every model
alike instead of whichever happened to run then. ONE session is alive at a time: each block
opens its model's session, warms it up, times it and closes it. With onnxruntime's default
thread spinning, the pool threads of the other live sessions spin and take cores from the
session being timed: alternating run by run over two live sessions was off by 2-4x (docs/
measurements.md, "Latency measurement: blocks, not run-by-run alternation"), and blocks over
five live sessions still doubled some rows on a second call. One live session is also how a model is
deployed. Latencies are wall-clock milliseconds per batch (one session.run call).
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..errors import ConfigError
from .session import bench_feeds, model_size, open_session, read_model, run_error


def measure_latency(paths: list[str | os.PathLike], batches: list[int], threads: int = 2, repeats: int = 50,
                    warmup: int = 5, *, shapes: dict[str, tuple[int, ...]] | None = None,
                    seq: int = 128, seed: int = 0, values: dict[str, str] | None = None) -> list[dict]:
    """One dict per model, in the order given:

        {"model": path, "size_bytes": int, "size_ratio": size / first model's size,
         "latency_ms": {"1": {"p50": ms, "p90": ms, "mean": ms, "min": ms}, ...},
         "speedup": {"1": first model's p50 / this model's p50, ...}}

    Batch keys are strings so the dict is the same before and after a JSON round trip.
    `shapes` fixes inputs' non-batch dims (NAME -> full dims; the first dim is replaced by
    each batch size); other symbolic dims are `seq`. `values`: inputs fed one value
    (--input-value NAME=VALUE) in every model."""
    if not paths:
        raise ConfigError("bench: give at least one model")
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"option '--batch': batch sizes must be >= 1, got {list(batches)}")
    if repeats < 1:
        raise ConfigError(f"option '--repeats': must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"option '--warmup': must be >= 0, got {warmup}")
    models = [read_model(p) for p in paths]
    results = [{"model": str(p), "size_bytes": model_size(p), "latency_ms": {}, "speedup": {}} for p in paths]
    for batch in dict.fromkeys(batches):  # unique, in the order asked
        feeds = [bench_feeds(m, batch, shapes, seq=seq, seed=seed, values=values) for m in models]
        times = _blocks(paths, threads, feeds, repeats, warmup)  # (models, repeats) seconds
        for r, t in zip(results, times):
            ms = t * 1e3
            r["latency_ms"][str(batch)] = {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                                           "mean": float(ms.mean()), "min": float(ms.min())}
    first = results[0]
    for r in results:
        r["size_ratio"] = r["size_bytes"] / first["size_bytes"]
        r["speedup"] = {b: first["latency_ms"][b]["p50"] / lat["p50"] for b, lat in r["latency_ms"].items()}
    return results


BLOCK_ROUNDS = 5  # blocks of timed runs per model
# A timed sample of a model that runs in microseconds (a scikit-learn MLP: 12 us) is one
# run's jitter: such a model's sample is the mean of as many consecutive runs as fill
# SAMPLE_S, and its warm-up lasts WARMUP_S at least. Models that take longer are timed one
# run per sample, as before.
SAMPLE_S = 0.002
WARMUP_S = 0.02


def _blocks(paths, threads: int, feeds, repeats: int, warmup: int) -> np.ndarray:
    """(models, repeats) seconds per run: per round, each model (rotating who goes first)
    opens a session, runs `warmup` untimed runs (allocations, kernel choice, caches; at least
    one, so a failing model fails before timing, and WARMUP_S at least), times its block,
    and closes the session."""
    n = len(paths)
    times = np.zeros((n, repeats))
    rounds = min(BLOCK_ROUNDS, repeats)
    bounds = np.linspace(0, repeats, rounds + 1).astype(int)  # repeats split into `rounds` blocks
    for r in range(rounds):
        for k in range(n):
            i = (r + k) % n  # rotate who goes first: no model always runs right after a cold gap
            session = open_session(paths[i], threads)
            inner = _warm_up(paths[i], session, feeds[i], warmup)
            for rep in range(bounds[r], bounds[r + 1]):
                start = time.perf_counter()
                for _ in range(inner):
                    session.run(None, feeds[i])
                times[i, rep] = (time.perf_counter() - start) / inner
            del session  # its threads go with it: only the next block's session is alive
    return times


def _warm_up(path, session, feeds, warmup: int) -> int:
    """Untimed runs (at least `warmup`, one, and WARMUP_S); returns how many runs a timed
    sample takes (1, or enough to fill SAMPLE_S)."""
    start, runs, fastest = time.perf_counter(), 0, float("inf")
    while runs < max(warmup, 1) or time.perf_counter() - start < WARMUP_S:
        t = time.perf_counter()
        _run(path, session, feeds)
        fastest = min(fastest, time.perf_counter() - t)
        runs += 1
    return max(1, int(SAMPLE_S / max(fastest, 1e-7)))


def _run(path, session, feeds):
    try:
        return session.run(None, feeds)
    except Exception as e:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
        raise run_error(path, e) from None
