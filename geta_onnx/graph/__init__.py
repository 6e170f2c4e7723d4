"""Loading, validating and normalising ONNX graphs."""
from .load import MAX_OPSET, MIN_OPSET, from_proto, load_model
from .model import OnnxModel, TensorInfo

__all__ = ["MAX_OPSET", "MIN_OPSET", "OnnxModel", "TensorInfo", "from_proto", "load_model"]
