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


if __name__ == "__main__":  # pragma: no cover
    main()
