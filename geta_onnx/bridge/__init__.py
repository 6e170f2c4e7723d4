"""The ONNX -> PyTorch training bridge (our own onnx2torch-style converter)."""
from .builder import OnnxModule, to_torch
from .parity import compare_outputs, run_bridge, run_onnxruntime

__all__ = ["OnnxModule", "compare_outputs", "run_bridge", "run_onnxruntime", "to_torch"]
