"""The exception hierarchy of geta-onnx.

Every error a user can cause is a GetaError whose message names the file, node or
option at fault and says what to do. The CLI prints it on one line and exits with the
error's `exit_code`: 2 for usage (an option, a config value, an output path that would
overwrite an input), 1 for failures (a model, data or file that cannot be used); library
callers catch GetaError. Bugs in geta-onnx itself stay ordinary exceptions.
"""
from __future__ import annotations

from collections.abc import Iterable


class GetaError(Exception):
    """A user-facing error: one line, names the culprit, says how to fix it."""

    exit_code = 1


class ModelLoadError(GetaError):
    """The model file cannot be read, parsed or validated."""


class UnsupportedOpError(GetaError):
    """The model contains ops the bridge cannot convert.

    `ops` lists every unsupported (domain, op_type, opset, first node name) at once, so a
    user sees the whole list in one run instead of one op per attempt.
    """

    def __init__(self, model: str, ops: Iterable[tuple[str, str, int, str]]):
        self.model = model
        self.ops = sorted(set(ops))
        listed = ", ".join(
            f"{(d or 'ai.onnx')}::{op}-{ver} (e.g. node '{node}')" for d, op, ver, node in self.ops
        )
        quantized = sorted({op for _, op, _, _ in self.ops} & INTEGER_OPS)
        advice = (f"The file is already quantized ({', '.join(quantized)}) in a form geta-onnx does not read back "
                  "as float (it reads QDQ files, onnxruntime's operator format with constant scales: QLinearConv, "
                  "QLinearMatMul, QGemm, QLinearAdd / Mul / Concat / Sigmoid / LeakyRelu / Softmax / AveragePool / "
                  "GlobalAveragePool, and its dynamic quantization: DynamicQuantizeLinear -> "
                  "MatMulInteger / ConvInteger -> Cast -> Mul, DynamicQuantizeMatMul, MatMulIntegerToFloat, "
                  "DynamicQuantizeLSTM); "
                  "compress the float model it was made from." if quantized else
                  "The file was saved by onnxruntime's transformer optimizer with fusions geta-onnx does not write "
                  "back as standard ops (it does SkipLayerNormalization, EmbedLayerNormalization, Attention without "
                  "a past state or causal mask, the Gelu forms, FusedMatMul); compress the model as exported, "
                  "before the optimizer: onnxruntime fuses the compressed file again when it loads it."
                  if {op for _, op, _, _ in self.ops} & TRANSFORMER_FUSIONS else
                  "Replace them in the exporter or open an issue with the model attached.")
        super().__init__(f"{model}: {len(self.ops)} unsupported op(s): {listed}. {advice}")


# integer kernels of an already-quantized model that graph/operator_format.py and
# graph/integer_ops.py did not read back as float (a QLinear op with computed scales, QAttention,
# a dynamic-quantization pattern that differs); QDQ models, onnxruntime's operator format and its
# dynamic quantization load as the float model they compute (graph/quantized.py)
# com.microsoft ops of onnxruntime's transformer optimizer; graph/ort_fusions.py writes most back as
# standard ops, these names are the ones left when it could not
TRANSFORMER_FUSIONS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "EmbedLayerNormalization",
                       "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "FusedMatMul", "BiasGelu",
                       "FastGelu", "RotaryEmbedding", "PackedAttention", "DecoderMaskedMultiHeadAttention"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
               "QLinearConv", "QLinearMatMul", "QAttention", "QGemm", "QLinearAdd", "QLinearMul"}


class ConversionError(GetaError):
    """A supported op has attributes or inputs the converter cannot handle."""

    def __init__(self, node: str, op_type: str, reason: str):
        self.node, self.op_type = node, op_type
        super().__init__(f"node '{node}' ({op_type}): {reason}")


class ConfigError(GetaError):
    """An option or config-file value is invalid (a usage error: exit code 2).

    `option` / `detail`, when given, are kept apart so a config file's loader can name the
    section and the file: ConfigError(option="lr", detail="must be > 0")."""

    exit_code = 2

    def __init__(self, message: str = "", *, option: str | None = None, detail: str | None = None):
        self.option, self.detail = option, detail
        super().__init__(message or f"option '{option}': {detail}")


class RunError(GetaError):
    """The run cannot go on for a reason outside the inputs' content: an output location that
    cannot be written, a run folder in use, an absent device."""


class DataError(GetaError):
    """A data spec cannot be read or does not fit the model."""
