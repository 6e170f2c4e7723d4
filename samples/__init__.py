"""Sample models for geta-onnx: the model zoo (samples.zoo) and its exporter (samples.export_zoo).

Nothing here is part of the installed package: the zoo is test and demonstration material
that proves the ONNX -> PyTorch bridge (and later the pruning analysis) on real
architecture patterns.
"""
