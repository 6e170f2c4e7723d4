"""The quantization half of GETA: the quantizer, where quantizers go, calibration, BOPs."""
from .bops import LayerBops, LayerKeep, fp32_bops, kept_from_groups, layer_bops, relative_bops, total_bops
from .calibrate import calibrate
from .plan import QuantLayer, QuantPlan, QuantSite
from .quantizer import GetaQuantize, Quantizer, bits_of, d_of_bits
from .sites import attach_quantizers

__all__ = ["GetaQuantize", "LayerBops", "LayerKeep", "QuantLayer", "QuantPlan", "QuantSite", "Quantizer",
           "attach_quantizers", "bits_of", "calibrate", "d_of_bits", "fp32_bops", "kept_from_groups",
           "layer_bops", "relative_bops", "total_bops"]
