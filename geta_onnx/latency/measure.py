"""onnxruntime micro-benchmarks that fill a latency table.

Each (layer signature, kept widths, form) is one session of a one-layer graph
(latency.micro), opened with the options of the latency measurement
(bench.session.session_options: sequential, all graph optimisations, the target's threads), warmed up, then timed until
MIN_RUNS runs and MIN_SECONDS have passed (at most MAX_RUNS); the median minus
session.run's fixed cost is one measurement. One session is alive at a time.

A host can run slower for seconds to minutes at a time, which no median over 20 ms sees: on
the 2-vCPU AMD host of 2026-12-06 two builds of the same table put one point 1.8x apart.
So the whole grid is measured in PASSES passes over all the missing entries, and each point
keeps its least measurement (background load only ever adds time); three passes brought
the points of three builds within a few per cent of each other (docs/latency.md, "The
table file"). Timing each width against its layer's full-width graph in alternating runs
was tried and is worse: the idle session's spinning threads slow the other one.
"""
from __future__ import annotations

import time

import numpy as np
import onnx

from .micro import forms, layer_graph, overhead_graph
from .spec import LayerSpec
from .table import Entry, LatencyTable, Target

WARMUP, MIN_RUNS, MAX_RUNS, MIN_SECONDS = 3, 10, 200, 0.02
# passes over every missing entry; each point keeps its least median (module docstring)
PASSES = 3


def session(proto: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    from ..bench.session import session_options

    return ort.InferenceSession(proto.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def time_ms(proto: onnx.ModelProto, feeds: dict, threads: int, min_seconds: float = MIN_SECONDS) -> float:
    """Median wall-clock milliseconds of one session.run of `proto` on `feeds`, over at
    least MIN_RUNS runs and `min_seconds`."""
    sess = session(proto, threads)
    for _ in range(WARMUP):
        sess.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def measure_entry(spec: LayerSpec, unit: int, target: Target, overhead_ms: float, tick=lambda: None,
                  into: Entry | None = None) -> Entry:
    """Every (cin, cout) of spec.width_grid in every form of the layer; with `into` (an entry
    measured before), the forms it lacks on its widths, added to its grids. tick() after each
    benchmark."""
    cin, cout = (into.cin, into.cout) if into is not None else spec.width_grid(unit)
    todo = _missing_forms(spec, into)
    ms = {f: np.zeros((len(cin), len(cout))) for f in todo}
    for i, ci in enumerate(cin):
        for j, co in enumerate(cout):
            if spec.depthwise and ci != co:  # one width: the diagonal holds the measurement
                continue
            for form in todo:
                proto, feeds = layer_graph(spec, ci, co, target.batch, form)
                ms[form][i, j] = max(time_ms(proto, feeds, target.threads) - overhead_ms, 0.0)
                tick()
    if spec.depthwise:  # the input width follows the output: every row is the diagonal
        for form in todo:
            ms[form] = np.tile(np.diag(ms[form]), (len(cin), 1))
    return Entry(cin, cout, {**(into.ms if into is not None else {}), **ms})


def _missing_forms(spec: LayerSpec, entry: Entry | None) -> tuple[str, ...]:
    return tuple(f for f in forms(spec) if entry is None or f not in entry.ms)


def benchmarks_needed(spec: LayerSpec, unit: int, entry: Entry | None = None) -> int:
    cin, cout = (entry.cin, entry.cout) if entry is not None else spec.width_grid(unit)
    return len(_missing_forms(spec, entry)) * (len(cout) if spec.depthwise else len(cin) * len(cout))


def fill(table: LatencyTable | None, specs: list[LayerSpec], unit: int, target: Target,
         progress: bool = True) -> tuple[LatencyTable, int]:
    """`table` with an entry for every spec (measured where missing; a new table when None),
    and the number of entries measured now."""
    from tqdm.auto import tqdm

    if table is None:
        proto, feeds = overhead_graph(target.batch)
        table = LatencyTable(target, time_ms(proto, feeds, target.threads), {})
    # an entry without a form the layer may deploy as (a table from before the int4 form) gets
    # that form measured on its own widths, on this target only: a table of another target
    # keeps what it has (a layer without its int4 time is predicted as int8)
    here = table.target == target
    missing = list({s.key: s for s in specs if s.key not in table.entries
                    or (here and _missing_forms(s, table.entries[s.key]))}.values())
    total = PASSES * sum(benchmarks_needed(s, unit, table.entries.get(s.key)) for s in missing)
    least: dict[str, Entry] = {}
    with tqdm(total=total, unit="bench", desc="latency table", dynamic_ncols=True,
              disable=not progress or not missing) as bar:
        for _ in range(PASSES):
            for spec in missing:
                entry = measure_entry(spec, unit, table.target, table.overhead_ms,
                                      tick=lambda: bar.update(), into=table.entries.get(spec.key))
                least[spec.key] = _least(least[spec.key], entry) if spec.key in least else entry
    table.entries.update(least)
    return table, len(missing)


def _least(a: Entry, b: Entry) -> Entry:
    """Two measurements of the same widths: the least time of each point (a form measured
    before, which both carry, stays as it was)."""
    return Entry(a.cin, a.cout, {f: a.ms[f] if a.ms[f] is b.ms[f] else np.minimum(a.ms[f], b.ms[f]) for f in a.ms})
