"""Export the model zoo to ONNX, reproducibly.

    python -m samples.export_zoo --out DIR [--models a,b] [--exporter legacy|dynamo|both|...] [--opset N]

writes DIR/<model>.<exporter>.onnx. The same command writes the same bytes every time (the
weights are seeded; nothing time- or path-dependent is stored, see _strip_metadata).
From code: `export(name, exporter, path_or_buffer, opset=17)` returns the ModelProto.

Exporters (measured with torch 2.13 + onnxscript 0.7):

legacy       torch.onnx.export(model.eval(), ..., dynamo=False, training=TrainingMode.EVAL,
             do_constant_folding=False): BatchNormalization nodes KEPT. The TorchScript
             exporter fuses Conv+BatchNorm in `_jit_pass_onnx_eval_peephole`, which runs only
             when do_constant_folding=True AND training is EVAL (torch/onnx/_internal/
             torchscript_exporter/utils.py, _model_to_graph). Turning folding off is the one
             flag that keeps BN with an eval-mode export (training=PRESERVE on an eval model
             also skips the peephole, but it is meant for training exports and warns).
             Side effect: nothing else is folded either, so Linear on 3-D input keeps its
             Transpose(W) -> MatMul (W stays the original `*.weight` initializer) and shape
             arithmetic stays in the graph; geta_onnx.graph.normalize folds what is constant.
legacy_fold  the torch defaults: do_constant_folding=True, training=EVAL. Conv+BN are fused
             (BN gone; the Conv gets new weights named like `onnx::Conv_123`), transposed
             MatMul weights are folded into new initializers. This is what users usually ship.
dynamo       torch.onnx.export(model, ..., dynamo=True, optimize=False) followed by the same
             onnxscript optimizer that optimize=True runs, minus its BatchNorm fusion rules
             (onnxscript.rewriter.rules.common._fuse_batchnorm): BN KEPT, graph otherwise as
             clean as the default export. (With optimize=False alone BN is kept too, but the
             graph is full of Shape / Expand / CastLike scaffolding.)
dynamo_fold  torch.onnx.export(model, ..., dynamo=True) with its defaults (optimize=True): the
             onnxscript rewriter fuses BatchNormalization into the preceding Conv / ConvTranspose
             / Gemm and the fused weight KEEPS the Conv's original name (e.g. `stem.0.weight`
             now holds W * gamma / sqrt(var + eps)).

The dynamo exporter's lowest opset is 18: asking for 17 makes torch translate at 18 and try
onnx's version converter, which fails (ReduceMean-18 takes axes as an input) and leaves the
model at 18. `export` therefore uses max(opset, 18) for the dynamo exporters
(DYNAMO_MIN_OPSET) instead of relying on that silent fallback.

Both exporters get a dynamic batch axis (dynamic_axes for legacy, dynamic_shapes with
torch.export.Dim for dynamo) and a dynamic sequence axis for sequence models.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
import torch

from .zoo import ZOO, ZooModel, get

EXPORTERS = ("legacy", "legacy_fold", "dynamo", "dynamo_fold")
DEFAULT_EXPORTERS = ("legacy", "dynamo")  # the BN-keeping pair; "both" on the command line
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18


class ExportFailed(RuntimeError):
    """An exporter could not export a zoo model."""


def effective_opset(exporter: str, opset: int = DEFAULT_OPSET) -> int:
    return max(opset, DYNAMO_MIN_OPSET) if exporter.startswith("dynamo") else opset


def export(name: str, exporter: str, path_or_buffer: str | os.PathLike | BinaryIO | None = None,
           opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export zoo model `name` with `exporter` (one of EXPORTERS) and return the ModelProto.

    The model is written to `path_or_buffer` (a path or a binary file object) when given.
    Raises ExportFailed when the exporter cannot export the model."""
    entry = get(name)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter '{exporter}'; choose from {', '.join(EXPORTERS)}")
    model = entry.build()
    inputs = entry.example_inputs(batch=2)
    try:
        with _quiet():
            if exporter.startswith("legacy"):
                proto = _export_legacy(entry, model, inputs, opset, fold=exporter == "legacy_fold")
            else:
                proto = _export_dynamo(entry, model, inputs, effective_opset(exporter, opset),
                                       fold=exporter == "dynamo_fold")
    except Exception as e:  # noqa: BLE001 - any exporter failure is reported the same way
        raise ExportFailed(f"{name}.{exporter}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    _strip_metadata(proto)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if path_or_buffer is not None:
        if isinstance(path_or_buffer, (str, os.PathLike)):
            Path(path_or_buffer).write_bytes(data)
        else:
            path_or_buffer.write(data)
    return proto


def _export_legacy(entry: ZooModel, model: torch.nn.Module, inputs: dict, opset: int, fold: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(
        model, tuple(inputs.values()), buf, dynamo=False, opset_version=opset,
        input_names=list(entry.input_names), output_names=list(entry.output_names),
        dynamic_axes={k: dict(v) for k, v in entry.dynamic_for("legacy").items()},
        training=torch.onnx.TrainingMode.EVAL,
        do_constant_folding=fold,  # False keeps BatchNormalization (see the module docstring)
    )
    return onnx.load_from_string(buf.getvalue())


def _dynamic_shapes(entry: ZooModel) -> dict[str, dict[int, torch.export.Dim]]:
    dims: dict[str, torch.export.Dim] = {}
    out = {}
    for inp, axes in entry.dynamic_for("dynamo").items():
        out[inp] = {}
        for axis, dim_name in axes.items():
            if dim_name not in dims:
                upper = entry.max_seq if axis != 0 and entry.max_seq else None
                dims[dim_name] = torch.export.Dim(dim_name, max=upper) if upper else torch.export.Dim(dim_name)
            out[inp][axis] = dims[dim_name]
    return out


def _export_dynamo(entry: ZooModel, model: torch.nn.Module, inputs: dict, opset: int, fold: bool) -> onnx.ModelProto:
    program = torch.onnx.export(
        model, tuple(inputs.values()), dynamo=True, opset_version=opset,
        input_names=list(entry.input_names), output_names=list(entry.output_names),
        dynamic_shapes=_dynamic_shapes(entry), optimize=fold, verbose=False,
    )
    if not fold:
        with _without_bn_fusion():
            program.optimize()
    return program.model_proto


@contextlib.contextmanager
def _without_bn_fusion() -> Iterator[None]:
    """The onnxscript optimizer with its default rewrite rules minus the BatchNorm fusions."""
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import _fuse_batchnorm

    saved = rewriter._DEFAULT_REWRITE_RULES
    fusions = set(_fuse_batchnorm.rules)
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if r not in fusions)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def _strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop what would make the bytes depend on the machine: the dynamo exporter stores
    each node's Python stack trace (absolute source paths) and fx names in metadata_props."""
    del proto.metadata_props[:]
    for graph in _graphs(proto.graph):
        del graph.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output) + list(graph.initializer):
            del vi.metadata_props[:]
    for fn in proto.functions:
        for node in fn.node:
            del node.metadata_props[:]


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and logs (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript",
                                              "torch.fx.experimental.symbolic_shapes", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _parse_exporters(text: str) -> tuple[str, ...]:
    if text == "both":
        return DEFAULT_EXPORTERS
    if text == "all":
        return EXPORTERS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in EXPORTERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown exporter(s) {bad}; choose from {', '.join(EXPORTERS)}, both, all")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m samples.export_zoo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--models", default="", help=f"comma-separated subset of: {','.join(ZOO)} (default: all)")
    ap.add_argument("--exporter", default="both", type=_parse_exporters,
                    help="legacy | dynamo | legacy_fold | dynamo_fold | both (legacy,dynamo) | all, or a comma list")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                    help=f"ONNX opset (default {DEFAULT_OPSET}; dynamo exporters use at least {DYNAMO_MIN_OPSET})")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(ZOO)
    for n in names:
        get(n)  # fail early on a typo
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        entry = ZOO[name]
        for exporter in args.exporter:
            path = args.out / f"{name}.{exporter}.onnx"
            if _base(exporter) not in entry.exporters:
                print(f"SKIP  {path}: '{_base(exporter)}' is not in the registry entry's exporters "
                      f"({'; '.join(entry.notes) or 'see samples/zoo.py'})")
                continue
            try:
                proto = export(name, exporter, path, opset=args.opset)
            except ExportFailed as e:
                failed += 1
                print(f"FAIL  {path}: {e}")
                continue
            opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            print(f"ok    {path}  opset {opset}  {len(proto.graph.node)} nodes  "
                  f"{len(proto.graph.initializer)} initializers  {path.stat().st_size} bytes")
    return 1 if failed else 0


def _base(exporter: str) -> str:
    return exporter.split("_")[0]


if __name__ == "__main__":
    sys.exit(main())
