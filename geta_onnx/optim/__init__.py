"""QASSO: the GETA optimizer, its importance scores, group selection and stages."""
from .importance import ImportanceWeights
from .qasso import QASSO, QuantLayer, bits_of, step_for_bits
from .stages import StagePlan

__all__ = ["QASSO", "ImportanceWeights", "QuantLayer", "StagePlan", "bits_of", "step_for_bits"]
