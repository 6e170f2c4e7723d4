"""The optimizer's view of the quantizers attached by geta_onnx.quant, and the bit widths each
one may be deployed at (docs/latency.md, "Deployable precision")."""
from __future__ import annotations

from ..config import QuantConfig
from ..quant.plan import QuantPlan
from .qasso import QuantTarget

# Widths each export profile's runtime executes in its own format, per quantized input. ONNX
# has no int5-7 types: a 5-7-bit weight runs in the int8 kernels at int8 size, so it buys no
# speed and no size and only costs accuracy. ort: MatMul weights also as INT4 (MatMulNBits, a
# 2-D weight); activations, Conv / ConvTranspose / Gemm weights 8. tensorrt: 8 everywhere.
DEPLOYABLE = {"ort": {"MatMul": (4, 8)}, "tensorrt": {}}
DEFAULT_WIDTHS = (8,)


def deployable_bits(profile: str, op_type: str, weight: bool, weight_rank: int) -> tuple[int, ...]:
    if not weight:
        return DEFAULT_WIDTHS
    widths = DEPLOYABLE.get(profile, {}).get(op_type, DEFAULT_WIDTHS)
    return widths if op_type != "MatMul" or weight_rank == 2 else DEFAULT_WIDTHS


def quant_targets(plan: QuantPlan, config: QuantConfig, profile: str | None = None,
                  int8_only: frozenset[str] = frozenset()) -> list[QuantTarget]:
    """One target per quantizer module (a shared activation quantizer appears once).
    `profile` (ort / tensorrt): cool-down snaps each frozen width up to one the profile's
    runtime executes (QuantTarget.deployable); None: the free widths of [b_l, b_u].
    `int8_only`: layers (node names) whose weight may not take the int4 width the profile
    has for their op (the latency table times MatMulNBits slower there: LatencyModel.int4_slower)."""
    targets: dict[str, QuantTarget] = {}
    layers = {layer.node: layer for layer in plan.layers}
    for site in plan.sites:
        if site.quantizer in targets:
            continue
        weight = site.kind == "weight"
        start = config.weight_bits_start if weight else config.act_bits_start
        if weight:
            layer = layers[site.node]
            widths = () if profile is None else deployable_bits(profile, layer.op_type, True, len(layer.weight_shape))
            if widths and site.node in int8_only:
                widths = tuple(w for w in widths if w >= 8) or DEFAULT_WIDTHS
        else:  # an activation: of a layer's input, a conv's output or a residual Add's output (no layer)
            widths = () if profile is None else DEFAULT_WIDTHS
        targets[site.quantizer] = QuantTarget(  # the bounds: the quantizer's bit_range (attach_quantizers)
            site.quantizer, plan.quantizer(site.quantizer), site.tensor if weight else None, start,
            layer.out_axis if weight and site.per_channel else None, widths)
    return list(targets.values())
