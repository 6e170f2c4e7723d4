"""`geta-onnx compress`: the whole job in one call. Train the model once with GETA, export
the pruned QDQ model, validate it in onnxruntime against the original, write the report.

    report = compress("model.onnx", "npz:data.npz", "small.onnx", Settings())

Files, each written atomically and never over the input model:
    small.onnx            the pruned, mixed-precision QDQ model (export/)
    small.report.json     bench/report.py's schema + MACs, sizes, layers, fused ops, versions, settings
    small.report.md       the same for people (bench/render.py)
    small.layers.png      kept channels and bits per layer (bench/plots.py)
    small.summary.png     quality and latency before / after (and the quality guard's curve)
    small.run/            the training checkpoint (`--resume` continues from it)

Quality is measured in onnxruntime on the data's eval split (the spec's own, else the
held-out `val_split` of the training samples): top-1 of both models with integer labels,
else the fidelity of the compressed model to the original (agreement / cosine / mse).
Latency: both models in rotating blocks, one live session at a time (bench/latency.py), at
the data's per-sample shape.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, GetaError
from .settings import Settings


@dataclass(frozen=True)
class OutputPaths:
    model: Path
    report_json: Path
    report_md: Path
    layers_png: Path
    summary_png: Path
    run_dir: Path

    @classmethod
    def beside(cls, out: str | os.PathLike, source: str | os.PathLike) -> "OutputPaths":
        """The files of output model `out`; refuses an output that is the input model."""
        out = Path(out)
        if out.suffix.lower() != ".onnx":
            raise ConfigError(f"option '-o': '{out}' should end in .onnx (the report and plots go beside it)")
        if out.exists() and out.is_dir():
            raise ConfigError(f"option '-o': '{out}' is a directory; give the output model's file name")
        src = Path(source)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
            raise ConfigError(f"option '-o': '{out}' is the input model; choose another output path "
                              "(compress never overwrites its input)")
        for parent in out.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"option '-o': '{parent}' is a file, not a folder")
        stem = out.with_suffix("")
        return cls(out, Path(f"{stem}.report.json"), Path(f"{stem}.report.md"), Path(f"{stem}.layers.png"),
                   Path(f"{stem}.summary.png"), Path(f"{stem}.run"))

    def by_option(self) -> dict[str, Path]:
        """Every output, keyed as the error names it (all derive from option -o)."""
        return {"-o": self.model, "-o (report)": self.report_json, "-o (report text)": self.report_md,
                "-o (layers plot)": self.layers_png, "-o (summary plot)": self.summary_png,
                "-o (run folder)": self.run_dir}


def compress(model_path: str | os.PathLike, data_spec: str, out_path: str | os.PathLike,
             settings: Settings = Settings(), *, resume: bool = False, force: bool = False, check_data: bool = True,
             inputs: tuple = (), log=print) -> dict | None:
    """Run the job; returns the report (None on the non-main ranks of a torchrun launch).

    Before anything is read or trained, no output may land on an input (outputs.py; `inputs`:
    other files the caller read, e.g. the config file). The run folder (runs.py) is locked,
    probed for writing, and refuses to overwrite a checkpoint (--force) or to resume one of
    other settings. `check_data`: refuse data on which the original scores near chance."""
    from .export import dequantize, export_onnx, save
    from .geta import run_geta
    from .graph.batch import restore_batch_one
    from .outputs import refuse_overlap
    from .preflight import prepare_run
    from .runs import RunFolder
    from .train import distributed

    paths = OutputPaths.beside(out_path, model_path)
    refuse_overlap(paths.by_option(), models=[model_path], data=[data_spec], files=inputs)
    t0 = time.perf_counter()
    loaded, data, record, batch, settings = prepare_run(model_path, data_spec, settings, judge=check_data,
                                                        held_out=True, threads=settings.export.threads)
    if batch.static:
        log(f"{model_path}: {batch.describe()}")
    for line in batch.notes + batch.branches:
        log(f"{model_path}: {line}")
    with RunFolder(paths.run_dir, record, resume=resume, force=force, creates=[paths.model.parent]):
        result = run_geta(loaded, data, quant=settings.quant, prune=settings.prune, optim=settings.optim,
                          schedule=settings.schedule, train_config=settings.train, checkpoint_dir=paths.run_dir,
                          resume=resume, config=record, per_sample=batch.static and not batch.dynamic,
                          latency_at=settings.latency_at(batch.static and not settings.export.dynamic_batch),
                          profile=settings.export.profile)
        t_train = time.perf_counter()
        if not distributed.info().is_main:
            return None
        export_s = [0.0]  # seconds spent exporting (a guarded run may export twice); the rest validates

        def exported() -> tuple[dict, dict]:
            """(candidates, checks): the export of the module's state now, written to paths.model,
            and its validation in onnxruntime."""
            start = time.perf_counter()
            proto = export_onnx(result, loaded, settings.export.profile)
            if batch.static and batch.dynamic and not settings.export.dynamic_batch:
                proto = restore_batch_one(proto)  # the user's input signature (batch 1) unless --dynamic-batch
            save(proto, paths.model, source=model_path)
            export_s[0] += time.perf_counter() - start
            log(f"wrote {paths.model}; validating in onnxruntime")
            candidates = {"int8": proto}
            if settings.export.profile == "ort" and settings.export.float_fallback:
                candidates["float"] = dequantize(proto)  # the same pruned model in float: shipped if it runs faster
            return candidates, validate(loaded, paths.model, candidates, data, settings,
                                        output=settings.train.output, static_batch=batch.static)

        candidates, checks = exported()
        if result.guard is not None:
            candidates, checks = _guarded_file(result, (candidates, checks), exported, paths.model, model_path, log)
            _unseen_check(result, candidates[checks["precision"]["shipped"]], checks["quality"], data, loaded,
                          settings, log)
        if len(candidates) == 1:
            checks["precision"]["why"] = ("TensorRT runs the QDQ model (its latency is not onnxruntime's)"
                                          if settings.export.profile == "tensorrt" else "--int8-only")
        shipped, interface = checks["precision"]["shipped"], batch.interface
        if shipped != "int8" or interface.changed:  # validated in the adapted interface, written in the user's
            save(interface.restore(candidates[shipped]), paths.model, source=model_path)
        if shipped != "int8":
            log(f"wrote the float twin to {paths.model}: {checks['precision']['why']}")
        # a --resume run trains only the epochs left: count the checkpointed epochs' time too
        epochs_s = sum(h.get("seconds", 0.0) for h in result.train.history)
        report = _report(model_path, paths, data_spec, settings, result, checks, batch=batch.describe(),
                         branches=batch.branches, interface=interface.describe(),
                         wall={"train": max(t_train - t0, epochs_s), "export": export_s[0],
                               "validate": time.perf_counter() - t_train - export_s[0]})
        _write_outputs(report, paths, settings.export.plots, log)
        _check_latency_target(report, log)
        slower = {b: v for b, v in report["speedup"].items() if v < 1}
        if slower:
            tried = " and ".join(f"{k} {min(c['speedup'].values()):.2f}x"
                                 for k, c in report["precision"]["candidates"].items())
            log("warning: the compressed model is SLOWER than the original at batch "
                + ", ".join(f"{b} ({v:.2f}x)" for b, v in slower.items())
                + f" (exports timed: {tried}): the pruning removed too little of the time onnxruntime spends "
                "(docs/realworld.md); keep the original, or compare a run with a larger --target-sparsity")
    return report


def _guarded_file(result, first: tuple[dict, dict], exported, out: Path, source, log) -> tuple[dict, dict]:
    """The quality guard's last check, on the file that ships: the export's drop on the whole
    eval split in onnxruntime. When that misses the tolerance and the guard kept an earlier
    state within it (QualityGuard.export_fallback), that state is exported and validated too,
    and the one with the smaller drop ships (the final one on a tie). `first`: (candidates,
    checks) of the final state's export, written to `out`; `exported()` exports and validates
    the state now (to `out` too); `source`: the input model, which no write may land on."""
    from .export import save

    guard, (candidates, checks) = result.guard, first
    q = checks["quality"]
    drop = guard.measured_drop(q)
    if drop is None:
        return first
    guard.exported = {"split": q["split"], "samples": q["samples"], "drop": drop, "action": "shipped"}
    final = guard.export_fallback() if drop > guard.tolerance else None
    if final is not None:
        log(f"quality guard: the exported model drops {guard.metric} by {drop:.4f} on {q['samples']} held-out "
            f"samples, over the tolerance {guard.tolerance:g}; exporting the last state within it to compare")
        second = exported()
        drop_fallback = guard.measured_drop(second[1]["quality"])
        guard.exported["drop_fallback"] = drop_fallback
        if drop_fallback is not None and drop_fallback < drop:
            guard.exported["action"] = "the last state within the tolerance shipped instead"
            candidates, checks = second
        else:  # the final state ships after all: back to it, and its file again
            guard.opt.rollback(final)
            save(candidates["int8"], out, source=source)
            guard.exported["action"] = "shipped: the last state within the tolerance did no better"
    result.metrics["guard"] = guard.summary()
    return candidates, checks


def _unseen_check(result, proto, quality: dict, data, original, settings: Settings, log) -> None:
    """The shipped file's drop on the eval samples no guard check scored: the checks chose the
    structure on the split's first `guard.samples`, so only the rest estimates the drop without
    that choice's optimism; checks that scored the validation split, or training samples held
    out for them, left the whole split unread. Recorded as the guard's exported["unseen"]
    {"samples", "drop"} (nothing when the checks scored the whole split). `proto`: the file
    that ships, in the interface it was validated in; `quality`: its evaluate_onnx dict on the
    whole split."""
    import tempfile

    from .bench import evaluate_onnx
    from .export import save

    guard = result.guard
    if guard.exported is not None and guard.held_out in ("train", "val"):  # no check read the eval split
        drop = guard.measured_drop(quality)
        if drop is not None:
            _record_unseen(result, quality["samples"], drop, log)
        return
    rest = quality["samples"] - (guard.samples or 0)
    if guard.exported is None or not guard.samples or rest <= 0:
        return
    with tempfile.TemporaryDirectory(prefix="geta-unseen-") as tmp:
        path = Path(tmp) / "shipped.onnx"
        save(proto, path)
        q = evaluate_onnx(path, data, reference=original.run_path, output=settings.train.output,
                          skip=guard.samples, limit=rest, threads=settings.export.threads,
                          unfused=quality.get("unfused", False))
    drop = guard.measured_drop(q)
    if drop is not None:
        _record_unseen(result, q["samples"], drop, log)


def _record_unseen(result, samples: int, drop: float, log) -> None:
    guard = result.guard
    guard.exported["unseen"] = {"samples": samples, "drop": drop}
    log(f"quality guard: on the {samples} held-out samples no check scored, the shipped model drops "
        f"{guard.metric} by {drop:.4f} (tolerance {guard.tolerance:g})")
    result.metrics["guard"] = guard.summary()


def validate(original, compressed: str | os.PathLike, candidates: dict, data, settings: Settings, *,
             output: int = 0, static_batch: bool = False) -> dict:
    """Quality, latency, MACs, size and fusion of the export `compress` ships, next to
    `original` (the loaded OnnxModel it was trained from).

    `candidates`: name -> ModelProto, the int8 QDQ export first (the file `compressed` holds
    it), then optionally its float twin. All are timed together with the original (rotating
    blocks); bench.choice.pick decides which ships (its "precision" record: shipped, why, and
    every candidate's figures). `static_batch`: the original takes a batch of 1 only, so
    latency is compared at batch 1 alone."""
    import tempfile

    from .bench import evaluate_onnx, measure_latency
    from .bench.choice import Candidate, kernels_suspect, pick
    from .bench.report import latency_p50
    from .export import fusion_report, save
    from .graph import from_proto
    from .graph.stats import model_stats
    from .quant import weight_range

    ex = settings.export
    batches = [1] if static_batch else list(ex.batches)
    names = list(candidates)
    # int8 bound for a latency table's target that computes full-range weights exactly, on a CPU whose
    # kernels do not: scored as the target computes it (quant.weight_range.scored_unfused); timed as it is
    unfused = weight_range.scored_unfused(settings.quant, settings.prune.latency_table)
    with tempfile.TemporaryDirectory(prefix="geta-candidates-") as tmp:
        files = {names[0]: Path(compressed)}
        for name in names[1:]:
            files[name] = Path(tmp) / f"{name}.onnx"
            save(candidates[name], files[name])
        lat = measure_latency([original.run_path, *files.values()], batches, threads=ex.threads, repeats=ex.repeats,
                              shapes=_sample_shapes(data, [vi.name for vi in original.inputs]))
        timed = dict(zip(names, lat[1:]))
        # every export is scored: int8 below its float twin (the same weights) is a CPU whose int8 kernels do
        # not compute the model, or the activations' rounding; the int8 file's own QDQ math tells (choice.py, rule 0)
        scored: dict[str, tuple[dict, Candidate]] = {}  # name -> (evaluate_onnx's dict, its Candidate)
        for name in names:
            q = evaluate_onnx(files[name], data, reference=original.run_path, output=output, limit=ex.eval_limit,
                              threads=ex.threads, unfused=unfused and name == names[0])
            scored[name] = q, _scored(q, name, timed[name]["speedup"])
        qdq_math = None  # rule 0: int8 below its twin; scored as its own QDQ math, the kernels are told apart
        if unfused:  # int8 was scored so already
            qdq_math = scored[names[0]][1]
        elif kernels_suspect([scored[n][1] for n in names]):
            qdq_math = _scored(evaluate_onnx(files[names[0]], data, reference=original.run_path, output=output,
                                             limit=ex.eval_limit, threads=ex.threads, unfused=True),
                               names[0], timed[names[0]]["speedup"])
        choice = pick([scored[n][1] for n in names], qdq_math)
        sizes = {name: Path(f).stat().st_size for name, f in files.items()}
    how = {"scored_unfused": weight_range.UNFUSED_NOTE.format(name=names[0])} if unfused else {}
    if qdq_math is not None and not unfused:
        how["qdq_math_quality"] = qdq_math.quality  # the int8 file unfused (choice.py, rule 0)
    precision = {"shipped": choice.name, "why": choice.why, **how, "candidates": {
        name: {"latency_ms": latency_p50(r), "speedup": r["speedup"], "size_bytes": sizes[name],
               "quality": scored[name][1].quality, "metric": scored[name][1].metric,
               "samples": scored[name][1].samples}
        for name, r in timed.items()}}
    proto = candidates[choice.name]
    return {"quality": scored[choice.name][0], "latency": [latency_p50(lat[0]), latency_p50(timed[choice.name])],
            "latency_full": [lat[0], timed[choice.name]], "fusion": fusion_report(proto), "precision": precision,
            "macs": [model_stats(m).macs for m in (original, from_proto(proto))],
            "size_bytes": [Path(original.path).stat().st_size, sizes[choice.name]]}


def _scored(q: dict, name: str, speedup: dict):
    """The bench.choice.Candidate of an export scored by evaluate_onnx (`q`) and timed."""
    from .bench.choice import Candidate

    metric = "accuracy" if "accuracy" in q else q["metric"]
    return Candidate(name, speedup, q[metric if metric == "accuracy" else "value"], metric, q.get("samples"))


def _sample_shapes(data, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Each input's dims as the data gives them (e.g. a transformer's sequence length)."""
    from .train.batching import split_batch

    loader = data.eval if data.eval is not None else data.train
    inputs, _ = split_batch(next(iter(loader)), names, f"data spec '{data.spec}'")
    return {name: tuple(int(d) for d in x.shape) for name, x in zip(names, inputs)}


def _report(model_path, paths: OutputPaths, data_spec: str, settings: Settings, result, checks: dict,
            wall: dict, batch: str = "dynamic batch", branches: tuple = (), interface: tuple = ()) -> dict:
    from .bench import build_report
    from .quant.weight_range import describe as describe_weight_grid

    q = checks["quality"]
    quality = {}
    if "accuracy" in q and "reference_accuracy" in q:
        quality.update(accuracy_original=q["reference_accuracy"], accuracy_compressed=q["accuracy"])
    if "metric" in q and q["metric"] in ("agreement", "cosine", "mse", "max_abs"):
        quality["fidelity"] = (q["metric"], q["value"])
    m = result.metrics
    layers, bops = result.layers(), result.relative_bops
    if checks["precision"]["shipped"] == "float":  # the float twin ships: no layer runs quantized
        floats = dict.fromkeys(("weight_bits", "act_bits", "weight_bit_range", "act_bit_range"))
        layers = [{**la, **floats, "float_reason": la["float_reason"] or "float twin"} for la in layers]
        bops = checks["macs"][1] / checks["macs"][0] if checks["macs"][0] else None
    return build_report(
        original=str(model_path), compressed=str(paths.model), **quality,
        latency_original=checks["latency"][0], latency_compressed=checks["latency"][1],
        relative_bops=bops,
        quality_split={"split": q["split"], "samples": q["samples"],
                       **{k: q[k] for k in ("agreement", "cosine", "mse", "max_abs") if k in q}},
        latency_p90_ms={side: {b: v["p90"] for b, v in r["latency_ms"].items()}
                        for side, r in zip(("original", "compressed"), checks["latency_full"])},
        macs={"original": checks["macs"][0], "compressed": checks["macs"][1]},
        size_bytes={"original": checks["size_bytes"][0], "compressed": checks["size_bytes"][1]},
        group_sparsity=m["group_sparsity"],
        # target: the budget's count; planned: that count after rounding each layer's kept width to
        # group_divisible (what QASSO removes exactly)
        groups={"removed": m["removed_groups"], "prunable": m["prunable_groups"], "target": m["target_groups"],
                "planned": m["planned_groups"]},
        target_bops=m.get("target_bops"),
        **({"latency_model": _latency_report(m["latency"], checks)} if m.get("latency") else {}),
        **({"guard": m["guard"]} if m.get("guard") else {}),
        layers=layers,
        **({"tables": result.tables()} if result.plan.tables else {}),
        **({"recurrent": result.recurrent()} if result.plan.recurrent else {}),
        fused_ops=checks["fusion"],
        precision={**checks["precision"], **({"weight_grid": describe_weight_grid()}
                                             if settings.quant.reduce_range == "on" else {})},
        batch=batch,
        **({"branches": list(branches)} if branches else {}),
        **({"interface": list(interface)} if interface else {}),
        profile=settings.export.profile,
        threads=settings.export.threads,
        wall_time_s={**{k: round(v, 2) for k, v in wall.items()}, "total": round(sum(wall.values()), 2)},
        training={"steps": result.train.steps, "processes": result.train.processes, "device": result.train.device,
                  **({"teacher": result.teacher} if result.teacher else {}),
                  **({"teacher_memo": result.teacher_memo} if result.teacher_memo else {}),
                  "history": result.train.history},
        data=data_spec,
        settings=settings.to_dict(),
        versions=versions(),
        bops_convention="relative BOPs = sum(MACs x weight bits x activation bits) / the fp32 original's "
                        "(32 x 32 bits) over the Conv / Gemm / MatMul layers with weights",
    )


def _check_latency_target(report: dict, log) -> None:
    """A latency budget is confirmed by the measurement: a miss of more than 15 % is said."""
    lat = report.get("latency_model")
    if not lat or not lat.get("target_speedup"):
        return
    measured = report["speedup"].get(str(lat["batch"]))
    if measured is not None and measured < 0.85 * lat["target_speedup"]:
        log(f"warning: --target-speedup {lat['target_speedup']:g} was predicted but {measured:.2f}x was measured at "
            f"batch {lat['batch']} (docs/latency.md gives the latency model's error; a busy machine also slows "
            "the measurement): compare the report's predicted and measured times")


def _latency_report(lat: dict, checks: dict) -> dict:
    """The latency budget and the model's prediction beside the measured times, at its batch."""
    batch = str(lat["batch"])
    measured = {name: c["latency_ms"].get(batch) for name, c in checks["precision"]["candidates"].items()}
    original = checks["latency"][0].get(batch)
    predicted = lat["predicted_ms"] or {}
    return {"batch": lat["batch"], "threads": lat["threads"], "target_ms": lat["target_ms"],
            "target_speedup": lat["original_ms"] / lat["target_ms"] if lat["target_ms"] else None,
            "original_ms": {"predicted": lat["original_ms"], "measured": original},
            "predicted_ms": predicted, "measured_ms": measured,
            "error": {k: predicted[k] / v - 1 for k, v in measured.items() if v and k in predicted},
            # the same in shares of the original, each against the original timed beside it (the
            # prediction's at the start of the run, the measurement's now): a machine that runs
            # slower now than at the start moves both, and this error not (docs/latency.md)
            "error_relative": {k: (predicted[k] / lat["original_ms"]) / (v / original) - 1
                               for k, v in measured.items() if v and original and k in predicted},
            "table_target": lat["table"],
            "fit": lat.get("fit"),  # the unpruned model's time as the latency model splits it, per form
            "int8_only": lat.get("int8_only", []),  # MatMul layers kept from int4: MatMulNBits timed slower
            "float_check": lat.get("float_check")}  # layers one-layer times call slower in int8 (latency.chain)


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from . import __version__
    from .latency.table import cpu_name
    from .quant import kernel

    return {"geta_onnx": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_name()})",
            "fake_quant_kernel": kernel.status()}


def _write_outputs(report: dict, paths: OutputPaths, plots: bool, log) -> None:
    from .bench.render import render_markdown
    from .io import write_text_atomic

    write_text_atomic(paths.report_json, json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(paths.report_md, render_markdown(report, plots=paths if plots else None))
    written = [paths.report_json, paths.report_md]
    if plots:
        from .bench.plots import plot_layers, plot_summary

        try:
            plot_layers(report, paths.layers_png)
            plot_summary(report, paths.summary_png)
            written += [paths.layers_png, paths.summary_png]
        except ImportError:
            raise GetaError("the plots need matplotlib: pip install matplotlib, or pass --no-plots") from None
    log("wrote " + ", ".join(str(p) for p in written))
