"""The one place that depends on library internals rather than public APIs: onnxruntime's
symbolic shape inference driven step by step, and the ONNX checker's wording for deprecated
operators. tests/graph/test_internals.py pins both to the installed versions, so an upgrade
that changes them fails there, not somewhere in a user's run.

    symbolic_shapes(proto)            # ModelProto with what onnxruntime inferred, or None
    is_deprecated_op_error(model, e)  # a checker failure that onnxruntime does not care about
"""
from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)

# members of onnxruntime.tools.symbolic_shape_infer.SymbolicShapeInference used below
SYMBOLIC_MEMBERS = ("_preprocess", "_infer_impl", "_update_output_from_vi", "run_", "out_mp_")


def symbolic_shapes(proto: onnx.ModelProto, label: str = "model") -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference, keeping what it inferred when it cannot
    finish. Its public entry point (infer_shapes) raises then, after writing
    'sym_shape_infer_temp.onnx' and data files into the working directory, so its loop is
    driven here instead through the SYMBOLIC_MEMBERS. None on any failure (best effort)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        sym = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess rank, verbose
        sym._preprocess(proto)
        while sym.run_:
            sym._infer_impl()
        sym._update_output_from_vi()
        return sym.out_mp_
    except Exception as e:  # noqa: BLE001 - best effort: onnx inference shapes remain
        log.debug("%s: symbolic shape inference failed: %s", label, e)
        return None


def deprecated_ops(proto: onnx.ModelProto) -> list[str]:
    """Op types of the graph that onnx.defs marks deprecated at the model's opset."""
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    found = []
    for node in proto.graph.node:
        domain = node.domain or ""
        if domain not in ("", "ai.onnx") or node.op_type in found:
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get("", 1), "")
        except onnx.defs.SchemaError:
            continue
        if schema.deprecated:
            found.append(node.op_type)
    return found


def is_deprecated_op_error(proto: onnx.ModelProto, message: str) -> bool:
    """The checker rejected `proto` only for an operator deprecated at its opset (Upsample
    >= 10, GroupNormalization-18): onnxruntime still runs those. Both must hold: onnx.defs
    marks an op of the graph deprecated, and the checker's message says so."""
    return bool(deprecated_ops(proto)) and "deprecated" in message.lower()
