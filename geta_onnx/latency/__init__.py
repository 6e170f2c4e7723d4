"""The latency model of the deployment target (onnxruntime CPU): one-layer micro-benchmarks
per layer signature and kept widths (a table cached on disk, docs/latency.md), combined
into the predicted time of the pruned, quantized model that QASSO's latency budget uses."""
from .build import build_latency_model, group_effects
from .model import LatencyModel
from .table import LatencyTable, Target

__all__ = ["LatencyModel", "LatencyTable", "Target", "build_latency_model", "group_effects"]
