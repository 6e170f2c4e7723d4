"""Export a GETA result as a QDQ ONNX model: the ORIGINAL graph with the trained weights,
the removed groups cut out, BatchNorm folded, and Q/DQ nodes at the learned steps.

    proto = export_onnx(result, model, profile="ort")     # or "tensorrt"
    fusion_report(proto)                                  # what onnxruntime fuses
    save(proto, "model.geta.onnx", source=model)          # atomic; never over the input

Passes (each a module stating what it requires and ensures):
    writeback.write_back      trained values + pruning, LayerQ integers / steps
    bnfold.fold_batchnorm     Conv + BN -> Conv, integers kept, BN in per-channel scales
    opset (here)              opset 21 when an INT4 MatMul weight is emitted
    qdq.insert_qdq            Q/DQ per profile, int32 biases, INT4 MatMul weights, int8 embedding tables,
                              int8 LSTMs (recurrent.int8_lstms)
and dequantize.dequantize makes the float twin of the result (what compress ships when
onnxruntime runs it faster, bench/choice.py).
Nothing is re-exported from PyTorch and nothing but `save` writes files.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx

from ..errors import GetaError
from ..graph.model import OnnxModel
from ..io import write_bytes_atomic
from .bnfold import fold_batchnorm
from .dequantize import dequantize
from .qdq import INT4_OPSET, PROFILES, insert_qdq
from .report import fusion_report, optimized_graph
from .writeback import write_back

PER_AXIS_OPSET = 13  # DequantizeLinear's axis attribute (per-channel scales)
log = logging.getLogger(__name__)


def export_onnx(result, model: OnnxModel, profile: str = "ort", *, int4: bool = True) -> onnx.ModelProto:
    """The deployable QDQ model of `result` (a GetaResult trained from `model`).

    int4 (profile "ort" only): MatMul weights of <= 4 learned bits as INT4 (opset 21, needs
    the graph to convert to opset 21; otherwise they stay in the int8 container)."""
    if profile not in PROFILES:
        raise GetaError(f"unknown export profile '{profile}'; expected one of {', '.join(PROFILES)}")
    proto, layers, outputs = write_back(result)
    proto = fold_batchnorm(proto, layers)
    opset = _opset(proto)
    if opset < PER_AXIS_OPSET and any(la.wq.scale.ndim for la in layers):
        upgraded = upgrade_opset(proto, PER_AXIS_OPSET)
        if upgraded is None:
            raise GetaError(f"{model.label}: the model is opset {opset}, which has no per-channel DequantizeLinear "
                            f"(opset {PER_AXIS_OPSET}), and onnx's version converter cannot upgrade this graph with "
                            "onnxruntime parity; re-export the model at opset 13 or later")
        log.info("export: opset %d -> %d for per-channel Q/DQ", opset, PER_AXIS_OPSET)
        proto = upgraded
    use_int4 = int4 and profile == "ort" and any(la.int4_candidate for la in layers)
    if use_int4:
        upgraded = upgrade_opset(proto, INT4_OPSET)
        use_int4 = upgraded is not None
        proto = upgraded if upgraded is not None else proto
    proto = insert_qdq(proto, layers, profile, int4=use_int4, outputs=outputs,
                       tables=result.plan.tables, recurrent=result.plan.recurrent)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise GetaError(f"{model.label}: the exported model fails the ONNX checker: {e}") from None
    return proto


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto | None:
    """The model at default-domain opset `version` (onnx.version_converter), or None when
    it cannot be converted or the converted graph does not give the same outputs in
    onnxruntime (seeded inputs, rtol 1e-5)."""
    if _opset(proto) >= version:
        return proto
    try:
        out = onnx.version_converter.convert_version(proto, version)
        if version >= INT4_OPSET:
            out.ir_version = max(out.ir_version, 10)  # INT4 tensors need IR 10
        onnx.checker.check_model(out, full_check=True)
        if not _same_outputs(proto, out):
            return None
        return out
    except Exception:  # noqa: BLE001 - the converter raises various errors; the caller decides
        return None


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    import numpy as np

    from ..bridge.parity import ort_session
    from ..graph.feeds import example_feeds, runnable_shapes
    from ..graph.model import OnnxModel

    model = OnnxModel(a)
    shapes, _ = runnable_shapes(model, batch=1)  # symbolic image / sequence dims at sizes the model runs at
    feeds = example_feeds(model, shapes, batch=1)
    ra, rb = (ort_session(p, optimize=False).run(None, feeds) for p in (a, b))
    return all(x.shape == y.shape and np.allclose(x, y, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(x).max(initial=0))))
               for x, y in zip(ra, rb))


def save(proto: onnx.ModelProto, path: str | os.PathLike, *, source: OnnxModel | str | os.PathLike | None = None) -> None:
    """Write `proto` atomically; refuses to write over the source model file."""
    src = source.path if isinstance(source, OnnxModel) else source
    if src is not None and Path(src).exists() and Path(path).exists() and Path(path).samefile(src):
        raise GetaError(f"refusing to overwrite the input model '{src}': choose another output path")
    write_bytes_atomic(path, proto.SerializeToString())


__all__ = ["dequantize", "export_onnx", "fusion_report", "optimized_graph", "save", "upgrade_opset", "fold_batchnorm",
           "insert_qdq", "write_back"]
