"""Pass 1: the trained weights back into the ORIGINAL ONNX graph, pruned groups removed.

Requires: a GetaResult (module trained, quantizers attached, removed groups exactly zero)
(its plan and QADG name the trained ONNX graph's nodes and initializers).
Ensures: a new float ModelProto (the input model is never modified) holding the trained
values of every parameter and BatchNorm statistic, without the removed groups; plus one
LayerQ per quantized layer (integers, scales, activation steps; geta_onnx.export.params)
and one ActQ per output quantizer (a conv output no layer reads directly).
Weights of layers that stay float because their learned bits exceed 8 are written as
their fake-quant values, so the float graph computes what the fake-quant model does.
"""
from __future__ import annotations

import onnx

from ..prune.physical import prune_model
from .params import ActQ, LayerQ, act_q, pruning_cuts, weight_q


def write_back(result) -> tuple[onnx.ModelProto, list[LayerQ], list[ActQ]]:
    """(pruned float proto with trained values, quantized layers in plan order, output quantizers)."""
    module, plan = result.module, result.plan
    removed = sorted(result.removed_groups)
    cuts = pruning_cuts(result.qadg, removed)
    values = module.initializer_values()
    acts = {s.node: s for s in plan.act_sites()}
    layers: list[LayerQ] = []
    for layer in plan.layers:
        if layer.weight_quantizer is None:
            continue
        wq, fake = weight_q(plan, layer, module.parameter(layer.weight), cuts.get(layer.weight, {}))
        if not wq.fits:
            values[layer.weight] = fake  # stays float, computes the fake-quant weight
            continue
        a = acts.get(layer.node)
        layers.append(LayerQ(layer, wq, act_q(plan, a) if a is not None else None))
    proto = prune_model(result.qadg, removed, values=values)
    return proto, layers, [act_q(plan, s) for s in plan.output_sites()]
