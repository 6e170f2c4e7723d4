"""Measurements in onnxruntime: latency (bench), accuracy / fidelity (eval), the report
schema and the CI gate. These run the exported ONNX files, never the torch bridge."""
from .accuracy import evaluate_onnx
from .gate import Check, check_budgets
from .latency import measure_latency
from .report import SCHEMA_VERSION, ReportError, build_report, latency_p50, read_report, validate_report

__all__ = [
    "SCHEMA_VERSION", "Check", "ReportError", "build_report", "check_budgets", "evaluate_onnx", "latency_p50",
    "measure_latency", "read_report", "validate_report",
]
