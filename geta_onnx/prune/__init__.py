"""Physical pruning: remove zeroed groups from the ONNX graph."""
from .physical import prune_model, zeroed_groups

__all__ = ["prune_model", "zeroed_groups"]
