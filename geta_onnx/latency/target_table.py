"""A model's latency table measured on this machine without data or training: `geta-onnx
latency-table MODEL -o FILE`, run on the deployment target, then `compress --latency-table
FILE` on the machine that trains (docs/latency.md, "Measuring the target's table").

    table = measure_target_table("model.onnx", "target.json", batch=32, threads=2, unit=16)

The layer signatures are the ones compress builds (latency.build.layer_specs over every layer
QASSO can prune or quantize), at the per-sample input shapes the model runs at: compress looks
the entries up by op, per-sample input shape and channels, so the shapes must be the data's
(`--shape` for a sequence length or an image size the file leaves open). The table also
records this machine's int8 saturation probe, which decides `[quant] reduce_range = "auto"`
for the target (quant.weight_range).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .build import layer_specs, record_probe
from .measure import fill
from .table import LatencyTable, Target


def measure_target_table(model_path, out_path, *, batch: int | None, threads: int, unit: int,
                         shapes: dict[str, tuple[int, ...]] | None = None, values: dict | None = None,
                         progress: bool = True) -> tuple[LatencyTable, int, str]:
    """(the table written to `out_path`, entries measured now, how the input shapes were
    chosen). `batch` None: compress's, the largest of [export] batches, or 1 for a model whose
    inputs take a static batch of 1 (Settings.latency_at). An existing table of this target at
    `out_path` is completed (only what it lacks is measured); one of another target is refused,
    so times of two machines never mix."""
    from ..bridge import to_torch
    from ..config import QuantConfig
    from ..graph import load_model
    from ..graph.batch import static_batch_one
    from ..graph.feeds import example_feeds, runnable_shapes
    from ..graph.interface import adapt_interface
    from ..qadg import analyze
    from ..quant.sites import attach_quantizers
    from ..settings import Settings

    model, _ = adapt_interface(load_model(model_path), values or {})
    static = static_batch_one(model)
    target = Target.here(threads, batch or Settings().latency_at(static)[1])
    table = LatencyTable.load(out_path) if Path(out_path).is_file() else None
    if table is not None and table.target != target:
        raise ConfigError(f"latency table '{out_path}' was measured on another target ({table.target.cpu}, "
                          f"{table.target.runtime}, {table.target.threads} threads, batch {table.target.batch}); "
                          "write this machine's table to another file")
    fixed, chosen = runnable_shapes(model, shapes, batch=1 if static else 2)
    sample = example_feeds(model, {name: (1, *dims[1:]) for name, dims in fixed.items()}, batch=1)
    module = to_torch(model)
    # thin stems quantized too: compress times them in both forms before it decides (latency.chain)
    plan = attach_quantizers(module, model, QuantConfig(float_thin_convs=False))
    specs, _ = layer_specs(model, plan, analyze(model).prunable, sample)
    table, measured = fill(table, specs, unit, target, progress=progress)
    stamped = record_probe(table, target)
    if measured or stamped:
        table.save(out_path)
    return table, measured, chosen
