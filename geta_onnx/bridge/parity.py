"""Running the same model in onnxruntime and through the bridge, and comparing them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from ..graph.session import ort_session
from .builder import OnnxModule


def run_onnxruntime(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    """All graph outputs, in order. Graph optimisations are off by default: parity tests
    compare the op semantics, not onnxruntime's fused kernels."""
    return ort_session(proto, optimize=optimize).run(None, feeds)


def run_bridge(module: OnnxModule, feeds: dict[str, np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    args = [torch.from_numpy(np.asarray(feeds[name])).to(device) for name in module.input_names]
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, tuple) else (out,)
    return [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outs]


@dataclass(frozen=True)
class Difference:
    output: str
    max_abs: float
    max_rel: float  # max |a - b| / (|b| + 1e-6 * max|b|)...  see compare_outputs
    shape_ok: bool


def compare_outputs(names: list[str], got: list[np.ndarray], want: list[np.ndarray]) -> list[Difference]:
    """Per output: max absolute difference and max difference relative to the reference's
    largest magnitude (robust where single reference values are ~0)."""
    diffs = []
    for name, g, w in zip(names, got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            diffs.append(Difference(name, float("inf"), float("inf"), False))
            continue
        if g.size == 0:
            diffs.append(Difference(name, 0.0, 0.0, True))
            continue
        if g.dtype == bool or w.dtype == bool:
            g, w = g.astype(np.int64), w.astype(np.int64)
        d = np.abs(g.astype(np.float64) - w.astype(np.float64))
        scale = float(np.max(np.abs(w.astype(np.float64))))
        max_abs = float(np.nanmax(d)) if not np.isnan(d).all() else 0.0
        if np.any(np.isnan(g) != np.isnan(w)):
            max_abs = float("inf")
        diffs.append(Difference(name, max_abs, max_abs / scale if scale > 0 else max_abs, True))
    return diffs
