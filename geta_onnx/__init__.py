"""geta-onnx: joint structured pruning and mixed-precision quantization of ONNX models
(GETA, CVPR 2025) from one training run, emitted as standard QDQ ONNX."""
from .bridge import OnnxModule, to_torch
from .errors import ConfigError, ConversionError, DataError, GetaError, ModelLoadError, UnsupportedOpError
from .export import export_onnx
from .geta import GetaResult, run_geta
from .graph import OnnxModel, from_proto, load_model
from .prune import prune_model
from .qadg import analyze

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ConversionError", "DataError", "GetaError", "GetaResult", "ModelLoadError", "OnnxModel",
    "OnnxModule", "UnsupportedOpError", "analyze", "export_onnx", "from_proto", "load_model", "prune_model",
    "run_geta", "to_torch",
]
