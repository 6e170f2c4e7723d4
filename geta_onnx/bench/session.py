"""onnxruntime sessions and example inputs shared by the latency and accuracy measurements.

Everything here runs the ONNX file itself in onnxruntime (CPU), never the torch bridge: the
numbers must be the ones a deployment sees."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from ..errors import ConfigError, ModelLoadError
from ..graph import OnnxModel, load_model
from ..graph.feeds import batch_names, check_input_names, example_feeds
from ..graph.interface import input_value


def session_options(threads: int = 2, unfused: bool = False):
    """The options every latency measurement runs with: `threads` intra-op threads, one
    inter-op thread, sequential execution, all graph optimisations, errors-only logging.
    `unfused`: the basic optimisations only, so a QDQ model runs as its own math (Dequantize-
    Linear / float op / QuantizeLinear), not as the fused int8 kernels (for scoring a file bound
    for a target whose kernels compute it exactly: quant.weight_range.scored_unfused).

    Sequential execution and a single inter-op thread keep runs comparable between models:
    parallel branches would otherwise compete for the same cores differently per model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_BASIC if unfused else level.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT's warnings would drown the summary
    return opts


def open_session(path: str | os.PathLike, threads: int = 2, unfused: bool = False):
    """A CPU InferenceSession of the file `path` with session_options(threads, unfused)."""
    import onnxruntime as ort

    if threads < 1:
        raise ConfigError(f"option '--threads': must be >= 1, got {threads}")
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads, unfused),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: onnxruntime cannot load the model ({first})") from None


def read_model(path: str | os.PathLike) -> OnnxModel:
    """The graph's inputs and types, as loaded by geta_onnx.graph; no checker and no
    normalisation: bench / eval take the file exactly as onnxruntime will run it."""
    return load_model(path, check=False, normalize=False)


def model_size(path: str | os.PathLike) -> int:
    """Bytes on disk: the .onnx file plus every external data file it references."""
    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = set()
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                locations.add(e.value)
    for loc in locations:
        f = path.parent / loc
        if f.is_file():
            total += f.stat().st_size
    return total


def bench_feeds(model: OnnxModel, batch: int, shapes: dict[str, tuple[int, ...]] | None = None,
                seq: int = 128, seed: int = 0, values: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Seeded example inputs for one batch size.

    The first dim of every input is the batch: it is set to `batch` (also in a --shape
    override, which fixes the other dims), or the dim named like the inputs' leading dims
    where another axis carries it (a recurrent state [layers, batch, hidden]). Other symbolic
    dims become `seq` (a typical sequence length; image models with symbolic spatial dims
    should pass --shape). `values` (--input-value): input name -> one value fed in place of
    random data (a sample rate, a zero state), through graph.interface.input_value."""
    values = values or {}
    check_input_names(model, shapes or {}, "--shape")
    check_input_names(model, values, "--input-value")
    fixed, lead = {}, batch_names(model)
    for vi in model.inputs:
        if vi.name in values:
            continue
        info = model.info(vi.name)
        dims = info.shape if info is not None and info.shape else ()
        if dims and isinstance(dims[0], int) and dims[0] != batch and not lead & set(dims):
            raise ConfigError(f"{model.label}: input '{vi.name}' has a fixed batch of {dims[0]}; "
                              f"measure it with --batch {dims[0]} or re-export with a dynamic batch axis")
        if shapes and vi.name in shapes:
            override = shapes[vi.name]
            if dims and len(override) != len(dims):
                raise ConfigError(f"option '--shape': input '{vi.name}' of {model.label} has {len(dims)} dims, "
                                  f"got {len(override)} ({'x'.join(map(str, override))})")
            fixed[vi.name] = (batch, *override[1:])
    feeds = example_feeds(model, fixed, batch=batch, seq=seq, seed=seed)
    return feeds | {name: input_value(model, name, text) for name, text in values.items()}


def run_error(path, e: Exception) -> ModelLoadError:
    """An onnxruntime run failure as a one-line error that points at the usual cause."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelLoadError(f"{path}: onnxruntime fails to run the model ({first}); if an input's shape is "
                          "wrong, fix it with --shape NAME=DxDx..")
