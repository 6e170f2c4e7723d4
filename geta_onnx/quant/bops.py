"""BOPs (bit operations) of the quantized layers, and relative BOPs.

Convention (every report states it):
- LAYERS are the candidates of attach_quantizers (QuantPlan.layers): Conv, ConvTranspose,
  Gemm and MatMul whose weight is a trainable initializer, quantized or kept in float.
  Other MAC-carrying ops (activation x activation MatMuls of attention) are counted
  neither in the compressed model nor in the original.
- BOPs(layer) = MACs x b_w x b_a, MACs per sample (graph.stats.op_cost; symbolic dims
  count 1). b is the bit width of the layer's weight / activation quantizer: the current
  b(d, q_m, t) (continuous during training; rounded=True rounds it as deployment does;
  the frozen bits in cool-down), and 32 for a tensor without a quantizer or with a
  disabled one. A per-channel weight quantizer counts the mean width over its (kept)
  output channels: every output channel carries the same MACs.
- Pruning scales a layer's MACs by kept_in x kept_out, the fractions of its weight's
  input and output channels left (Conv, ConvTranspose, Gemm and MatMul MACs are
  proportional to both; a conv group removed whole only changes kept_out).
- relative BOPs = BOPs(compressed) / BOPs(fp32 original), the original being every layer
  at 32 x 32 bits with its unpruned MACs: an unpruned 8/8-bit model has 64/1024 = 6.25 %.
- A layer whose MACs are unknown (unknown shapes) counts 0 in both; `unknown_macs` lists
  such layers so a report can say so.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from .plan import QuantLayer, QuantPlan

FP_BITS = 32.0


@dataclass(frozen=True)
class LayerKeep:
    """What pruning leaves of one layer."""

    kept_in: float = 1.0  # fraction of the weight's input channels left
    kept_out: float = 1.0  # fraction of its output channels left
    out_channels: tuple[int, ...] | None = None  # kept output-channel indices (None: all)


@dataclass(frozen=True)
class LayerBops:
    node: str
    macs: int  # unpruned MACs per sample (0 when unknown)
    kept: float  # fraction of the MACs left after pruning
    weight_bits: float
    act_bits: float

    @property
    def bops(self) -> float:
        return self.macs * self.kept * self.weight_bits * self.act_bits

    @property
    def fp32_bops(self) -> float:
        return self.macs * FP_BITS * FP_BITS


def layer_bops(plan: QuantPlan, *, bits: Mapping[str, object] | None = None,
               kept: Mapping[str, LayerKeep | tuple[float, float]] | None = None,
               rounded: bool = False) -> list[LayerBops]:
    """BOPs of every layer of `plan`.

    bits: quantizer qualified name -> bit width (a number, or a per-channel tensor) that
    overrides the quantizer's current width (what-if budgets of the optimizer).
    kept: node name -> LayerKeep or (kept_in, kept_out); see kept_from_groups."""
    bits, kept = bits or {}, kept or {}
    out = []
    for layer in plan.layers:
        keep = kept.get(layer.node, LayerKeep())
        if not isinstance(keep, LayerKeep):
            keep = LayerKeep(*keep)
        wb = _bits(plan, layer.weight_quantizer, bits, rounded, keep.out_channels)
        ab = _bits(plan, layer.act_quantizer, bits, rounded, None)
        out.append(LayerBops(layer.node, layer.macs or 0, keep.kept_in * keep.kept_out, wb, ab))
    return out


def total_bops(plan: QuantPlan, **kwargs) -> float:
    return sum(la.bops for la in layer_bops(plan, **kwargs))


def fp32_bops(plan: QuantPlan) -> float:
    """BOPs of the original: every layer at 32 x 32 bits, unpruned."""
    return sum((la.macs or 0) * FP_BITS * FP_BITS for la in plan.layers)


def relative_bops(plan: QuantPlan, **kwargs) -> float:
    """BOPs(compressed) / BOPs(fp32 original); 1.0 for a plan without countable MACs."""
    base = fp32_bops(plan)
    return total_bops(plan, **kwargs) / base if base else 1.0


def unknown_macs(plan: QuantPlan) -> list[str]:
    return [la.node for la in plan.layers if la.macs is None]


def kept_from_groups(plan: QuantPlan, removed: Iterable) -> dict[str, LayerKeep]:
    """Per layer, what is left after removing the pruning groups `removed` (qadg.PruneGroup):
    the "in" / "out" member slices on the layer's weight give the removed indices per axis."""
    gone: dict[tuple[str, int], set[int]] = defaultdict(set)
    for group in removed:
        for m in group.members:
            if m.role in ("in", "out"):
                gone[(m.tensor, m.axis)].update(int(i) for i in m.indices)
    result = {}
    for layer in plan.layers:
        result[layer.node] = _keep(layer, gone)
    return result


def _keep(layer: QuantLayer, gone: Mapping[tuple[str, int], set[int]]) -> LayerKeep:
    kept_in, kept_out, out_channels = 1.0, 1.0, None
    for axis, size in enumerate(layer.weight_shape):
        removed = {i for i in gone.get((layer.weight, axis), ()) if 0 <= i < size}
        if not removed:
            continue
        frac = (size - len(removed)) / size
        if axis == layer.out_axis:
            kept_out = frac
            out_channels = tuple(i for i in range(size) if i not in removed)
        else:
            kept_in *= frac
    return LayerKeep(kept_in, kept_out, out_channels)


def _bits(plan: QuantPlan, name: str | None, override: Mapping, rounded: bool, channels) -> float:
    """Mean bit width of quantizer `name` (over `channels` when per-channel); 32 for none."""
    if name is None:
        return FP_BITS
    if name in override:
        b = torch.as_tensor(override[name], dtype=torch.float64)
    else:
        q = plan.quantizer(name)
        if not q.enabled:
            return FP_BITS
        b = q.bits().double()
    if rounded:
        b = torch.round(b)
    if b.dim() > 0 and channels is not None:
        b = b[list(channels)] if channels else b[:0]
    return float(b.mean()) if b.numel() else 0.0
