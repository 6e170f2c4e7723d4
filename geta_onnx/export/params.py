"""Read the learned quantization out of a trained GETA module, as integers and scales.

Requires: `plan` bound to the trained module (quantizers attached, any t = 1), `cuts`
from `pruning_cuts` (the channels physical pruning removes).
Ensures, per weighted layer of the plan:
- `WeightQ`: the fake-quant integers k = sign(W) * round(min(|W|, q_m) / d) of the
  weight AS THE LAYER READS IT (behind a Transpose: the transposed layout), computed with
  the quantizer's own float32 tensors, so k * d equals the fake-quant value bitwise; the
  pruned channels are already removed (ints and per-channel scales);
- `ActQ`: the activation quantizer's step d and its largest level round(q_m / d).
Quantizers whose levels exceed the 8-bit container (learned bits > 8) are reported with
`fits = False`; the exporter keeps those in float (fake-quant values for weights).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import GetaError
from ..qadg.analysis import QADG
from ..quant.plan import QuantLayer, QuantPlan, QuantSite
from ..quant.quantizer import D_FLOOR, Q_FLOOR, Quantizer


@dataclass
class WeightQ:
    ints: np.ndarray  # int64, the layer's weight-input layout, pruned
    scale: np.ndarray  # float32, shape () per tensor or (C,) per channel along `axis`
    axis: int | None  # channel axis of `ints` when per channel (after BN folding always set)
    levels: int  # largest |k| the quantizer allows: 2^(b-1) - 1 for b bits

    @property
    def fits(self) -> bool:  # representable in int8 ([-127, 127])
        return self.levels <= 127

    def dequantized(self) -> np.ndarray:
        return (self.ints * self._scale_view()).astype(np.float32)

    def _scale_view(self) -> np.ndarray:
        if self.axis is None or self.scale.ndim == 0:
            return self.scale
        shape = [1] * self.ints.ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape)


@dataclass
class ActQ:
    tensor: str
    scale: float  # d
    signed: bool
    levels: int  # largest level round(q_m / d): 2^(b-1) - 1 signed, 2^b - 1 unsigned

    @property
    def fits(self) -> bool:  # uint8 with zero point 128 (signed) or 0 (unsigned)
        return self.levels <= (127 if self.signed else 255)


@dataclass
class LayerQ:
    """A quantized layer as the export writes it: the plan's layer (where it is, the one
    record of that) with the integers and steps read from the trained module."""

    layer: QuantLayer
    wq: WeightQ
    act: ActQ | None  # the activation input's quantizer (None: the input stays float)
    bias: np.ndarray | None = field(default=None)  # float bias after BN folding (set by fold_batchnorm)

    @property
    def int4_candidate(self) -> bool:
        """A 2-D MatMul weight of <= 7 levels (4 bits): INT4 for MatMulNBits (profile ort)."""
        return self.layer.op_type == "MatMul" and self.wq.levels <= 7 and self.wq.ints.ndim == 2


def pruning_cuts(qadg: QADG, removed) -> dict[str, dict[int, list[int]]]:
    """initializer -> axis -> sorted removed indices (what prune_model deletes)."""
    cut: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for gid in removed:
        for m in qadg.group(gid).members:
            cut[m.tensor][m.axis].update(m.indices)
    return {t: {a: sorted(i) for a, i in axes.items()} for t, axes in cut.items()}


def _check_uniform(name: str, q: Quantizer) -> None:
    if float((q.t - 1).abs().max()) > 0:
        raise GetaError(f"quantizer '{name}' learned exponent t = {float(q.t):g} != 1: a non-uniform grid "
                        "cannot be expressed with QuantizeLinear / DequantizeLinear; train with learn_t off")


@torch.no_grad()
def _integers(q: Quantizer, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, d) with Q(w) = k * d exactly as Quantizer.forward computes it (t = 1)."""
    d = q._view(q.effective_d().clamp_min(D_FLOOR), w)
    q_m = q._view(q.q_m.detach(), w).clamp_min(Q_FLOOR)
    z = torch.minimum(w.abs(), q_m) / d
    return torch.sign(w) * torch.round(z), d


@torch.no_grad()
def weight_q(plan: QuantPlan, layer: QuantLayer, weight: torch.Tensor,
             cuts: dict[int, list[int]]) -> tuple[WeightQ, np.ndarray]:
    """(WeightQ pruned in the layer's weight-input layout, fake-quant values unpruned in the
    initializer layout)."""
    name, perm = layer.weight_quantizer, layer.perm
    q = plan.quantizer(name)
    _check_uniform(name, q)
    w = weight.detach().float()
    if perm is not None:
        w = w.permute(*perm)
    k, d = _integers(q, w)
    fake = (k * d)
    if not torch.equal(fake, q(w)):  # the quantizer's own forward must agree bitwise
        raise GetaError(f"quantizer '{name}': integer read-back does not reproduce the fake-quant weight")
    levels = int(torch.round(q.q_m.detach().clamp_min(Q_FLOOR) / q.effective_d().clamp_min(D_FLOOR)).max())
    ints = k.cpu().numpy().astype(np.int64)
    scale = q.effective_d().detach().float().cpu().numpy().astype(np.float32)
    axis = layer.axis if scale.ndim else None
    for init_axis, idx in cuts.items():  # cuts are in the initializer's layout
        node_axis = perm.index(init_axis) if perm is not None else init_axis
        ints = np.delete(ints, idx, axis=node_axis)
        if axis is not None and node_axis == axis:
            scale = np.delete(scale, idx)
    fake_init = fake.cpu().numpy()
    if perm is not None:
        fake_init = np.transpose(fake_init, np.argsort(perm))
    return WeightQ(ints, scale, axis, levels), fake_init


@torch.no_grad()
def act_q(plan: QuantPlan, site: QuantSite) -> ActQ:
    q = plan.quantizer(site.quantizer)
    _check_uniform(site.quantizer, q)
    d = q.effective_d().detach().float().clamp_min(D_FLOOR)
    if d.numel() != 1:
        raise GetaError(f"activation quantizer '{site.quantizer}' is per channel; only per-tensor activations export")
    levels = int(torch.round(q.q_m.detach().clamp_min(Q_FLOOR) / d))
    return ActQ(site.tensor, float(d), bool(q.signed), levels)
