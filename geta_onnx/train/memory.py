"""Will training fit in memory? Estimated before the first step, so that a run too large for
the machine stops with one line naming the batch size that fits, instead of growing until
the kernel kills it with no message (docs/realworld.md: a static 1x3x800x608 layout model at
the default batch of 64 was OOM-killed at 24 GB after minutes).

    need = training_bytes(per_sample=activation_bytes(model, one_sample), batch=64, params=n)
    check_fits(model, data, batch_size, label)   # GetaError when need > available memory

The estimate: every tensor the graph computes for one sample (measured by running the
original once in onnxruntime on one training sample, graph.probe), times the batch, times
ACTIVATION_FACTOR (autograd keeps most of them for the backward pass, the fake quantizers and
the distillation teacher add their own), plus PARAM_FACTOR copies of the weights (weights,
gradients, two optimizer moments, the teacher, QASSO's snapshots). Both factors are
measured (docs/realworld.md, "Memory"); the check refuses only runs estimated above the
memory the machine has available, so an optimistic estimate never blocks a run that fits.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import GetaError

ACTIVATION_FACTOR = 2.5  # tools/bench_memory.py; the figures: docs/realworld.md, "Memory"
PARAM_FACTOR = 6  # weights, gradients, two Adam moments, the teacher, a QASSO snapshot
BYTES = 4  # float32 activations and weights


def activation_bytes(model, sample: dict[str, np.ndarray]) -> int | None:
    """Bytes of every node output for the inputs `sample` (one sample each); None when the
    model does not run in onnxruntime on them."""
    from ..graph.probe import probe_shapes

    shapes = probe_shapes(model, feeds=sample)
    if not shapes:
        return None
    return sum(math.prod(s) for s in shapes.values()) * BYTES


def training_bytes(per_sample: int, batch: int, params: int) -> int:
    return int(per_sample * batch * ACTIVATION_FACTOR + params * BYTES * PARAM_FACTOR)


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable (/proc/meminfo), lowered by a cgroup
    v2 limit (memory.max - memory.current) when one is set; None when unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(model, sample: dict[str, np.ndarray], batch_size: int, params: int, label: str,
               available: int | None = None) -> int | None:
    """GetaError when training at `batch_size` is estimated to need more than the available
    memory: the message names the --batch-size that fits (or says that one sample does not).
    Returns the estimate in bytes (None when it cannot be made)."""
    per_sample = activation_bytes(model, sample)
    available = available_bytes() if available is None else available
    if per_sample is None or available is None:
        return None
    need = training_bytes(per_sample, batch_size, params)
    if need <= available:
        return need
    fits = int((available - training_bytes(0, 0, params)) // (per_sample * ACTIVATION_FACTOR))
    what = (f"pass --batch-size {fits} or smaller ([data] batch_size)" if fits >= 1 else
            "even one sample does not fit: train on a smaller input size (the model's fixed input dims "
            "are what need it: re-export with smaller or dynamic spatial dims)")
    raise GetaError(f"{label}: training at batch {batch_size} needs about {_gb(need)} of memory "
                    f"({_mb(per_sample)} of activations per sample), and this machine has {_gb(available)} "
                    f"available; {what}")


def _gb(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GB"


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.0f} MB"

