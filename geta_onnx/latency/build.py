"""Build the latency model of one run: layer specs from a probe, the table (cached, or the
user's --latency-table), the original's measured time, and each group's effect on the layers.

    lm = build_latency_model(model, plan, groups, sample, target, unit=16, table_path=None)
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from ..errors import ConfigError
from ..graph.probe import probe_shapes
from ..quant import weight_range
from ..quant.plan import QuantLayer
from .attribution import time_split
from .measure import fill, session, time_ms
from .model import LatencyModel, ModelLayer, probe_removal
from .spec import LayerSpec, layer_spec
from .table import LatencyTable, Target, cache_path

log = logging.getLogger(__name__)


WHOLE_ROUNDS = 3  # rounds of whole-model timing (timed_wholes: the median of 3 ratios outvotes one slow spell)
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
    callable: the int8 layers as measured, plus the float model's rest). Each whole model is
    also profiled once (latency.attribution): where its time goes, which fits the model in
    place of the difference of timings taken apart."""
    specs, effects = layer_specs(model, plan, groups, sample)
    table = _read_table(table_path, target)
    if table is not None and table.target != target:  # the user's table of another target: used as it is
        missing = sorted({s.key for s in specs} - set(table.entries))
        if missing:
            raise ConfigError(f"latency table '{table_path}' was measured on another target ({table.target.cpu}, "
                              f"{table.target.runtime}, {table.target.threads} threads, batch {table.target.batch}) "
                              f"and has no entry for {len(missing)} layer signature(s) of {model.label}, e.g. "
                              f"'{missing[0]}'; measure it for this model on that target, or drop --latency-table")
    table, measured = fill(table, specs, unit, target, progress=progress)
    stamped = record_probe(table, target)
    if measured or stamped:
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
              "the narrow int8 probe": narrowed, "the file as given": _given_file(model, feeds, table.target.threads,
                                                                                 log_line)}
    ms, profiled = timed_wholes({name: proto for name, proto in wholes.items() if proto is not None}, feeds,
                                table.target.threads, log_line, split=[s.node for s in specs],
                                profiled=("the original", "the int8 reference"),
                                relative_to="the int8 reference" if reference is not None else None)
    probe = (removed, ms["the int8 probe"]) if pruned is not None else None
    narrow_probe = (narrow, ms["the narrow int8 probe"]) if narrowed is not None else None
    splits = {"float": profiled.get("the original"), "int8": profiled.get("the int8 reference")}
    return LatencyModel(layers, table, ms["the original"], effects, ms.get("the int8 reference"), int8_probe=probe,
                        int8_narrow=narrow_probe, splits=splits, reference_ms=ms.get("the file as given"))


def _given_file(model, feeds, threads: int, log_line) -> onnx.ModelProto | None:
    """The user's already-quantized file `model` was read back from (graph/quantized.py), when
    it runs on `feeds` as it is: a speed budget is relative to it, not to the float model
    trained. None for a float input, an adapted interface (the file takes other inputs) or a
    file that does not run at this batch (a static batch of 1): the budget then is the float
    model's, and the log says so."""
    if model.quantized_file is None or model.runs_as is not None:
        return None
    proto = onnx.load(str(model.quantized_file))
    try:
        session(proto, threads).run(None, feeds)  # one run: timed_wholes times it with the others
    except Exception as e:  # noqa: BLE001 (onnxruntime's errors have no common type)
        log_line(f"note: {model.quantized_file} does not run at batch {len(next(iter(feeds.values())))} "
                 f"({str(e).splitlines()[0][:120]}): the latency budget is relative to the float model it was read "
                 "back as")
        return None
    return proto


def layer_specs(model, plan, groups, sample: dict[str, np.ndarray]) -> tuple[list[LayerSpec], dict]:
    """(the LayerSpecs of `plan`'s layers that have one, each group's effects on them) at the
    shapes `sample` (one sample per input) gives; a ConfigError when onnxruntime cannot run
    the model on it or no layer has a spec."""
    shapes = probe_shapes(model, feeds=sample)
    if not shapes:
        raise ConfigError(f"{model.label}: onnxruntime could not run the model on one sample, so no latency "
                          "model can be built; use --target-sparsity or --target-bops instead")
    specs, effects = _specs(model, plan.layers, groups, shapes)
    if not specs:
        raise ConfigError(f"{model.label}: no prunable layer has a latency model (Conv / ConvTranspose / Gemm / "
                          "MatMul with known shapes); use --target-sparsity or --target-bops instead")
    return specs, effects


def record_probe(table: LatencyTable, target: Target) -> bool:
    """Whether `table` got this machine's int8 saturation probe now (quant.weight_range): a
    table of this target records it, for "auto" on another machine that loads it."""
    if table.target != target or table.int8_saturates is not None:
        return False
    table.int8_saturates = weight_range.int8_saturates()
    return True


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
    return timed_wholes(protos, feeds, threads, log_line, rounds)[0]


def timed_wholes(protos: dict, feeds, threads: int, log_line, rounds: int = WHOLE_ROUNDS, split=(),
                 profiled=(), relative_to: str | None = None) -> tuple[dict[str, float], dict]:
    """whole_ms, and for the models named in `profiled` the latency.attribution.Split over the
    layers `split` (node names) of the round whose profile ran fastest: the host's slow spells
    slow memory-bound nodes more than the layers' kernels (a MiniLM export's layers were 52 %
    of its kernel time in fast runs, 45 % in slow ones), so the split is taken where the
    timing is (docs/latency.md, "The rest, attributed"). A model whose profile cannot be
    split has no entry.

    `relative_to` (a name): every other model's time is that model's least time times the
    median over the rounds of their ratio in the same round. A slow spell can outlast all
    rounds of one model and not another's; the ratio of two models timed seconds apart moves
    far less than either time."""
    times_of = {name: [] for name in protos}
    splits: dict = {}
    for _ in range(rounds):
        for name, proto in protos.items():
            times_of[name].append(time_ms(proto, feeds, threads, min_seconds=0.5))
            if name in profiled:
                found = time_split(proto, feeds, threads, list(split))
                if found is not None and (name not in splits or found.total < splits[name].total):
                    splits[name] = found
    for name, times in times_of.items():
        if max(times) > WHOLE_SPREAD * min(times):
            batch = len(next(iter(feeds.values())))
            log_line(f"note: {name} measured {min(times):.3f} and {max(times):.3f} ms at batch {batch}: "
                     f"the machine was busy; the latency model uses {min(times):.3f} ms")
    ms = {name: min(times) for name, times in times_of.items()}
    if relative_to is not None:
        ref = times_of[relative_to]
        ms = {name: ms[name] if name == relative_to else
              ms[relative_to] * float(np.median([t / r for t, r in zip(times, ref)]))
              for name, times in times_of.items()}
    return ms, splits
