"""The geta-onnx command line. Each command parses options, calls one library function
and prints a summary; GetaError becomes a one-line message and exit code 1."""
from __future__ import annotations

import functools
import json
import sys

import click

from .errors import GetaError


def _friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GetaError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for v in values:
        name, _, dims = v.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"'{v}': expected NAME=D1xD2x..., e.g. input_ids=1x128", param_hint="--shape")
        if not name or not shapes[name]:
            raise click.BadParameter(f"'{v}': expected NAME=D1xD2x...", param_hint="--shape")
    return shapes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geta-onnx")
def main() -> None:
    """Compress ONNX models: structured pruning + mixed-precision quantization in one training run."""


@main.command()
@click.argument("model")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Also write the report as JSON.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx..",
              help="Fix an input's dims for MAC counts (symbolic dims count as 1 otherwise).")
@_friendly_errors
def inspect(model: str, json_path: str | None, shapes: tuple[str, ...]) -> None:
    """Opset, op histogram, parameters, MACs and unsupported ops of MODEL."""
    from .inspect import inspect_model, render_text
    from .io import write_text_atomic

    report = inspect_model(model, shapes=_parse_shapes(shapes))
    click.echo(render_text(report))
    if json_path:
        write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


@main.command()
@click.argument("model")
@click.option("--max-groups", type=click.IntRange(min=1), default=None,
              help="Check a seeded sample of N groups (big models); default: every group.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx..", help="Fix an input's dims.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@_friendly_errors
def verify(model: str, max_groups: int | None, shapes: tuple[str, ...], seed: int, json_path: str | None) -> None:
    """Check that MODEL can be trained and pruned: bridge parity with onnxruntime, gradients,
    and zero-invariance of its pruning groups. Exit 0 only when every check holds."""
    from .graph import load_model
    from .io import write_text_atomic
    from .verify import verify_model

    loaded = load_model(model)
    checks, qadg = verify_model(loaded, shapes=_parse_shapes(shapes), max_groups=max_groups, seed=seed)
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


def _bits(value: str | None, option: str) -> tuple[int, int] | None:
    if value is None:
        return None
    lo, sep, hi = value.partition(":")
    try:
        low, high = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise click.BadParameter(f"'{value}': expected LOW:HIGH, e.g. 4:8", param_hint=option) from None
    return low, high


def training_options(fn):
    """Options shared by the commands that train (train, compress): defined once."""
    options = [
        click.option("--data", "data_spec", required=True, metavar="SPEC",
                     help="npz:FILE | idx:DIR | folder:DIR | py:MODULE:FUNCTION"),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML / YAML settings file."),
        click.option("--target-sparsity", type=float, help="Fraction of prunable groups removed (default 0.5)."),
        click.option("--target-bops", type=float, help="Target relative BOPs instead of a sparsity, e.g. 0.05."),
        click.option("--weight-bits", metavar="LOW:HIGH", help="Weight bit range (default 4:8)."),
        click.option("--act-bits", metavar="LOW:HIGH", help="Activation bit range (default 4:8)."),
        click.option("--group-divisible", type=int, help="Kept channels per layer: a multiple of this (default 16)."),
        click.option("--epochs", type=int, help="Training epochs (default: from the data size)."),
        click.option("--steps", type=int, help="Training steps (overrides --epochs)."),
        click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), help="QASSO's base optimizer."),
        click.option("--lr", type=float, help="Learning rate of the weights."),
        click.option("--batch-size", type=int, help="Training batch size (default 64)."),
        click.option("--device", help="cpu, cuda or cuda:N."),
        click.option("--seed", type=int, help="Seed of data order and initial choices."),
        click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def settings_from_options(o: dict):
    from .settings import load_settings

    s = load_settings(o["config_file"])
    s = s.override("prune", target_sparsity=o["target_sparsity"], group_divisible=o["group_divisible"])
    if o["target_bops"] is not None:
        s = s.override("prune", target_bops=o["target_bops"])
    s = s.override("quant", weight_bits=_bits(o["weight_bits"], "--weight-bits"),
                   act_bits=_bits(o["act_bits"], "--act-bits"))
    s = s.override("schedule", epochs=o["epochs"], steps=o["steps"])
    s = s.override("optim", optimizer=o["optimizer"], lr=o["lr"])
    s = s.override("data", batch_size=o["batch_size"])
    s = s.override("train", device=o["device"], seed=o["seed"], progress=False if o["no_progress"] else None)
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
    from pathlib import Path

    from .geta import run_geta
    from .graph import load_model
    from .io import write_text_atomic
    from .train import distributed, load_data

    settings = settings_from_options(options)
    loaded = load_model(model)
    data = load_data(options["data_spec"], settings.data, model=loaded, seed=settings.train.seed)
    result = run_geta(loaded, data, quant=settings.quant, prune=settings.prune, optim=settings.optim,
                      schedule=settings.schedule, train_config=settings.train, checkpoint_dir=out_dir,
                      resume=options["resume"])
    summary = {"model": model, "data": options["data_spec"], "settings": settings.to_dict(), **result.metrics,
               "bits": result.bits, "history": result.train.history}
    if distributed.info().is_main:
        write_text_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        m = result.metrics
        acc = f", accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""
        click.echo(f"trained {result.train.steps} steps: {m['removed_groups']} of {m['prunable_groups']} groups "
                   f"removed ({m['group_sparsity']:.1%}), relative BOPs {m['relative_bops']:.4f}{acc}")
        click.echo(f"wrote {out_dir}/checkpoint.safetensors and {out_dir}/summary.json")
    if distributed.launched():
        distributed.clean_exit()


if __name__ == "__main__":  # pragma: no cover
    main()
