"""Build the latency model of one run: layer specs from a probe, the table (cached, or the
user's --latency-table), the original's measured time, and each group's effect on the layers.

    lm = build_latency_model(model, plan, groups, sample, target, unit=16, table_path=None)
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..graph.probe import probe_shapes
from ..quant.plan import QuantLayer
from .measure import fill, time_ms
from .model import LatencyModel, ModelLayer, probe_removal
from .spec import LayerSpec, layer_spec
from .table import LatencyTable, Target, cache_path

log = logging.getLogger(__name__)


WHOLE_ROUNDS = 2  # rounds of whole-model timing (whole_ms)
WHOLE_SPREAD = 1.25  # rounds further apart than this are reported


def in_axis(layer: QuantLayer) -> int | None:
    """The weight's input-channel axis in the initializer's layout (Conv 1, ConvTranspose 0,
    a 2-D Gemm / MatMul weight the axis that is not the output axis)."""
    if layer.out_axis is None:
        return None
    if layer.op_type == "Conv":
        return 1
    if layer.op_type == "ConvTranspose":
        return 0
    return 1 - layer.out_axis if len(layer.weight_shape) == 2 else None


def group_effects(layers: list[QuantLayer], groups) -> dict[int, list[tuple[int, str, int]]]:
    """group id -> [(index into `layers`, "in" | "out", channels removed)] (qadg.PruneGroup)."""
    where = {}
    for i, layer in enumerate(layers):
        if layer.out_axis is not None:
            where[(layer.weight, layer.out_axis)] = (i, "out")
        axis = in_axis(layer)
        if axis is not None:
            where[(layer.weight, axis)] = (i, "in")
    effects: dict[int, list[tuple[int, str, int]]] = {}
    for g in groups:
        for m in g.members:
            hit = where.get((m.tensor, m.axis)) if m.role in ("in", "out") else None
            if hit is not None:
                effects.setdefault(g.id, []).append((hit[0], hit[1], len(m.indices)))
    return effects


def _specs(model, plan_layers: list[QuantLayer], groups, shapes) -> tuple[list[LayerSpec], dict]:
    """The specs of the layers that have one, and each group's effects on them (indices into
    the returned list): one pass over the groups decides which axes are prunable and feeds
    the model."""
    effects = group_effects(plan_layers, groups)
    roles: dict[int, set[str]] = {}
    for items in effects.values():
        for i, role, _ in items:
            roles.setdefault(i, set()).add(role)
    specs, index = [], {}  # index: position in plan_layers -> position in specs
    for i, layer in enumerate(plan_layers):
        r = roles.get(i, set())
        spec = layer_spec(model, layer, shapes, prunable=("in" in r, "out" in r))
        if spec is None:
            log.info("%s: no latency spec for layer %s (its time counts in the rest)", model.label, layer.node)
            continue
        index[i] = len(specs)
        specs.append(spec)
    kept = {gid: [(index[i], role, n) for i, role, n in items if i in index] for gid, items in effects.items()}
    return specs, {gid: items for gid, items in kept.items() if items}


def build_latency_model(model, plan, groups, sample: dict[str, np.ndarray], target: Target, *, unit: int,
                        table_path: str | None = None, progress: bool = True, log_line=print,
                        int8_export_of=None) -> LatencyModel:
    """`model`: the graph.OnnxModel trained (its batch dim dynamic); `plan`: quant.QuantPlan;
    `groups`: the QADG's prunable groups; `sample`: one training sample per input (batch 1);
    `int8_export_of(removed group ids)`: the int8 QDQ export of the model with those groups
    cut, or None (latency.reference.int8_export). The unpruned export's measured time fits the
    int8 prediction, a probe structure's (model.probe_removal) splits its rest into a fixed
    and a shrinking part, and a narrow probe's bends it for the narrowest structures (no
    callable: the int8 layers as measured, plus the float model's rest)."""
    shapes = probe_shapes(model, feeds=sample)
    if not shapes:
        raise ConfigError(f"{model.label}: onnxruntime could not run the model on one training sample, so no "
                          "latency model can be built; use --target-sparsity or --target-bops instead")
    specs, effects = _specs(model, plan.layers, groups, shapes)
    if not specs:
        raise ConfigError(f"{model.label}: no prunable layer has a latency model (Conv / ConvTranspose / Gemm / "
                          "MatMul with known shapes); use --target-sparsity or --target-bops instead")
    table = _read_table(table_path, target)
    if table is not None and table.target != target:  # the user's table of another target: used as it is
        missing = sorted({s.key for s in specs} - set(table.entries))
        if missing:
            raise ConfigError(f"latency table '{table_path}' was measured on another target ({table.target.cpu}, "
                              f"{table.target.runtime}, {table.target.threads} threads, batch {table.target.batch}) "
                              f"and has no entry for {len(missing)} layer signature(s) of {model.label}, e.g. "
                              f"'{missing[0]}'; measure it for this model on that target, or drop --latency-table")
    table, measured = fill(table, specs, unit, target, progress=progress)
    if measured:
        _save(table, Path(table_path) if table_path else cache_path(target), log_line)
    feeds = {k: np.repeat(v, table.target.batch, axis=0) for k, v in sample.items()}
    quantized = {la.node for la in plan.layers if la.weight_quantizer is not None}
    layers = [ModelLayer(s, s.node in quantized) for s in specs]
    reference = int8_export_of(()) if int8_export_of is not None else None
    removed = probe_removal(effects, layers, unit) if reference is not None else []
    pruned = int8_export_of(removed) if removed else None
    narrow = probe_removal(effects, layers, unit, narrow=True) if pruned is not None else []
    narrowed = int8_export_of(narrow) if len(narrow) > len(removed) else None
    wholes = {"the original": model.proto, "the int8 reference": reference, "the int8 probe": pruned,
              "the narrow int8 probe": narrowed}
    ms = whole_ms({name: proto for name, proto in wholes.items() if proto is not None}, feeds,
                  table.target.threads, log_line)
    probe = (removed, ms["the int8 probe"]) if pruned is not None else None
    narrow_probe = (narrow, ms["the narrow int8 probe"]) if narrowed is not None else None
    return LatencyModel(layers, table, ms["the original"], effects, ms.get("the int8 reference"), int8_probe=probe,
                        int8_narrow=narrow_probe)


def _read_table(path: str | None, target: Target) -> LatencyTable | None:
    if path is not None:
        return LatencyTable.load(path) if Path(path).exists() else None
    cached = cache_path(target)
    if cached.is_file():
        try:
            table = LatencyTable.load(cached)
        except ConfigError as e:  # a damaged cache is measured again, not trusted
            log.warning("%s; measuring again", e)
            return None
        return table if table.target == target else None
    return None


def _save(table: LatencyTable, path: Path, log_line) -> None:
    try:
        table.save(path)
    except OSError as e:  # a read-only cache only costs the next run the measurements
        log_line(f"note: could not save the latency table to {path} ({e.strerror}); it is measured again next time")


def whole_ms(protos: dict, feeds, threads: int, log_line, rounds: int = WHOLE_ROUNDS) -> dict[str, float]:
    """Whole models at the target, each a longer run than a micro-benchmark for a steadier
    median, timed in `rounds` interleaved rounds (A B C, A B C); per model the least of its
    rounds' medians counts. Background load only ever adds time, and a burst that lasts a
    whole measurement is caught by the next round: once a MiniLM original measured 415 ms at
    the start of a run and 163 ms at its end, and the budget derived from it asked for no
    pruning at all (docs/latency.md, "Whole-model measurements")."""
    times_of = {name: [] for name in protos}
    for _ in range(rounds):
        for name, proto in protos.items():
            times_of[name].append(time_ms(proto, feeds, threads, min_seconds=0.5))
    for name, times in times_of.items():
        if max(times) > WHOLE_SPREAD * min(times):
            batch = len(next(iter(feeds.values())))
            log_line(f"note: {name} measured {min(times):.3f} and {max(times):.3f} ms at batch {batch}: "
                     f"the machine was busy; the latency model uses {min(times):.3f} ms")
    return {name: min(times) for name, times in times_of.items()}

