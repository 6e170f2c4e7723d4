"""The quantization-aware dependency graph: pruning groups built on the ONNX graph."""
from .analysis import QADG, Fixup, analyze
from .groups import MemberSlice, PruneGroup

__all__ = ["QADG", "Fixup", "MemberSlice", "PruneGroup", "analyze"]
