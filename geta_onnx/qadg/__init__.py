"""The quantization-aware dependency graph: pruning groups built on the ONNX graph."""
from .analysis import QADG, analyze
from .fixups import Fixup
from .groups import MemberSlice, PruneGroup

__all__ = ["QADG", "Fixup", "MemberSlice", "PruneGroup", "analyze"]
