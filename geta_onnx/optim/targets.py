"""The optimizer's view of the quantizers attached by geta_onnx.quant."""
from __future__ import annotations

from ..config import QuantConfig
from ..quant.plan import QuantPlan
from .qasso import QuantTarget


def quant_targets(plan: QuantPlan, config: QuantConfig) -> list[QuantTarget]:
    """One target per quantizer module (a shared activation quantizer appears once)."""
    targets: dict[str, QuantTarget] = {}
    for site in plan.sites:
        if site.quantizer in targets:
            continue
        weight = site.kind == "weight"
        low, high = config.weight_bits if weight else config.act_bits
        start = config.weight_bits_start if weight else config.act_bits_start
        targets[site.quantizer] = QuantTarget(
            site.quantizer, plan.quantizer(site.quantizer), site.tensor if weight else None, low, high, start,
            site.init_axis if weight and site.per_channel else None)
    return list(targets.values())
