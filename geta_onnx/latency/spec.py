"""LayerSpec: what the latency of one prunable layer depends on, read from the graph.

A layer (quant.plan.QuantLayer: a Conv / ConvTranspose / Gemm / MatMul with a trainable
weight) runs as one onnxruntime kernel whose time depends on its op, its attributes, the
per-sample shape of its input and its kept input / output channels. Everything else
(batch, threads, CPU, onnxruntime version) belongs to the target (latency.table.Target).

    spec = layer_spec(model, layer, shapes)     # shapes: graph.probe.probe_shapes at batch 1
    spec.key                                    # 'Conv|x=32x56x56|k=3x3|s=1x1|...|co=64'
    spec.width_grid(unit=16)                    # ([ci, ...], [co, ...]) measured points
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.model import attr, weight_source
from ..quant.plan import QuantLayer

# kept widths measured per axis: the full width, the unit, and evenly spaced multiples of the
# unit between (interpolated linearly in between; docs/latency.md gives the measured error)
GRID_POINTS = 5


@dataclass(frozen=True)
class LayerSpec:
    node: str
    op_type: str  # Conv | ConvTranspose | Gemm | MatMul
    x_shape: tuple[int, ...]  # per-sample input shape (no batch dim), channels at `channel_axis`
    cin: int  # input channels (the reduced dim of Gemm / MatMul)
    cout: int  # output channels
    kernel: tuple[int, ...] = ()  # conv kernel spatial dims
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    group: int = 1
    out_elems: int = 0  # per-sample output elements per output channel (spatial / sequence)
    prune_in: bool = True  # some group removes input channels
    prune_out: bool = True  # some group removes output channels

    @property
    def depthwise(self) -> bool:
        return self.op_type in ("Conv", "ConvTranspose") and self.group > 1 and self.group == self.cin == self.cout

    @property
    def channel_axis(self) -> int:
        """Axis of the channels in x_shape: 0 for convs (C, H, W), the last for matmuls."""
        return 0 if self.op_type in ("Conv", "ConvTranspose") else len(self.x_shape) - 1

    @property
    def key(self) -> str:
        """Everything the kernel's time depends on but the widths and the target."""
        dims = lambda xs: "x".join(map(str, xs))  # noqa: E731
        rest = list(self.x_shape)
        rest[self.channel_axis] = "C"
        parts = [self.op_type, f"x={dims(rest)}"]
        if self.kernel:
            parts += [f"k={dims(self.kernel)}", f"s={dims(self.strides)}", f"p={dims(self.pads)}",
                      f"d={dims(self.dilations)}", "g=dw" if self.depthwise else f"g={self.group}"]
        return "|".join(parts + [f"ci={self.cin}", f"co={self.cout}"])

    def width_grid(self, unit: int) -> tuple[list[int], list[int]]:
        """The kept widths measured: per axis the full width alone when nothing prunes it,
        else GRID_POINTS multiples of `unit` from the unit to the full width. A depthwise
        conv's two widths are one (the same channels), so its input list is its output list."""
        outs = _grid(self.cout, unit) if self.prune_out or self.depthwise else [self.cout]
        if self.depthwise:
            return outs, outs
        ins = _grid(self.cin, unit * self.group) if self.prune_in else [self.cin]
        return ins, outs

    def widths(self, cin: int, cout: int) -> tuple[int, int]:
        """(cin, cout) as the kernel runs them: a depthwise conv's input follows its output."""
        return (cout, cout) if self.depthwise else (cin, cout)


def _grid(full: int, unit: int) -> list[int]:
    unit = max(1, min(unit, full))
    steps = full // unit
    if steps <= 1:
        return [full]
    picks = np.unique(np.round(np.linspace(1, steps, min(GRID_POINTS, steps))).astype(int))
    widths = sorted({int(p) * unit for p in picks} | {full})
    return widths


def layer_spec(model, layer: QuantLayer, shapes: dict[str, tuple[int, ...]],
               prunable: tuple[bool, bool] = (True, True)) -> LayerSpec | None:
    """The spec of `layer` in `model` (graph.OnnxModel) from per-sample probe shapes (batch 1,
    graph.probe.probe_shapes); None when its input shape is unknown or of an unsupported rank.
    `prunable`: whether groups remove its (input, output) channels."""
    node = model.node_by_name.get(layer.node)
    if node is None:
        return None
    x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if x is None or y is None or len(x) < 2:
        return None
    ints = lambda name, default: tuple(attr(node, name, default))  # noqa: E731
    per_sample, out = tuple(int(d) for d in x[1:]), tuple(int(d) for d in y[1:])
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        if len(per_sample) < 2 or len(out) < 2:
            return None
        nsp = len(per_sample) - 1
        group = attr(node, "group", 1)
        w = layer.weight_shape
        cin, cout = (w[1] * group, w[0]) if op == "Conv" else (w[0], w[1] * group)
        if attr(node, "auto_pad", b"NOTSET") not in (b"", b"NOTSET"):
            return None  # SAME_* pads depend on the input size: not modelled
        return LayerSpec(layer.node, op, per_sample, cin, cout, kernel=tuple(w[2:]), strides=ints("strides", (1,) * nsp),
                         pads=ints("pads", (0,) * 2 * nsp), dilations=ints("dilations", (1,) * nsp), group=group,
                         out_elems=int(np.prod(out[1:])), prune_in=prunable[0], prune_out=prunable[1])
    if op in ("Gemm", "MatMul"):
        if weight_source(model, node.input[0]) == layer.weight:
            return None  # W @ x: the activation is the second input; not modelled
        if op == "Gemm" and (len(per_sample) != 1 or attr(node, "transA", 0)):
            return None
        k, n = per_sample[-1], out[-1]
        return LayerSpec(layer.node, op, per_sample, k, n, out_elems=int(np.prod(out[:-1])) if len(out) > 1 else 1,
                         prune_in=prunable[0], prune_out=prunable[1])
    return None
