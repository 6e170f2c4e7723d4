"""geta-onnx: joint structured pruning and mixed-precision quantization of ONNX models
(GETA, CVPR 2025) from one training run, emitted as standard QDQ ONNX."""
from .bridge import OnnxModule, to_torch
from .errors import ConfigError, ConversionError, DataError, GetaError, ModelLoadError, UnsupportedOpError
from .graph import OnnxModel, from_proto, load_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ConversionError", "DataError", "GetaError", "ModelLoadError", "OnnxModel", "OnnxModule",
    "UnsupportedOpError", "from_proto", "load_model", "to_torch",
]
