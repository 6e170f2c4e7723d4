"""The benchmark models. Each module has `prepare(work: Path, quick: bool) -> Bench`: it makes
(or reuses) the fp32 original ONNX and its data, and says how to score and compress it."""
from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NAMES = ("fmnist", "mobilenetv2", "minilm", "crepe")


@dataclass
class Bench:
    """Everything the rows and the measurements need to know about one benchmark model."""

    name: str
    title: str  # one line for the doc
    model: Path  # the fp32 original ONNX
    data_spec: str  # `geta-onnx compress --data SPEC`
    data: object  # geta_onnx.train.Data: train = fine-tuning / calibration, eval = scoring
    calibration: list[dict[str, np.ndarray]]  # PTQ feed batches drawn from the training inputs
    quality: Callable[[Path], dict]  # path -> {"metric": name, "value": float, ...} (higher is better)
    quality_label: str  # column header, e.g. "top-1 (10k test)"
    epochs: int  # epochs of every compression that trains (geta-onnx and the fine-tuning)
    lr: float  # fine-tuning learning rate (Adam, cosine decay)
    batch_size: int
    # see baselines.finetune; with labels "task+kd", the loss geta-onnx trains with by default (equal
    # losses and epochs: the comparison is of the methods)
    finetune_loss: str = "task"
    ptq_op_types: list[str] | None = None  # baselines.ptq_int8(op_types=...): None = all
    output: int = 0  # the model output the losses read
    geta_lr: float | None = None  # geta-onnx compress --lr (None: its default)
    geta_config: dict = field(default_factory=dict)  # sections written to a TOML for --config
    latency_shapes: dict[str, tuple[int, ...]] | None = None  # measure_latency(shapes=...)
    seq: int = 128  # measure_latency(seq=...): symbolic non-batch dims
    notes: list[str] = field(default_factory=list)  # data and setup, for the doc
    prep: dict = field(default_factory=dict)  # how the original was made (fp32 training time, ...)


def prepare(name: str, work: Path, quick: bool, **given) -> Bench:
    """given: fp32= / epochs= overrides, for the models whose prepare() takes them (fmnist)."""
    if name not in NAMES:
        raise SystemExit(f"unknown benchmark model '{name}'; choose one of {', '.join(NAMES)}")
    given = {k: v for k, v in given.items() if v}
    if given and name != "fmnist":
        raise SystemExit(f"--fp32-onnx / --epochs are supported for the fmnist benchmark only, not '{name}'")
    return importlib.import_module(f"tools.benchmarks.models.{name}").prepare(work, quick, **given)


def calibration_batches(data, samples: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    """The first `samples` training inputs (the train loader's seeded order) as feed dicts."""
    from geta_onnx.train import split_batch

    out, seen = [], 0
    for batch in data.train:
        inputs, _ = split_batch(batch, names, f"data '{data.spec}'")
        take = min(int(inputs[0].shape[0]), samples - seen)
        out.append({k: np.ascontiguousarray(x[:take].numpy()) for k, x in zip(names, inputs)})
        seen += take
        if seen >= samples:
            break
    return out


def cached(work: Path, key: dict, make: Callable[[], dict]) -> dict:
    """Run `make()` (which writes its files under `work`) unless work/prepared.json holds the
    same key: the fp32 originals take minutes to train, reruns reuse them. Returns the
    info dict make() returned (stored beside the key)."""
    stamp = work / "prepared.json"
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key:
            return saved["info"]
    work.mkdir(parents=True, exist_ok=True)
    info = make()
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "info": info}, indent=2))
    os.replace(tmp, stamp)
    return info


def input_names(model_path: Path) -> list[str]:
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]
