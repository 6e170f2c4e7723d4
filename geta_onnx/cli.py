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


if __name__ == "__main__":  # pragma: no cover
    main()
