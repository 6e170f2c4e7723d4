"""Seeded example inputs for a model: for parity checks, probes and benchmarks."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .model import OnnxModel


def example_feeds(model: OnnxModel, shapes: dict[str, tuple[int, ...]] | None = None, batch: int = 2,
                  seq: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs: floats ~ N(0, 1); integer inputs that index an embedding table are
    drawn below its size, other integers (masks) from {0, 1} with the first half ones."""
    unknown = sorted(set(shapes or {}) - {vi.name for vi in model.inputs})
    if unknown:
        raise ConfigError(f"option '--shape': {model.label} has no input named {', '.join(unknown)} (its inputs: "
                          f"{', '.join(vi.name for vi in model.inputs)})")
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.inputs:
        info = model.info(vi.name)
        dims = (shapes or {}).get(vi.name)
        if dims is None:
            dims = tuple(d if isinstance(d, int) else (batch if i == 0 else seq) for i, d in enumerate(info.shape or ()))
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


def _embedding_rows(model: OnnxModel, name: str, depth: int = 4) -> int | None:
    """Rows of the embedding table that `name` indexes (through Cast / Add...), if any."""
    frontier = [name]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for node, i in model.consumers(t):
                if node.op_type == "Gather" and i == 1 and model.is_initializer(node.input[0]):
                    return int(model.initializers[node.input[0]].dims[0])
                if node.op_type in ("Cast", "Unsqueeze", "Reshape", "Flatten", "Squeeze"):
                    nxt.extend(node.output)
        frontier = nxt
    return None
