"""The int8 export of a model as it stands, for measuring what the QDQ model spends outside
its layers (latency.model's R_int8): the real export (export/), every quantizer at 8 bits,
optionally with groups removed. The quantizers' d is put back bit for bit afterwards, so
building the reference before training changes nothing the training sees."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

log = logging.getLogger(__name__)


def int8_export(module, plan, qadg, model, removed=(), profile: str = "ort"):
    """The QDQ ModelProto of `module` (bridged `model`, quant.QuantPlan `plan`) with `removed`
    groups cut, or None when the export fails (the caller then falls back, and says so)."""
    from ..export import export_onnx

    quantizers = [plan.quantizer(name) for name in dict.fromkeys(s.quantizer for s in plan.sites)]
    saved = [q.d.detach().clone() for q in quantizers]
    try:
        with torch.no_grad():
            for q in quantizers:
                q.set_bits(8)
        result = SimpleNamespace(module=module, plan=plan, qadg=qadg, removed_groups=set(removed))
        return export_onnx(result, model, profile, int4=False)
    except Exception as e:  # noqa: BLE001 - a reference is an aid: the model falls back to the float fit
        log.info("%s: no int8 reference export (%s)", model.label, e)
        return None
    finally:
        with torch.no_grad():
            for q, d in zip(quantizers, saved):
                q.d.copy_(d)
