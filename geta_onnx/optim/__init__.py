"""QASSO: the GETA optimizer, its importance scores, group selection and stages."""
from .importance import ImportanceWeights
from .qasso import QASSO, QuantTarget
from .targets import quant_targets

__all__ = ["QASSO", "ImportanceWeights", "QuantTarget", "quant_targets"]
