"""The train job: one GETA training run without the export (`geta-onnx train`), as a
library function beside compress.compress; the CLI is a thin layer over both.

    summary = train_model("model.onnx", "npz:data.npz", "runs/r1", Settings())
    # runs/r1/checkpoint.safetensors (resumable), runs/r1/summary.json; `summary` is its content
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .settings import Settings


def train_model(model_path: str | os.PathLike, data_spec: str, out_dir: str | os.PathLike,
                settings: Settings = Settings(), *, resume: bool = False, force: bool = False,
                check_data: bool = True, inputs: tuple = ()) -> dict | None:
    """Train `model_path` once under `settings` on `data_spec` into the run folder `out_dir`;
    returns the summary written to out_dir/summary.json (None on the non-main ranks of a
    torchrun launch). The same guards as compress: no output on an input (`inputs`: other
    files the caller read), a locked run folder that refuses to overwrite a checkpoint
    (`force`) or to resume one of other settings. `check_data`: refuse data on which the
    original scores near chance."""
    from .geta import run_geta
    from .io import write_text_atomic
    from .outputs import refuse_overlap
    from .preflight import prepare_run
    from .runs import RunFolder
    from .train import distributed

    refuse_overlap({"-o": out_dir}, models=[model_path], data=[data_spec], files=inputs)
    loaded, data, record, batch, settings = prepare_run(model_path, data_spec, settings, judge=check_data)
    with RunFolder(out_dir, record, resume=resume, force=force):
        result = run_geta(loaded, data, quant=settings.quant, prune=settings.prune, optim=settings.optim,
                          schedule=settings.schedule, train_config=settings.train, checkpoint_dir=out_dir,
                          resume=resume, config=record, per_sample=batch.static and not batch.dynamic,
                          latency_at=settings.latency_at(batch.static and not settings.export.dynamic_batch),
                          profile=settings.export.profile)
        if not distributed.info().is_main:
            return None
        summary = {"model": str(model_path), "data": data_spec, "settings": settings.to_dict(),
                   "batch": batch.describe(), "steps": result.train.steps, **result.metrics, "bits": result.bits,
                   "history": result.train.history}
        write_text_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
