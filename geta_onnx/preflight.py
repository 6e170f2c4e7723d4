"""Checks before a training run (compress, train): what would make the run fail late or
waste it is said first, in one line, before any step is taken.

- the output the loss reads exists and is a float tensor (an ArgMax / class-id output cannot
  be trained through);
- the model has float weights to train;
- the device asked for exists (--device cuda on a machine without CUDA);
- the original model makes sense of the data: it runs on a few batches in onnxruntime, its
  outputs are finite and differ between samples, and with class labels it scores clearly
  above chance. A model near chance on the user's data almost always means the data is
  prepared differently from the model's training (scale, mean / std, resize, channel order),
  and a run on it trains for nothing (docs/measurements.md, "Preflight: the data check").
  `--skip-data-check` skips it.
The loss's reach (a gradient path from the output to the weights) is checked on the bridged
module by geta.run_geta, which has it.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, DataError, GetaError, RunError

CHECK_SAMPLES = 512  # samples of the data the original is run on
# near chance: top-1 below chance + NEAR_CHANCE x (1 - chance); chance = the most frequent label's share
NEAR_CHANCE = 0.15


MIN_HELD_OUT = 10  # fewer held-out samples measure nothing


def prepare_run(model_path, data_spec: str, settings, *, judge: bool = True, held_out: bool = False,
                threads: int = 2):
    """(model to train, Data, settings fingerprint, graph.batch.BatchChange, settings) of a
    training run, every check above passed; the settings are the given ones with the scored
    output resolved (scored_output), the fingerprint is of the given ones; both have
    [quant] reduce_range "auto" decided (quant.weight_range: for the latency table's target
    when it records its probe, else this CPU) and [prune] guard_data "auto" decided on the data
    (guarding.guard_data). `held_out`: the run scores the
    result (compress), so it needs held-out samples. A model whose inputs take a static batch
    of 1 is trained as its proven dynamic-batch rewrite, or else one sample per forward
    (BatchChange)."""
    from .graph import load_model
    from .graph.interface import adapt_interface
    from .graph.quantized import as_float
    from .guarding import guard_data, holdout_samples
    from .quant import weight_range
    from .runs import fingerprint
    from .train import load_data

    # reduce_range "auto" decided once, for the target (a latency table's that records it, else this CPU),
    # and recorded as decided: a resume that decides otherwise would train on another grid (quant.weight_range)
    quant, range_note = weight_range.decide(settings.quant, settings.export.profile, settings.prune.latency_table)
    settings = given = settings.replace("quant", reduce_range=quant.reduce_range)
    floated, quantized_note = as_float(load_model(model_path))  # an int8 QDQ file trains from its float weights
    loaded, interface = adapt_interface(floated, input_values(settings.data.input_values))
    settings, output_note = scored_output(loaded, settings)
    check_model(loaded, settings.train.output)
    check_device(settings.train.device)
    data = load_data(data_spec, settings.data, model=loaded, seed=settings.train.seed,
                     guard_samples=holdout_samples(settings.prune, settings.data))
    # guard_data "auto" decided on the data (the validation split where it has one) and recorded as decided
    where = guard_data(settings.prune.guard_data, data)
    settings, given = (s.replace("prune", guard_data=where) for s in (settings, given))
    if held_out:
        require_held_out(data, data_spec)
    loaded, branches = decide_branches(loaded, data)
    check_memory(loaded, data, settings.data.batch_size)  # before anything runs a whole batch
    check_original_on_data(loaded, data, settings.train.output, threads=threads, judge=judge)
    batch = dynamic_batch(loaded, data)
    batch.branches = branches
    batch.notes = (([quantized_note] if quantized_note else []) + interface.describe()
                   + ([output_note] if output_note else []) + ([range_note] if range_note else [])
                   + ([weight_range.describe()] if settings.quant.reduce_range == "on" else []))
    batch.interface = interface
    return batch.model, data, fingerprint(model_path, data_spec, given), batch, settings


def decide_branches(model, data):
    """(model, one line per decision): If nodes decided on the data's shapes are inlined
    (graph/branches.py); one that stays is a one-line error."""
    from .graph.branches import decide_ifs

    if not any(n.op_type == "If" for n in model.proto.graph.node):
        return model, []
    return decide_ifs(model, first_samples(model, data, 3))


def check_memory(model, data, batch_size: int) -> None:
    """train.memory.check_fits on one training sample: a batch too large for this machine's
    memory stops here, with the batch size that fits."""
    from .train.memory import check_fits

    samples = first_samples(model, data, 1)
    params = sum(_numel(t) for t in model.proto.graph.initializer)
    batch = min(batch_size, data.n_train) if data.n_train else batch_size  # a batch holds at most every sample
    check_fits(model, samples, batch, params, f"{model.label} at data spec '{data.spec}'")


def first_samples(model, data, n: int) -> dict[str, np.ndarray]:
    """The first `n` training samples, per input name, in the model's input dtypes. The
    loader's shuffling epoch is put back to 0 after: a look at the data before training must
    not change the order training sees (a resumed run would not follow the original one)."""
    from .train.batching import set_epoch, split_batch

    names = [vi.name for vi in model.inputs]
    samples: dict[str, list] = {k: [] for k in names}
    for batch in data.train:
        inputs, _ = split_batch(batch, names, f"data spec '{data.spec}'")
        for k, x in zip(names, inputs):
            samples[k].append(np.asarray(x))
        if len(np.concatenate(samples[names[0]])) >= n:
            break
    set_epoch(data.train, 0)
    info = {vi.name: model.info(vi.name) for vi in model.inputs}
    return {k: np.concatenate(v)[:n].astype(info[k].np_dtype if info[k] else np.float32) for k, v in samples.items()}


def dynamic_batch(model, data):
    """graph.batch.make_batch_dynamic on samples of the training data (none needed when the
    batch is not a static 1)."""
    from .graph.batch import make_batch_dynamic, static_batch_one

    if not static_batch_one(model):
        return make_batch_dynamic(model, None)
    return make_batch_dynamic(model, first_samples(model, data, 3))


def require_held_out(data, spec: str) -> None:
    """compress scores on held-out samples only, never on the training samples."""
    if data.eval is None or (data.n_eval is not None and data.n_eval < MIN_HELD_OUT):
        have = 0 if data.eval is None else data.n_eval
        raise DataError(f"data spec '{spec}': {have} held-out samples to measure the compressed model on; it needs "
                        f"at least {MIN_HELD_OUT}, never the training samples: give an eval split (eval_x / eval_y "
                        "in the npz, t10k files for idx:, an eval loader for py:) or more samples (data.val_split "
                        "holds out a share of them)")


def input_values(entries: tuple[str, ...]) -> dict[str, str]:
    """'NAME=VALUE' entries (--input-value, [data] input_values) as a dict; a name twice is
    an error."""
    out: dict[str, str] = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        name, value = name.strip(), value.strip()
        if not name or not value:
            raise ConfigError(f"option '--input-value': expected NAME=VALUE, e.g. sr=16000; got '{entry}'")
        if name in out:
            raise ConfigError(f"option '--input-value': input '{name}' is given twice")
        out[name] = value
    return out


def scored_output(model, settings):
    """(settings, a line to log or None): the output the loss reads is output 0 unless it is
    not a float tensor and another output is (scikit-learn's classifiers export an int64
    `label` first, then `probabilities`): then the first float output. Set [train] output
    to choose another."""
    outs = list(model.outputs)
    if settings.train.output != 0 or not outs or _is_float_output(model, outs[0].name):
        return settings, None
    first = next((i for i, o in enumerate(outs) if _is_float_output(model, o.name)), None)
    if first is None:
        return settings, None  # check_model says what to do
    note = (f"output '{outs[0].name}' is not a float tensor; the loss reads output {first} ('{outs[first].name}'), "
            "[train] output chooses another")
    return settings.override("train", output=first), note


def _is_float_output(model, name: str) -> bool:
    info = model.info(name)
    return info is None or not info.elem_type or np.dtype(info.np_dtype).kind == "f"


def check_model(model, output: int) -> None:
    """The scored output exists and is float; there are float weights to train; every input
    takes the samples on its first axis."""
    check_scalar_inputs(model)
    outs = list(model.outputs)
    if not 0 <= output < len(outs):
        raise ConfigError(f"option 'train.output': {model.label} has {len(outs)} output(s) "
                          f"({', '.join(o.name for o in outs)}); index {output} does not exist")
    info = model.info(outs[output].name)
    if info is not None and info.elem_type and np.dtype(info.np_dtype).kind != "f":
        raise GetaError(f"{model.label}: output '{outs[output].name}' is {np.dtype(info.np_dtype).name}, not a float "
                        "tensor, so no loss can be trained through it; export the model with its scores as output, "
                        "or choose a float output with [train] output = N")
    floats = [t for t in model.proto.graph.initializer if t.data_type in (1, 10, 11, 16) and _numel(t) > 1]
    if not floats:
        raise GetaError(f"{model.label}: the model has no float weights, so there is nothing to train or compress")


def check_scalar_inputs(model) -> None:
    """The data feeds samples along axis 0 of every input: a scalar input needs its value given
    (--input-value). An input that carries the batch elsewhere (a recurrent state [layers,
    batch, hidden]) is fed batch-first by graph.interface before this runs."""
    for vi in model.inputs:
        info = model.info(vi.name)
        shape = info.shape if info is not None else None
        if shape == ():
            raise ConfigError(f"{model.label}: input '{vi.name}' is a scalar (rank 0), one value for a whole batch; the "
                              "data gives every input one entry per sample. Give its value for the run with "
                              f"--input-value {vi.name}=VALUE ([data] input_values)")


def _numel(tensor) -> int:
    return int(np.prod(tensor.dims)) if len(tensor.dims) else 1


def check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RunError(f"option '--device': '{device}' asked for, but torch sees no CUDA GPU on this machine; "
                           "use --device cpu")


def check_original_on_data(model, data, output: int, *, threads: int = 2, judge: bool = True) -> None:
    """DataError when the labels do not fit the original model's output (always), or, with
    `judge`, when its outputs on the data are non-finite, the same for every sample, or (with
    class labels) near chance."""
    from .bench.accuracy import _check_output, _np_dtype, _run
    from .bench.metrics import check_label_range
    from .bench.session import open_session
    from .train.batching import split_batch

    loader = data.eval if data.eval is not None else data.train
    session = open_session(model.run_path, threads)
    _check_output(model.run_path, session, output)
    names = [i.name for i in session.get_inputs()]
    dtypes = [_np_dtype(i.type) for i in session.get_inputs()]
    outs, labels, seen = [], [], 0
    first = session.get_inputs()[0].shape
    fixed = first[0] if first else None  # a static batch (e.g. 1): fed in chunks of that size
    step = fixed if isinstance(fixed, int) and fixed > 0 else None
    for batch in loader:
        inputs, target = split_batch(batch, names, f"data spec '{data.spec}'")
        arrays = [np.ascontiguousarray(np.asarray(x), dtype=d) for x, d in zip(inputs, dtypes)]
        n = len(arrays[0])
        chunks = [slice(i, i + step) for i in range(0, n - n % step, step)] if step else [slice(0, n)]
        if not chunks:
            continue
        outs.append(np.concatenate([_run(model.run_path, session, {k: a[c] for k, a in zip(names, arrays)}, output)
                                    for c in chunks]).astype(np.float64))
        if target is not None:
            labels.append(np.asarray(target)[:len(outs[-1])])
        seen += len(outs[-1])
        if seen >= CHECK_SAMPLES:
            break
    if not outs:
        raise DataError(f"data spec '{data.spec}': no samples to run the original model on")
    out = np.concatenate(outs)
    if labels:
        _check_targets(np.concatenate(labels), out, data.spec)
    if data.num_classes is not None and out.ndim >= 2:  # every label of the data, not only these samples
        check_label_range(np.array([data.num_classes - 1]), out.shape[1], data.spec)
    if not judge:
        return
    fix = ("check how the data is prepared for this model (data options scale, mean, std, resize, or the channel "
           "order), or pass --skip-data-check to train anyway")
    if not np.isfinite(out).all():
        raise DataError(f"{model.label}: the original model gives NaN / inf outputs on data '{data.spec}'; {fix}")
    if len(out) > 1 and float(np.ptp(out, axis=0).max()) <= 1e-6 * (1.0 + float(np.abs(out).max())):
        raise DataError(f"{model.label}: the original model gives the same output for every sample of data "
                        f"'{data.spec}', so the data does not reach it as it expects; {fix}")
    if not labels or out.ndim != 2 or out.shape[1] < 2:
        return
    y = np.concatenate(labels).reshape(-1)
    if y.dtype.kind not in "iu" or len(y) != len(out):
        return
    acc = float((out.argmax(1) == y).mean())
    chance = float(np.bincount(y.clip(0)).max() / len(y))
    if acc < chance + NEAR_CHANCE * (1.0 - chance):
        raise DataError(f"{model.label}: the original model scores {acc:.1%} top-1 on data '{data.spec}', near "
                        f"chance ({chance:.1%}: the most frequent label), before any compression; {fix}")


def _check_targets(y: np.ndarray, out: np.ndarray, spec: str) -> None:
    """Integer labels index the output's class axis 1; float targets have the output's shape."""
    from .bench.metrics import check_label_range

    if y.dtype.kind in "iu":
        if out.ndim < 2:
            raise DataError(f"data spec '{spec}': integer labels need class scores (N, C) from the model, its output "
                            f"has shape {out.shape}")
        check_label_range(y, out.shape[1], spec)
    elif y.reshape(len(y), -1).shape[1] != out.reshape(len(out), -1).shape[1]:
        raise DataError(f"data spec '{spec}': float targets of shape {y.shape[1:]} per sample do not fit the model's "
                        f"output of shape {out.shape[1:]}; class labels must be integers (int64), regression targets "
                        "shaped like the output")
