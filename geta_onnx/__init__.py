"""geta-onnx: joint structured pruning and mixed-precision quantization of ONNX models
(GETA, CVPR 2025) from one training run, emitted as standard QDQ ONNX."""
from .bridge import OnnxModule, to_torch
from .compress import compress
from .config import DataConfig, ExportConfig, OptimConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig
from .errors import ConfigError, ConversionError, DataError, GetaError, ModelLoadError, UnsupportedOpError
from .export import export_onnx
from .geta import GetaResult, run_geta
from .graph import OnnxModel, from_proto, load_model
from .prune import prune_model
from .qadg import analyze
from .settings import Settings
from .train import load_data
from .train_job import train_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ConversionError", "DataConfig", "DataError", "ExportConfig", "GetaError", "GetaResult",
    "ModelLoadError", "OnnxModel", "OnnxModule", "OptimConfig", "PruneConfig", "QuantConfig", "ScheduleConfig",
    "Settings", "TrainConfig", "UnsupportedOpError", "analyze", "compress", "export_onnx", "from_proto",
    "load_data", "load_model", "prune_model", "run_geta", "to_torch", "train_model",
]
