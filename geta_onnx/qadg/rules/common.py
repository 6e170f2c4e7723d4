"""Helpers shared by the rule modules."""
from __future__ import annotations

import numpy as np
import onnx

from ...graph.model import attr
from ..analysis import Analysis
from ..ids import FIXED, Tracked


def const(an: Analysis, node: onnx.NodeProto, i: int) -> np.ndarray | None:
    if i < len(node.input) and node.input[i] and an.model.is_initializer(node.input[i]):
        return an.model.array(node.input[i])
    return None


def axis_of(node: onnx.NodeProto, default: int, rank: int, name: str = "axis") -> int:
    a = attr(node, name, default)
    return a + rank if a < 0 else a


def passthrough(an: Analysis, node: onnx.NodeProto, zero_ok: bool | None = None, out: int = 0) -> None:
    """Output `out` carries input 0's channels unchanged (same rank, same axes)."""
    t = an.get(node.input[0])
    if t is not None:
        an.set(node.output[out], t if zero_ok is None else t.with_zero_ok(t.zero_ok and zero_ok))


def stop(an: Analysis, node: onnx.NodeProto, reason: str) -> None:
    """A barrier for every tracked input of this node."""
    why = f"node '{node.name}' ({node.op_type}): {reason}"
    for x in node.input:
        an.barrier_tracked(x, why)


def broadcast_full(an: Analysis, names: list[str], out_rank: int) -> list[np.ndarray | None]:
    """Each input's ids right-aligned to the output rank (None when untracked)."""
    fulls = []
    for name in names:
        t = an.get(name)
        if t is None:
            fulls.append(None)
            continue
        full = t.full()
        fulls.append(full.reshape((1,) * (out_rank - full.ndim) + full.shape))
    return fulls


__all__ = ["FIXED", "Tracked", "attr", "axis_of", "broadcast_full", "const", "passthrough", "stop"]
