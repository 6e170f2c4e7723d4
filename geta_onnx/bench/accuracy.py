"""Accuracy of an ONNX model in onnxruntime, or its fidelity to a reference model.

    data = load_data("npz:digits.npz", DataConfig(batch_size=64, val_split=0, shuffle=False), model=m)
    evaluate_onnx("small.onnx", data)                          # {"metric": "accuracy", "value": 0.97, ...}
    evaluate_onnx("small.onnx", data, reference="big.onnx")    # {"metric": "agreement", "value": 0.99, ...}

The split: data.eval when the spec has one, else data.train (build `data` with val_split=0
so "train" means every sample rather than a held-out slice).
Metrics: with labels and no reference, top-1 accuracy (integer labels, class axis 1) or
MSE / max abs error (float targets). With a reference, or without labels, fidelity of the
chosen output (metrics.py decides which: agreement, cosine, or mse)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, DataError
from ..train.batching import split_batch
from .metrics import Fidelity, choose_metric, top1_hits
from .session import open_session, run_error

METRICS = ("auto", "agreement", "cosine", "mse")


def evaluate_onnx(path: str | os.PathLike, data, reference: str | os.PathLike | None = None, output: int = 0, *,
                  metric: str = "auto", limit: int = 0, skip: int = 0, threads: int = 2, unfused: bool = False) -> dict:
    """Evaluate `path` on `data` (a geta_onnx.train.Data) in onnxruntime. Returns

        {"model", "reference", "split", "samples", "output", "metric", "value",
         and every number measured: "accuracy", "reference_accuracy", "agreement", "cosine", "mse", "max_abs"}

    `metric` (reference only): auto | agreement | cosine | mse. `limit` > 0 stops after that
    many samples (the data spec's own limit draws a seeded subset instead). `skip` leaves the
    split's first samples out (compress: the ones the quality guard's checks scored).
    `unfused`: `path` runs as its QDQ math, not the fused int8 kernels (session.session_options;
    recorded as "unfused": True)."""
    if metric not in METRICS:
        raise ConfigError(f"option '--metric': expected one of {', '.join(METRICS)}, got '{metric}'")
    loader, split = (data.eval, "eval") if data.eval is not None else (data.train, "train")
    session = open_session(path, threads, unfused)
    ref_session = open_session(reference, threads) if reference is not None else None
    names = [i.name for i in session.get_inputs()]
    dtypes = [_np_dtype(i.type) for i in session.get_inputs()]
    _check_output(path, session, output)
    if ref_session is not None:
        _check_output(reference, ref_session, output)

    fid = Fidelity()
    hits = ref_hits = labelled = seen = 0
    passed = 0  # samples of the split gone by, the skipped ones included
    sq_err = 0.0
    max_err, n_err = 0.0, 0
    for batch in loader:
        inputs, target = split_batch(batch, names, f"data spec '{data.spec}'")
        n = int(inputs[0].shape[0])
        lo = min(n, max(0, skip - passed))  # this batch's first sample past the skipped ones
        passed += n
        if lo == n:
            continue
        take = n - lo if not limit else min(n - lo, limit - seen)
        rows = slice(lo, lo + take)
        feeds = {k: np.ascontiguousarray(np.asarray(x[rows]), dtype=d) for k, x, d in zip(names, inputs, dtypes)}
        if target is None and ref_session is None:
            raise DataError(f"data spec '{data.spec}': the {split} split has no labels; pass --reference MODEL "
                            "to measure agreement with it instead")
        out = _run(path, session, feeds, output)
        if target is not None:
            t = np.asarray(target[rows])  # torch tensors from our loaders, numpy from some py: ones
            if t.dtype.kind in "iu":  # class indices
                h, c = top1_hits(out, t, spec=data.spec)
                hits, labelled = hits + h, labelled + c
            elif ref_session is None:  # regression targets: error against them
                if t.size != out.size:
                    raise DataError(f"data spec '{data.spec}': targets of shape {t.shape} do not fit output "
                                    f"{output} of shape {out.shape}; pick another output with --output")
                err = np.abs(out.astype(np.float64) - t.reshape(out.shape))
                sq_err, n_err = sq_err + float((err**2).sum()), n_err + err.size
                max_err = max(max_err, float(err.max()))
        if ref_session is not None:
            ref = _run(reference, ref_session, feeds, output)
            if ref.shape != out.shape:
                raise DataError(f"{path}: output {output} has shape {out.shape} but the reference {reference} "
                                f"gives {ref.shape}; pick a comparable output with --output")
            fid.update(out, ref)
            if target is not None and t.dtype.kind in "iu":
                ref_hits += top1_hits(ref, t, spec=data.spec)[0]
        seen += take
        if limit and seen >= limit:
            break
    if seen == 0:
        raise DataError(f"data spec '{data.spec}': the {split} split yields no samples"
                        + (f" after its first {skip}" if skip else ""))

    result = {"model": str(path), "reference": None if reference is None else str(reference), "split": split,
              "samples": seen, "output": output, **({"unfused": True} if unfused else {})}
    if labelled:
        result["accuracy"] = hits / labelled
        if ref_session is not None:
            result["reference_accuracy"] = ref_hits / labelled
    if n_err:
        result.update(mse=sq_err / n_err, max_abs=max_err)
    if ref_session is not None:
        result.update(fid.summary())
        chosen = choose_metric(fid, metric)
        result.update(metric=chosen, value=result[chosen])
    elif labelled:
        result.update(metric="accuracy", value=result["accuracy"])
    else:
        result.update(metric="mse", value=result["mse"])
    return result


def _check_output(path, session, output: int) -> None:
    outs = [o.name for o in session.get_outputs()]
    if not 0 <= output < len(outs):
        raise ConfigError(f"option '--output': {path} has {len(outs)} output(s) ({', '.join(outs)}); "
                          f"index {output} does not exist")


def _run(path, session, feeds, output: int) -> np.ndarray:
    """Output `output` on `feeds`; a model whose first input takes a static batch of 1 runs
    sample by sample (outputs concatenated)."""
    name = session.get_outputs()[output].name
    n = len(next(iter(feeds.values()))) if feeds else 0
    try:
        if session.get_inputs()[0].shape[:1] == [1] and n > 1:
            return np.concatenate([np.asarray(session.run([name], {k: v[i:i + 1] for k, v in feeds.items()})[0])
                                   for i in range(n)])
        return np.asarray(session.run([name], feeds)[0])
    except Exception as e:  # onnxruntime's own exception types
        raise run_error(path, e) from None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _np_dtype(ort_type: str):
    return _ORT_TYPES.get(ort_type, np.float32)
