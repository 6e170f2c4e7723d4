"""onnxruntime latency of one or more models, measured interleaved.

    results = measure_latency(["model.onnx", "model.int8.onnx"], batches=[1, 32], threads=2,
                              repeats=50, warmup=5)
    results[1]["latency_ms"]["32"]["p50"], results[1]["speedup"]["32"]

Models are timed round-robin in blocks: model A runs a block of consecutive timed runs, then
B, then C, then A again, ... (BLOCK_ROUNDS blocks per model, the starting model rotated per
round), so a noisy neighbour or a frequency change on this shared machine slows every model
alike instead of whichever happened to run then. Blocks, not single runs: with onnxruntime's
default thread spinning, a session's idle pool threads keep spinning for a while after its
run and take a core from the next session's run. Alternating run by run measured the
Fashion-MNIST ResNet at batch 32 on 2 cores as 23.0 ms (fp32) / 6.4 ms (compressed), each one
alone 10.3 / 1.6 ms: a 2-4x error, larger for the smaller model. Each block starts with
untimed runs for at least SETTLE_S seconds (and SETTLE runs). Latencies are wall-clock milliseconds per batch (one session.run call).
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..errors import ConfigError
from .session import bench_feeds, model_size, open_session, read_model, run_error


def measure_latency(paths: list[str | os.PathLike], batches: list[int], threads: int = 2, repeats: int = 50,
                    warmup: int = 5, *, shapes: dict[str, tuple[int, ...]] | None = None,
                    seq: int = 128, seed: int = 0) -> list[dict]:
    """One dict per model, in the order given:

        {"model": path, "size_bytes": int, "size_ratio": size / first model's size,
         "latency_ms": {"1": {"p50": ms, "p90": ms, "mean": ms, "min": ms}, ...},
         "speedup": {"1": first model's p50 / this model's p50, ...}}

    Batch keys are strings so the dict is the same before and after a JSON round trip.
    `shapes` fixes inputs' non-batch dims (NAME -> full dims; the first dim is replaced by
    each batch size); other symbolic dims are `seq`."""
    if not paths:
        raise ConfigError("bench: give at least one model")
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"option '--batch': batch sizes must be >= 1, got {list(batches)}")
    if repeats < 1:
        raise ConfigError(f"option '--repeats': must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"option '--warmup': must be >= 0, got {warmup}")
    models = [read_model(p) for p in paths]
    sessions = [open_session(p, threads) for p in paths]
    results = [{"model": str(p), "size_bytes": model_size(p), "latency_ms": {}, "speedup": {}} for p in paths]
    for batch in dict.fromkeys(batches):  # unique, in the order asked
        feeds = [bench_feeds(m, batch, shapes, seq=seq, seed=seed) for m in models]
        times = _interleaved(paths, sessions, feeds, repeats, warmup)  # (models, repeats) seconds
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
SETTLE, SETTLE_S = 2, 0.1  # untimed runs / seconds opening each block: other sessions stop spinning


def _interleaved(paths, sessions, feeds, repeats: int, warmup: int) -> np.ndarray:
    n = len(sessions)
    for i, (s, f) in enumerate(zip(sessions, feeds)):  # warm-up: allocations, kernel choice, caches
        for _ in range(max(warmup, 1)):  # at least one run: a failing model fails before timing starts
            _run(paths[i], s, f)
    times = np.zeros((n, repeats))
    rounds = min(BLOCK_ROUNDS, repeats)
    bounds = np.linspace(0, repeats, rounds + 1).astype(int)  # repeats split into `rounds` blocks
    for r in range(rounds):
        for k in range(n):
            i = (r + k) % n  # rotate who goes first: no model always runs right after a cold gap
            settled, start = 0, time.perf_counter()
            while n > 1 and (settled < SETTLE or time.perf_counter() - start < SETTLE_S):
                sessions[i].run(None, feeds[i])
                settled += 1
            for rep in range(bounds[r], bounds[r + 1]):
                start = time.perf_counter()
                sessions[i].run(None, feeds[i])
                times[i, rep] = time.perf_counter() - start
    return times


def _run(path, session, feeds):
    try:
        return session.run(None, feeds)
    except Exception as e:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
        raise run_error(path, e) from None
