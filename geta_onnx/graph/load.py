"""Loading .onnx files: external data, the checker, and one-line errors for bad input.

Nothing here raises a raw protobuf / onnx traceback at a user: every failure becomes a
ModelLoadError that names the file and says what to do.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from ..errors import ModelLoadError
from .internals import is_deprecated_op_error
from .model import OnnxModel
from .ort_fusions import standard_ops

log = logging.getLogger(__name__)

MIN_OPSET = 11
MAX_OPSET = 21
_TWO_GB = 2**31


def load_model(path: str | os.PathLike, *, check: bool = True, normalize: bool = True) -> OnnxModel:
    """Read an ONNX file (with its external data), validate it and normalise it.

    The file is only read, never written. `normalize` runs graph.normalize (constant
    folding, Identity-linked initializers, shape inference, topological order).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; check the path to the .onnx model")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory; pass the .onnx file inside it")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({e.strerror})") from None
    if not data:
        raise ModelLoadError(f"{path}: the file is empty; re-export the model")
    proto = parse_model_bytes(data, label=str(path))
    _load_external_data(proto, path)
    model = OnnxModel(proto, path)
    check_opset(model)
    check_signature(model)
    if check:
        run_checker(model)
    model = _standard_ops(model)  # a file of onnxruntime's transformer optimizer
    if normalize:
        from .normalize import normalize_model

        model = normalize_model(model)
    return model


def _standard_ops(model: OnnxModel) -> OnnxModel:
    """`model` with onnxruntime's transformer fusions written as the standard ops they fuse
    (graph/ort_fusions.py); itself when it has none."""
    standard, fused = standard_ops(model.proto)
    if not fused:
        return model
    log.info("%s: %d op(s) of onnxruntime's transformer fusions written as the standard ops they fuse "
             "(onnxruntime fuses them again when it loads the compressed file)", model.label, fused)
    return model.with_proto(standard)


def parse_model_bytes(data: bytes, *, label: str) -> onnx.ModelProto:
    """Parse serialized ModelProto bytes; a partial or foreign file gives a clear error."""
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{label}: not a valid ONNX file (protobuf parse failed: {e}); the file may be "
            "truncated or of another format - re-export or re-download it"
        ) from None
    if not proto.HasField("graph") or proto.ir_version == 0 or not proto.opset_import:
        raise ModelLoadError(
            f"{label}: not a valid ONNX model (no graph, IR version or opset import); the file "
            "may be truncated or of another format - re-export it"
        )
    return proto


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read external tensor data, refusing paths that leave the model's folder."""
    base = path.parent.resolve()
    tensors = [t for t in _all_tensors(proto) if uses_external_data(t)]
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if not loc:
            raise ModelLoadError(f"{path}: tensor '{t.name}' has external data without a location")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or not target.is_relative_to(base):
            raise ModelLoadError(
                f"{path}: tensor '{t.name}' points to external data '{loc}' outside the model's "
                "folder; refused for safety - move the data file next to the model"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: external data file '{loc}' of tensor '{t.name}' is missing; copy it "
                f"next to the model (expected at {target})"
            )
    if tensors:
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot read external data ({e})") from None


def _all_tensors(proto: onnx.ModelProto):
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def check_opset(model: OnnxModel) -> None:
    version = model.opset("")
    if version == 0:
        raise ModelLoadError(f"{model.label}: imports no ai.onnx opset; re-export the model")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise ModelLoadError(
            f"{model.label}: opset {version} is not supported (supported: {MIN_OPSET} to {MAX_OPSET}); "
            f"convert it with onnx.version_converter.convert_version(model, {min(max(version, MIN_OPSET), MAX_OPSET)})"
        )


def check_signature(model: OnnxModel) -> None:
    """A model geta-onnx can feed and score: graph inputs (numeric tensors) and outputs."""
    if not model.proto.graph.output:
        raise ModelLoadError(f"{model.label}: the model has no graph outputs, so there is nothing to measure or "
                             "train; re-export it with its outputs")
    if not model.inputs:
        raise ModelLoadError(f"{model.label}: the model has no graph inputs (it computes a constant); geta-onnx "
                             "compresses models that take inputs")
    for vi in model.inputs:
        t = vi.type
        if not t.HasField("tensor_type") or t.tensor_type.elem_type in (0, onnx.TensorProto.STRING):
            kind = "a string tensor" if t.HasField("tensor_type") and t.tensor_type.elem_type else "not a tensor"
            raise ModelLoadError(f"{model.label}: input '{vi.name}' is {kind}; geta-onnx feeds numeric tensors "
                                 "(preprocess strings, e.g. tokenize text, outside the model)")


def run_checker(model: OnnxModel) -> None:
    try:
        if model.proto.ByteSize() < _TWO_GB:
            onnx.checker.check_model(model.proto)
        elif model.path is not None:
            onnx.checker.check_model(str(model.path))
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        if is_deprecated_op_error(model.proto, first):  # e.g. Upsample >= 10: runtimes still run them
            log.warning("%s: %s (continuing: onnxruntime still runs it)", model.label, first)
            return
        raise ModelLoadError(
            f"{model.label}: the ONNX checker rejects the model: {first}; fix the exporter output"
        ) from None


def from_proto(proto: onnx.ModelProto, *, label: str | None = None, check: bool = True,
               normalize: bool = True) -> OnnxModel:
    """The in-memory counterpart of load_model (the proto is copied, never modified)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    if label and not copy.graph.name:
        copy.graph.name = label
    model = OnnxModel(copy)
    check_opset(model)
    if check:
        run_checker(model)
    model = _standard_ops(model)  # a file of onnxruntime's transformer optimizer
    if normalize:
        from .normalize import normalize_model

        model = normalize_model(model)
    return model
