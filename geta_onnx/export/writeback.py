"""Pass 1: the trained weights back into the ORIGINAL ONNX graph, pruned groups removed.

Requires: a GetaResult (module trained, quantizers attached, removed groups exactly zero)
and the OnnxModel it was trained from (same node and initializer names).
Ensures: a new float ModelProto (the input model is never modified) holding the trained
values of every parameter and BatchNorm statistic, without the removed groups; plus one
LayerQ per quantized layer (integers, scales, activation steps; geta_onnx.export.params)
and one ActQ per output quantizer (a conv output no layer reads directly).
Weights of layers that stay float because their learned bits exceed 8 are written as
their fake-quant values, so the float graph computes what the fake-quant model does.
"""
from __future__ import annotations

import onnx

from ..graph.model import OnnxModel
from ..prune.physical import prune_model
from .params import ActQ, LayerQ, act_q, pruning_cuts, weight_q


def _perm(model: OnnxModel, transpose: str | None, rank: int) -> list[int] | None:
    if transpose is None:
        return None
    node = model.node_by_name[transpose]
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return list(reversed(range(rank)))


def write_back(result, model: OnnxModel) -> tuple[onnx.ModelProto, list[LayerQ], list[ActQ]]:
    """(pruned float proto with trained values, quantized layers in plan order, output quantizers)."""
    module, plan = result.module, result.plan
    removed = sorted(result.removed_groups)
    cuts = pruning_cuts(result.qadg, removed)
    values = module.initializer_values()
    acts = {s.node: s for s in plan.act_sites()}
    layers: list[LayerQ] = []
    for site in plan.weight_sites():
        param = module.parameter(site.tensor)
        perm = _perm(model, site.transpose, param.dim())
        wq, fake = weight_q(plan, site, param, perm, cuts.get(site.tensor, {}))
        if not wq.fits:
            values[site.tensor] = fake  # stays float, computes the fake-quant weight
            continue
        a = acts.get(site.node)
        layers.append(LayerQ(site, wq, act_q(plan, a) if a is not None else None, a.input_index if a is not None else None))
    proto = prune_model(result.qadg, removed, values=values)
    return proto, layers, [act_q(plan, s) for s in plan.output_sites()]
