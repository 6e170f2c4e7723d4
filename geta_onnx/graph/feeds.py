"""Seeded example inputs for a model: for parity checks, probes and benchmarks."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .model import OnnxModel, weight_source


def check_input_names(model: OnnxModel, names, option: str) -> None:
    """ConfigError naming `option` when one of `names` is not an input of the model."""
    inputs = [vi.name for vi in model.inputs]
    unknown = sorted(set(names) - set(inputs))
    if unknown:
        raise ConfigError(f"option '{option}': {model.label} has no input named {', '.join(unknown)} (its inputs: "
                          f"{', '.join(inputs)})")


def example_feeds(model: OnnxModel, shapes: dict[str, tuple[int, ...]] | None = None, batch: int = 2,
                  seq: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs: floats ~ N(0, 1); integer inputs that index an embedding table are
    drawn below its size, other integers (masks) from {0, 1} with the first half ones."""
    check_input_names(model, shapes or {}, "--shape")
    rng = np.random.default_rng(seed)
    feeds = {}
    lead = batch_names(model)
    for vi in model.inputs:
        info = model.info(vi.name)
        dims = (shapes or {}).get(vi.name)
        if dims is None:
            dims = tuple(d if isinstance(d, int) else (batch if i == 0 or d in lead else seq)
                         for i, d in enumerate(info.shape or ()))
        dtype = info.np_dtype
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind in "iu":
            high = _embedding_rows(model, vi.name)
            if high:
                feeds[vi.name] = rng.integers(0, high, dims).astype(dtype)
            else:
                mask = np.ones(dims, dtype=dtype)
                if len(dims) >= 2 and dims[-1] > 1:
                    mask[..., dims[-1] * 3 // 4:] = 0
                feeds[vi.name] = mask
        elif dtype.kind == "b":
            feeds[vi.name] = np.ones(dims, dtype=bool)
        else:
            feeds[vi.name] = np.zeros(dims, dtype=dtype)
    return feeds


def batch_names(model: OnnxModel) -> set[str]:
    """The symbolic names of the inputs' leading dims: the batch, also where another input
    carries it elsewhere (a recurrent state [layers, batch, hidden])."""
    firsts = {(info.shape or (None,))[0] for info in (model.info(vi.name) for vi in model.inputs) if info}
    return {d for d in firsts if isinstance(d, str)}


_INDEX_THROUGH = ("Cast", "Unsqueeze", "Reshape", "Flatten", "Squeeze", "Expand")


def _embedding_rows(model: OnnxModel, name: str, depth: int = 4) -> int | None:
    """How many values the integer input `name` indexes (through Cast / Reshape...), if
    it indexes anything: the rows of an embedding table it gathers from, the depth of a
    OneHot, or the classes of a one-hot spelled Equal(x, range) (tf2onnx's JAX one_hot)."""
    frontier = [name]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for node, i in model.consumers(t):
                if node.op_type == "Gather" and i == 1 and model.is_initializer(node.input[0]):
                    return int(model.initializers[node.input[0]].dims[0])
                if node.op_type == "OneHot" and i == 0 and model.is_initializer(node.input[1]):
                    return int(np.asarray(model.array(node.input[1])).reshape(-1)[0])
                if node.op_type == "Equal":
                    source = weight_source(model, node.input[1 - i], through=_INDEX_THROUGH)
                    if source is not None and model.array(source).size > 1:
                        return int(model.array(source).max()) + 1
                if node.op_type in _INDEX_THROUGH and i == 0:
                    nxt.extend(node.output)
        frontier = nxt
    return None


# sizes tried for symbolic dims other than the batch, in order: image side lengths when an
# input looks like an image (N, C, H, W), sequence lengths otherwise
IMAGE_SIZES = (224, 256, 128, 64, 32, 320, 384, 512, 16)
SEQUENCE_SIZES = (16, 32, 64, 128, 8, 256, 512)


def runnable_shapes(model: OnnxModel, given: dict[str, tuple[int, ...]] | None = None,
                    batch: int = 2) -> tuple[dict[str, tuple[int, ...]], str]:
    """Full input dims at which onnxruntime runs the model, and how they were chosen.

    Dims the file fixes stay; `given` (--shape) wins; every other symbolic dim but the batch
    takes the first of IMAGE_SIZES / SEQUENCE_SIZES at which the original runs (e.g. a CNN
    whose pooling needs at least 224 pixels, a transformer whose position table holds 512).
    ConfigError naming the input and the --shape to pass when none runs."""
    given = dict(given or {})
    dims_of = {vi.name: (model.info(vi.name).shape if model.info(vi.name) is not None else None) for vi in model.inputs}
    for name, dims in given.items():
        if dims_of.get(name) is not None and len(dims) != len(dims_of[name]):
            raise ConfigError(f"option '--shape': input '{name}' of {model.label} has {len(dims_of[name])} dims, "
                              f"got {len(dims)} ({'x'.join(map(str, dims))})")
    lead = batch_names(model)
    # probes run every input at `batch` (a --shape's leading 1 beside a state of batch 2 fails)
    probe = {n: (batch, *d[1:]) if dims_of.get(n) and not isinstance(dims_of[n][0], int) else d for n, d in given.items()}
    open_dims = {name: dims for name, dims in dims_of.items()
                 if name not in given and dims and any(not isinstance(d, int) and d not in lead for d in dims[1:])}
    if not open_dims and not given:
        return given, ""
    from .session import ort_session

    try:  # log level 4: the sizes that fail are expected, no error lines from onnxruntime
        session = ort_session(model.proto, threads=2, log_level=4)
    except Exception:  # noqa: BLE001 - a model onnxruntime cannot load: the caller's own check says why
        return given, ""
    if not open_dims:  # only the user's --shape: say now if the model cannot run at it
        try:
            _run_nonempty(session, example_feeds(model, probe, batch=batch))
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors
            shown = ", ".join(f"{n}={'x'.join(map(str, d))}" for n, d in given.items())
            raise ConfigError(f"option '--shape': {model.label} does not run at {shown} in onnxruntime "
                              f"({str(e).splitlines()[0][:200]}); pass dims the model accepts") from None
        return given, ""
    image = any(len(s) == 4 and isinstance(s[1], int) and s[1] <= 4 for s in open_dims.values())
    sizes = IMAGE_SIZES if image else SEQUENCE_SIZES
    last = ""
    for size in sizes:
        shapes = dict(probe)
        for name, dims in open_dims.items():
            shapes[name] = tuple(d if isinstance(d, int) else (batch if i == 0 or d in lead else size)
                                 for i, d in enumerate(dims))
        try:
            _run_nonempty(session, example_feeds(model, shapes, batch=batch))
            chosen = ", ".join(f"{n}={'x'.join(map(str, shapes[n]))}" for n in open_dims)
            return shapes, f"{chosen} (symbolic dims set to {size}, the first size the model runs at; --shape to choose)"
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors: try the next size
            last = str(e).splitlines()[0][:200]
    name, dims = next(iter(open_dims.items()))
    example = "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
    raise ConfigError(f"option '--shape': {model.label} input '{name}' has symbolic dims ({example}) and the model runs "
                      f"at none of the sizes {', '.join(map(str, sizes))} (last error: {last}); pass "
                      f"--shape {name}=... with the dims it expects")


def _run_nonempty(session, feeds) -> None:
    """Run; an output with no elements counts as a failure (onnxruntime pools a too small
    image to 0x0 without complaint, torch refuses)."""
    for out, meta in zip(session.run(None, feeds), session.get_outputs()):
        if np.asarray(out).size == 0:
            raise ValueError(f"output '{meta.name}' is empty ({'x'.join(map(str, np.asarray(out).shape))})")
