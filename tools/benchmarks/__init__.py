"""Side-by-side benchmarks of geta-onnx against the usual alternatives (issue 6).

    python tools/benchmarks/run.py fmnist [--quick] [--out runs/benchmarks]

baselines.py  the alternatives as library functions: onnxruntime int8 PTQ, L1 structured
              pruning on geta-onnx's own pruning groups, fine-tuning through the bridge
models/       one module per benchmark model: preparation, data, quality metric
rows.py       each row of a benchmark (fp32, PTQ, L1 + FT + PTQ, geta-onnx), timed
measure.py    every row's quality, MACs, BOPs, size and latency (one measure_latency call)
report.py     MODEL.json -> Pareto PNG and docs/benchmarks.md
run.py        the command line
"""
