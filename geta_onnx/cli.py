"""The geta-onnx command line. Each command parses options, calls one library function
and prints a summary. Exit codes: 0 success, 1 a failure (GetaError: one line naming the
file, node or option and what to do), 2 a usage error (click's own, and ConfigError), 130
an interruption (Ctrl-C; training commands say how to continue with --resume)."""
from __future__ import annotations

import functools
import json
import os
import sys

import click

from .errors import ConfigError, GetaError


def _friendly_errors(fn):
    """GetaError -> one line on stderr and its exit code; Ctrl-C -> 130; anything else is a
    bug of geta-onnx: one line that says so (GETA_ONNX_DEBUG=1 shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GetaError as e:
            click.echo(f"error: {_one_line(str(e))}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            resumable = "data_spec" in kwargs and "resume" in kwargs
            hint = ("; run the same command with --resume to continue from the last finished epoch"
                    if resumable else "")
            click.echo(f"error: interrupted{hint}", err=True)
            sys.exit(130)
        except click.ClickException:
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback at a user
            if os.environ.get("GETA_ONNX_DEBUG"):
                raise
            click.echo(f"error: internal error in geta-onnx ({type(e).__name__}: {_one_line(str(e))}); please "
                       "report it with the command line, and GETA_ONNX_DEBUG=1 set for the traceback", err=True)
            sys.exit(1)

    return wrapper


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no details"


def _refuse_json_over_inputs(json_path: str | None, models, data=()) -> None:
    """--json must not land on a model (or its external data) or the data."""
    if json_path:
        from .outputs import refuse_overlap

        refuse_overlap({"--json": json_path}, models=[m for m in models if m], data=data)


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for v in values:
        name, _, dims = v.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"'{v}': expected NAME=D1xD2x..., e.g. input_ids=1x128",
                                     param_hint="--shape") from None
        if not name or not shapes[name]:
            raise click.BadParameter(f"'{v}': expected NAME=D1xD2x...", param_hint="--shape")
        if any(d < 1 for d in shapes[name]):
            raise click.BadParameter(f"'{v}': every dim must be >= 1", param_hint="--shape")
    return shapes


def _input_value_option(help_text: str):
    """--input-value NAME=VALUE (repeatable), the same option in compress, train, verify,
    inspect and bench; parsed by preflight.input_values."""
    return click.option("--input-value", "input_values", multiple=True, metavar="NAME=VALUE", help=help_text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geta-onnx")
def main() -> None:
    """Compress ONNX models: structured pruning + mixed-precision quantization in one training run."""


@main.command()
@click.argument("model")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Also write the report as JSON.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx..",
              help="Fix an input's dims for MAC counts (symbolic dims count as 1 otherwise).")
@_input_value_option("Inspect the model with input NAME fixed at VALUE (as compress --input-value trains it).")
@_friendly_errors
def inspect(model: str, json_path: str | None, shapes: tuple[str, ...], input_values: tuple[str, ...]) -> None:
    """Opset, op histogram, parameters, MACs, unsupported ops and pruning groups of MODEL."""
    from .inspect import inspect_model, render_text
    from .io import write_text_atomic
    from .preflight import input_values as parse_values

    _refuse_json_over_inputs(json_path, [model])
    report = inspect_model(model, shapes=_parse_shapes(shapes), values=parse_values(input_values))
    click.echo(render_text(report))
    if json_path:
        write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


@main.command()
@click.argument("model")
@click.option("--max-groups", type=click.IntRange(min=1), default=None,
              help="Check a seeded sample of N groups (big models); default: every group.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx..", help="Fix an input's dims.")
@_input_value_option("Check the model with input NAME fixed at VALUE (as compress --input-value trains it).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@_friendly_errors
def verify(model: str, max_groups: int | None, shapes: tuple[str, ...], input_values: tuple[str, ...], seed: int,
           json_path: str | None) -> None:
    """Check that MODEL can be trained and pruned: bridge parity with onnxruntime, gradients,
    and zero-invariance of its pruning groups. Exit 0 only when every check holds."""
    from .graph import load_model
    from .graph.interface import adapt_interface
    from .graph.quantized import as_float
    from .io import write_text_atomic
    from .preflight import input_values as parse_values
    from .verify import verify_model

    _refuse_json_over_inputs(json_path, [model])
    fixed = _parse_shapes(shapes)
    floated, note = as_float(load_model(model))  # an int8 QDQ file: checked as compress trains it
    if note:
        click.echo(f"{model}: {note}")
    loaded, _ = adapt_interface(floated, parse_values(input_values))
    checks, qadg = verify_model(loaded, shapes=fixed, max_groups=max_groups, seed=seed, log=click.echo)
    width = max(len(c.name) for c in checks)
    for c in checks:
        click.echo(f"{'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  {c.detail}")
        for f in c.failures[:10]:
            click.echo(f"        - {f}")
        if len(c.failures) > 10:
            click.echo(f"        ... and {len(c.failures) - 10} more")
    s = qadg.summary()
    click.echo(f"groups: {s['groups']} ({s['prunable_groups']} prunable), prunable share: "
               f"{s['prunable_param_share']:.1%} of parameters, {s['prunable_mac_share']:.1%} of MACs")
    if json_path:
        write_text_atomic(json_path, json.dumps({"model": model, "checks": [c.to_dict() for c in checks],
                                                 "groups": s}, indent=2) + "\n")
    if not all(c.passed for c in checks):
        sys.exit(1)


def _finite(ctx, param, value):
    """click callback: NaN and inf pass FloatRange; a budget must be a finite number."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def _bits(value: str | None, option: str) -> tuple[int, int] | None:
    if value is None:
        return None
    lo, sep, hi = value.partition(":")
    try:
        low, high = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise click.BadParameter(f"'{value}': expected LOW:HIGH, e.g. 4:8", param_hint=option) from None
    return low, high


def _default(section: str, key: str) -> str:
    """The config dataclasses' default of [section] key, as the help text shows it (so the
    help can never drift from what a run without the option uses)."""
    import dataclasses

    from .settings import Settings

    value = next(f.default for f in dataclasses.fields(getattr(Settings(), section)) if f.name == key)
    if key.endswith("_bits"):
        return f"{value[0]}:{value[1]}"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def training_options(fn):
    """Options shared by the commands that train (train, compress): defined once."""
    options = [
        click.option("--data", "data_spec", required=True, metavar="SPEC",
                     help="npz:FILE | idx:DIR | folder:DIR | py:MODULE:FUNCTION"),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML / YAML settings file."),
        click.option("--target-sparsity", type=float,
                     help=f"Fraction of prunable groups removed (default {_default('prune', 'target_sparsity')})."),
        click.option("--target-bops", type=float, help="Target relative BOPs instead of a sparsity, e.g. 0.05."),
        click.option("--target-speedup", type=float, callback=_finite,
                     help="Predicted speedup over the fp32 original in onnxruntime instead of a sparsity, e.g. 3 "
                     "(latency model of this machine; confirmed by measurement at the end)."),
        click.option("--target-latency-ms", type=float, callback=_finite,
                     help="Predicted milliseconds per batch (the largest latency batch) instead of a sparsity."),
        click.option("--max-accuracy-drop", "max_accuracy_drop", type=float, callback=_finite,
                     help="Quality guard: stop pruning before held-out top-1 drops more than this below the "
                     "original's, e.g. 0.005 (rolls the last pruning period back; docs/guard.md)."),
        click.option("--min-fidelity", type=float, callback=_finite,
                     help="Quality guard of label-free runs: stop pruning before the agreement / cosine with the "
                     "original falls below this, e.g. 0.99."),
        click.option("--latency-table", type=click.Path(dir_okay=False),
                     help="Latency table file (docs/latency.md): loaded if it exists (e.g. measured on the target "
                     "machine), else measured here and written there."),
        click.option("--weight-bits", metavar="LOW:HIGH",
                     help=f"Weight bit range (default {_default('quant', 'weight_bits')})."),
        click.option("--act-bits", metavar="LOW:HIGH",
                     help=f"Activation bit range (default {_default('quant', 'act_bits')})."),
        click.option("--reduce-range", type=click.Choice(["auto", "on", "off"]),
                     help=f"int8 weights on a 7-bit grid (default {_default('quant', 'reduce_range')}). auto: where the "
                     "target's onnxruntime int8 kernels saturate full-range weights (x86 without VNNI; the target: "
                     "--latency-table's when it records its probe, else this CPU); on: for a file deployed on other "
                     "or unknown x86 CPUs (docs/deployment.md)."),
        click.option("--group-divisible", type=int,
                     help=f"Kept channels per layer: a multiple of this (default {_default('prune', 'group_divisible')})."),
        click.option("--epochs", type=click.IntRange(min=1),
                     help="Training epochs (default: automatic, enough epochs for 2,000 steps, at most 100)."),
        click.option("--steps", type=click.IntRange(min=1), help="Training steps (overrides --epochs)."),
        click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]),
                     help=f"QASSO's base optimizer (default {_default('optim', 'optimizer')})."),
        click.option("--lr", type=float, help=f"Learning rate of the weights (default {_default('optim', 'lr')})."),
        click.option("--batch-size", type=int, help=f"Training batch size (default {_default('data', 'batch_size')}); "
                     "under torchrun the global batch, split across the processes."),
        _input_value_option("Feed input NAME one value for the whole run (a scalar such as a sample rate, sr=16000): "
                            "the model is compressed for that value; the output keeps the input. Repeatable."),
        click.option("--device", help="cpu, cuda or cuda:N (under torchrun: one GPU per process)."),
        click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]),
                     help=f"Mixed-precision forward (default {_default('train', 'amp')}); fp16 needs cuda. Weights, QASSO and the "
                     "quantizers stay float32."),
        click.option("--seed", type=int, help=f"Seed of data order and initial choices (default {_default('train', 'seed')})."),
        click.option("--resume", is_flag=True,
                     help="Continue from the run folder's checkpoint (refused when the settings changed)."),
        click.option("--force", is_flag=True,
                     help="Start over although the run folder holds a checkpoint, or --resume with changed settings."),
        click.option("--skip-data-check", is_flag=True,
                     help="Train even when the original model scores near chance on --data (wrong data preparation?)."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def settings_from_options(o: dict):
    from .config import BUDGETS
    from .settings import load_settings

    s = load_settings(o["config_file"])
    given = [k for k in BUDGETS if o.get(k) is not None]
    if len(given) > 1:
        raise ConfigError("options " + " and ".join(f"'--{k.replace('_', '-')}'" for k in given)
                          + ": give one budget, not several")
    if given:  # a budget on the command line replaces the config file's budget, whichever kind that is
        s = s.replace("prune", **{k: o[k] if k == given[0] else None for k in BUDGETS})
    s = s.override("prune", group_divisible=o["group_divisible"], latency_table=o.get("latency_table"))
    drop, fidelity = o.get("max_accuracy_drop"), o.get("min_fidelity")
    if drop is not None and fidelity is not None:
        raise ConfigError("options '--max-accuracy-drop' and '--min-fidelity': give one quality guard, not both")
    if drop is not None and not 0 <= drop < 1:
        raise ConfigError(f"option '--max-accuracy-drop': expected a drop in [0, 1), e.g. 0.005 for half a point; "
                          f"got {drop}")
    if fidelity is not None:
        if not 0 < fidelity <= 1:
            raise ConfigError(f"option '--min-fidelity': expected a value in (0, 1], e.g. 0.99; got {fidelity}")
        drop = 1.0 - fidelity
    s = s.override("prune", max_quality_drop=drop)
    s = s.override("quant", weight_bits=_bits(o["weight_bits"], "--weight-bits"),
                   act_bits=_bits(o["act_bits"], "--act-bits"), reduce_range=o.get("reduce_range"))
    s = s.override("schedule", epochs=o["epochs"], steps=o["steps"])
    s = s.override("optim", optimizer=o["optimizer"], lr=o["lr"])
    s = s.override("data", batch_size=o["batch_size"], input_values=tuple(o.get("input_values") or ()) or None)
    s = s.override("train", device=o["device"], seed=o["seed"], amp=o["amp"],
                   progress=False if o["no_progress"] else None)
    return s


@main.command()
@click.argument("model")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoint.safetensors and summary.json.")
@training_options
@_friendly_errors
def train(model: str, out_dir: str, **options) -> None:
    """Train MODEL once with GETA (structured pruning + mixed-precision QAT) on --data.

    Writes OUT/checkpoint.safetensors (resumable with --resume) and OUT/summary.json."""
    from .train import distributed
    from .train_job import train_model

    spec = options["data_spec"]
    m = train_model(model, spec, out_dir, settings_from_options(options), resume=options["resume"],
                    force=options["force"], check_data=not options["skip_data_check"],
                    inputs=tuple(p for p in [options["config_file"]] if p))
    if m is not None:
        acc = f", accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""
        click.echo(f"trained {m['steps']} steps: {m['removed_groups']} of {m['prunable_groups']} groups "
                   f"removed ({m['group_sparsity']:.1%}), relative BOPs {m['relative_bops']:.4f}{acc}")
        click.echo(f"wrote {out_dir}/checkpoint.safetensors and {out_dir}/summary.json")
    if distributed.launched():
        distributed.clean_exit()


@main.command()
@click.argument("model")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Output model (.onnx); its report, plots and run folder are written beside it.")
@training_options
@click.option("--profile", type=click.Choice(["ort", "tensorrt"]),
              help=f"QDQ export profile (default {_default('export', 'profile')}).")
@click.option("--batch", "batches", multiple=True, metavar="N[,N..]",
              help=f"Latency batch sizes (default {_default('export', 'batches')}).")
@click.option("--threads", type=click.IntRange(min=1),
              help=f"onnxruntime threads of the latency check (default {_default('export', 'threads')}).")
@click.option("--eval-limit", type=click.IntRange(min=0), help="Score at most N eval samples (default: all).")
@click.option("--no-plots", is_flag=True, help="Do not write the PNG plots.")
@click.option("--dynamic-batch", is_flag=True,
              help="A model whose input takes a static batch of 1 is written with a dynamic batch (default: "
              "the input signature stays as it was).")
@click.option("--int8-only", is_flag=True,
              help="Ship the int8 QDQ model even when onnxruntime runs its float twin (the same pruned model "
              "without Q/DQ) faster (default: the faster one ships, at no quality cost).")
@_friendly_errors
def compress(model: str, out_path: str, profile: str | None, batches: tuple[str, ...], threads: int | None,
             eval_limit: int | None, no_plots: bool, dynamic_batch: bool, int8_only: bool, **options) -> None:
    """Compress MODEL in one GETA training run on --data: structured pruning + mixed-precision
    quantization, exported as a QDQ ONNX file and validated in onnxruntime.

    Writes OUT.onnx, OUT.report.json, OUT.report.md, OUT.layers.png, OUT.summary.png and the
    resumable checkpoint folder OUT.run/. Never overwrites MODEL."""
    from .compress import compress as run_compress
    from .train import distributed

    settings = settings_from_options(options).override(
        "export", profile=profile, batches=tuple(_parse_batches(batches)) if batches else None, threads=threads,
        eval_limit=eval_limit, plots=False if no_plots else None, dynamic_batch=True if dynamic_batch else None,
        float_fallback=False if int8_only else None)
    report = run_compress(model, options["data_spec"], out_path, settings, resume=options["resume"],
                          force=options["force"], check_data=not options["skip_data_check"],
                          inputs=tuple(p for p in [options["config_file"]] if p), log=click.echo)
    if report is not None:
        click.echo(_headline(report))
    if distributed.launched():
        distributed.clean_exit()


def _headline(report: dict) -> str:
    if "accuracy" in report:
        a = report["accuracy"]
        quality = f"accuracy {a['original']:.2%} -> {a['compressed']:.2%}"
    else:
        quality = f"{report['fidelity']['metric']} {report['fidelity']['value']:.4f}"
    speed = ", ".join(f"{v:.2f}x at batch {b}" for b, v in report["speedup"].items())
    shipped = f"; shipped {report['precision']['shipped']}" if "precision" in report else ""
    return (f"{quality}; speedup {speed}; relative BOPs {report['relative_bops']:.4f}; "
            f"{report['groups']['removed']} of {report['groups']['prunable']} groups removed{shipped}")


def _parse_batches(values: tuple[str, ...]) -> list[int]:
    """--batch 1 --batch 32 or --batch 1,32 -> [1, 32]."""
    batches = []
    for v in values:
        for part in v.split(","):
            try:
                b = int(part)
            except ValueError:
                raise click.BadParameter(f"'{v}': expected batch sizes like 1 or 1,32", param_hint="--batch") from None
            if b < 1:
                raise click.BadParameter(f"'{v}': batch sizes must be >= 1", param_hint="--batch")
            batches.append(b)
    return list(dict.fromkeys(batches))


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--batch", "batches", multiple=True, default=("1",), show_default=True, metavar="N[,N..]",
              help="Batch sizes (repeatable or comma list, e.g. 1,32).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="onnxruntime intra-op threads.")
@click.option("--repeats", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed runs per model and batch.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx..",
              help="Fix an input's dims (the first dim is set by --batch); other symbolic dims: the first "
              "size the model runs at.")
@_input_value_option("Feed input NAME the value VALUE in every model (a sample rate, sr=16000; a state, h=0).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@_friendly_errors
def bench(models: tuple[str, ...], batches: tuple[str, ...], threads: int, repeats: int, warmup: int,
          shapes: tuple[str, ...], input_values: tuple[str, ...], json_path: str | None) -> None:
    """onnxruntime latency (p50 / p90 ms per batch) and size of MODELS, measured in rotating
    blocks (one live session at a time); speedup and size are relative to the first model."""
    from pathlib import Path

    from .bench import measure_latency
    from .graph import load_model
    from .graph.batch import static_batch_one
    from .graph.feeds import runnable_shapes
    from .graph.interface import adapt_interface
    from .io import write_text_atomic
    from .preflight import input_values as parse_values

    sizes = _parse_batches(batches)
    _refuse_json_over_inputs(json_path, models)
    values = parse_values(input_values)
    first = load_model(models[0], normalize=False)
    probe, _ = adapt_interface(first, values, move_batch=False)  # sizes chosen with the values fed
    fixed, chosen = runnable_shapes(probe, _parse_shapes(shapes), batch=1 if static_batch_one(first) else 2)
    if chosen:
        click.echo(f"inputs: {chosen}")
    results = measure_latency(list(models), sizes, threads=threads, repeats=repeats, warmup=warmup, shapes=fixed,
                              values=values)
    width = max(len(Path(r["model"]).name) for r in results)
    click.echo(f"{'model':<{width}}  {'size MB':>8}  {'batch':>5}  {'p50 ms':>9}  {'p90 ms':>9}  {'speedup':>7}")
    for r in results:
        for b, lat in r["latency_ms"].items():
            click.echo(f"{Path(r['model']).name:<{width}}  {r['size_bytes'] / 1e6:>8.2f}  {b:>5}  {lat['p50']:>9.3f}  "
                       f"{lat['p90']:>9.3f}  {r['speedup'][b]:>6.2f}x")
    click.echo(f"onnxruntime, {threads} intra-op thread(s), {repeats} repeats after {warmup} warm-up runs")
    if json_path:
        doc = {"threads": threads, "repeats": repeats, "warmup": warmup, "batches": sizes, "models": results}
        write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


@main.command("latency-table")
@click.argument("model")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The table file (JSON) to write; an existing table of this machine is completed.")
@click.option("--batch", type=click.IntRange(min=1),
              help="The batch compress times at: its largest --batch (default "
                   f"{max(map(int, _default('export', 'batches').split(',')))}), or 1 for a model whose inputs take a "
                   "static batch of 1 (default there).")
@click.option("--threads", type=click.IntRange(min=1), default=int(_default("export", "threads")), show_default=True,
              help="onnxruntime intra-op threads (compress's --threads).")
@click.option("--group-divisible", type=click.IntRange(min=1), default=int(_default("prune", "group_divisible")),
              show_default=True, help="The unit of kept channels the widths are measured on (compress's).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx..",
              help="Fix an input's dims as the training data has them (a sequence length, an image size); the "
                   "first dim is the batch.")
@_input_value_option("Feed input NAME the value VALUE (as compress's --input-value).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly_errors
def latency_table(model: str, out_path: str, batch: int | None, threads: int, group_divisible: int,
                  shapes: tuple[str, ...], input_values: tuple[str, ...], no_progress: bool) -> None:
    """Measure MODEL's latency table on this machine, without data or training: run it on the
    deployment target, then `compress --latency-table FILE` anywhere (docs/latency.md)."""
    from .latency.target_table import measure_target_table
    from .outputs import refuse_overlap
    from .preflight import input_values as parse_values

    refuse_overlap({"-o": out_path}, models=[model])
    table, measured, chosen = measure_target_table(model, out_path, batch=batch, threads=threads,
                                                   unit=group_divisible, shapes=_parse_shapes(shapes),
                                                   values=parse_values(input_values), progress=not no_progress)
    if chosen:
        click.echo(f"inputs: {chosen}")
    saturates = {True: "saturate full-range weights", False: "compute full-range weights exactly"}
    click.echo(f"wrote {out_path}: {len(table.entries)} layer signatures ({measured} measured now), "
               f"{table.target.cpu}, {table.target.runtime}, {threads} thread(s), batch {table.target.batch}; its int8 "
               f"kernels {saturates[table.int8_saturates]} ([quant] reduce_range \"auto\" decides by it)")


@main.command("eval")
@click.argument("model")
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="npz:FILE | idx:DIR | folder:DIR | py:MODULE:FUNCTION (its eval split, else its train split).")
@click.option("--reference", type=click.Path(dir_okay=False), help="Measure agreement / fidelity with this model.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Use a seeded subset of N samples (0: all).")
@click.option("--output", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which model output to score.")
@click.option("--metric", type=click.Choice(["auto", "agreement", "cosine", "mse"]), default="auto", show_default=True,
              help="Fidelity metric with --reference (auto: agreement for class scores, cosine for embeddings).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--unfused", is_flag=True,
              help="Run MODEL's QDQ math (onnxruntime's basic graph optimizations, no fused int8 kernels): what a "
                   "CPU whose int8 kernels compute it exactly scores (docs/deployment.md).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@_friendly_errors
def eval_(model: str, data_spec: str, reference: str | None, batch_size: int, limit: int, output: int, metric: str,
          threads: int, unfused: bool, json_path: str | None) -> None:
    """Accuracy of MODEL in onnxruntime on --data, or its agreement with --reference."""
    from .bench import evaluate_onnx
    from .bench.session import read_model
    from .config import DataConfig
    from .io import write_text_atomic
    from .quant import weight_range
    from .train import load_data

    _refuse_json_over_inputs(json_path, [model, reference], [data_spec])
    # val_split=0: without an eval split the whole train split is scored, not a held-out slice
    config = DataConfig(batch_size=batch_size, val_split=0.0, shuffle=False, limit=limit)
    loaded = read_model(model)
    data = load_data(data_spec, config, model=loaded)
    r = evaluate_onnx(model, data, reference=reference, output=output, metric=metric, limit=limit, threads=threads,
                      unfused=unfused)
    note = None if unfused else weight_range.saturation_note(model, loaded.proto)
    if note:
        r["int8_kernels_saturate"] = True
    click.echo(f"{r['metric']}: {r['value']:.4f}  ({r['samples']} samples of the {r['split']} split, output {output})")
    for k in ("accuracy", "reference_accuracy", "agreement", "cosine", "mse", "max_abs"):
        if k in r and k != r["metric"]:
            click.echo(f"  {k}: {r[k]:.6g}")
    if note:
        click.echo(note, err=True)
    if json_path:
        write_text_atomic(json_path, json.dumps(r, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


@main.command()
@click.argument("report_path", metavar="REPORT")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0, max=1), callback=_finite,
              help="Largest allowed accuracy drop as a fraction (0.01 = 1 point); for a label-free report, the "
              "fidelity loss. Default: the tolerance of the run's quality guard (compress --max-accuracy-drop / "
              "--min-fidelity), when it had one.")
@click.option("--min-speedup", type=click.FloatRange(min=0, min_open=True), required=True, callback=_finite,
              help="Smallest allowed original / compressed latency.")
@click.option("--max-relative-bops", type=click.FloatRange(min=0, min_open=True, max=1), callback=_finite,
              help="Largest allowed compressed / original BOPs.")
@click.option("--batch", type=click.IntRange(min=1),
              help="Check the speedup at this batch only (default: every batch in the report).")
@_friendly_errors
def gate(report_path: str, max_accuracy_drop: float, min_speedup: float, max_relative_bops: float | None,
         batch: int | None) -> None:
    """Exit 1 when the compression REPORT misses a budget (the CI accuracy-latency gate)."""
    from .bench import check_budgets, read_report

    report = read_report(report_path)
    if max_accuracy_drop is None:  # the quality the run was guarded to: the same figure, judged on the export
        guard = report.get("guard") or {}
        if "tolerance" not in guard:
            raise click.UsageError(f"{report_path}: its run had no quality guard to take the tolerance from; "
                                   "give --max-accuracy-drop")
        max_accuracy_drop = float(guard["tolerance"])
        click.echo(f"quality budget: {max_accuracy_drop:g}, the tolerance of the run's quality guard")
    checks = check_budgets(report, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup,
                           max_relative_bops=max_relative_bops, batch=batch, label=report_path)
    guard = report.get("guard") or {}
    unseen = (guard.get("exported") or {}).get("unseen")
    if unseen:  # samples no guard check read (compress._unseen_check)
        chosen = {"train": "on training samples held out for them", "val": "on the validation split"}.get(
            guard.get("held_out"), "on the others")
        click.echo(f"note: on the {unseen['samples']} held-out samples no quality-guard check scored, the drop is "
                   f"{unseen['drop']:+.4f} (the checks chose the structure {chosen})")
    if guard.get("fitted"):  # guard_data = "train" on samples the original fitted (guarding.fitted_original)
        click.echo(f"note: {guard['fitted']['note']}")
    width = max(len(c.name) for c in checks)
    for c in checks:
        click.echo(f"{'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  {c.shown}")
    if not all(c.passed for c in checks):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
