"""The converter registry: (domain, op_type, since_version) -> converter.

A converter turns one ONNX node into an nn.Module whose forward takes the node's inputs
positionally (None for a missing optional input) and returns one tensor when the NODE
names one output (len(ctx.outputs) == 1, even if the op could have more), else a tuple
with one entry per listed output. Parameters are NOT owned by converters: every initializer lives once
on the bridged module and is passed in as an input, so a weight used by two nodes stays
one tensor.

The model's opset is resolved to the op's since_version with onnx.defs, exactly: a
converter must list every since_version it implements, so a schema change in a newer
opset never runs through an old converter by accident.

Input slots tell the builder what an initializer in that position is:
- weights: always an nn.Parameter when floating point (Conv W and B, norm scale/bias ...)
- state:   a persistent buffer updated in training (BatchNormalization running stats)
- static:  a constant, never trained (Reshape shape, Clip bounds, Resize scales, Q/DQ scales)
- any other slot holds data: a float initializer with more than one element there is a
  parameter (a bias added after MatMul, a positional embedding), a scalar is a constant.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
from torch import nn

if TYPE_CHECKING:
    from ..graph.model import OnnxModel
    from .context import NodeContext

ConverterFn = Callable[["NodeContext"], nn.Module]


@dataclass(frozen=True)
class Converter:
    domain: str
    op_type: str
    versions: tuple[int, ...]
    fn: ConverterFn
    weights: frozenset[int] = frozenset()
    state: frozenset[int] = frozenset()
    static: frozenset[int] = frozenset()
    # extra static slots decided per node (a pattern that makes weight slots constants)
    static_when: Callable[["OnnxModel", onnx.NodeProto], Iterable[int]] | None = None


_REGISTRY: dict[tuple[str, str, int], Converter] = {}


def converter(
    op_types: str | Iterable[str],
    versions: Iterable[int],
    *,
    domain: str = "",
    weights: Iterable[int] = (),
    state: Iterable[int] = (),
    static: Iterable[int] = (),
    static_when: Callable[["OnnxModel", onnx.NodeProto], Iterable[int]] | None = None,
) -> Callable[[ConverterFn], ConverterFn]:
    """Register `fn` for each op type and each since_version in `versions`."""
    names = (op_types,) if isinstance(op_types, str) else tuple(op_types)
    versions = tuple(sorted(versions))

    def register(fn: ConverterFn) -> ConverterFn:
        for op in names:
            conv = Converter(domain, op, versions, fn, frozenset(weights), frozenset(state), frozenset(static),
                             static_when)
            for v in versions:
                key = (domain, op, v)
                if key in _REGISTRY:
                    raise RuntimeError(f"converter for {key} registered twice")
                _REGISTRY[key] = conv
        return fn

    return register


def since_version(domain: str, op_type: str, opset: int) -> int | None:
    """The since_version of `op_type` in `opset`, or None if the op does not exist there."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return None


def lookup(domain: str, op_type: str, opset: int) -> Converter | None:
    domain = "" if domain == "ai.onnx" else domain
    since = since_version(domain, op_type, opset)
    if since is None:
        return None
    return _REGISTRY.get((domain, op_type, since))


def registered() -> dict[tuple[str, str, int], Converter]:
    """A copy of the registry (for tests and `inspect`)."""
    _ensure_loaded()
    return dict(_REGISTRY)


def _ensure_loaded() -> None:
    from . import ops  # noqa: F401  (importing registers every converter)
