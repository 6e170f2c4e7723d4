#!/usr/bin/env bash
# The GPU check of docs/distributed.md, as one script (a lent GPU machine, ~8 minutes):
#   compress on the digits sample, MobileNetV2 and MiniLM with --device cuda and --device cpu
#   (same seed: the results side by side), bf16 / fp16 autocast on the GPU, and
#   tools/bench_scale.py (step times on the GPU; 1 vs 2 CPU processes on the machine's cores).
#
#   OUT=runs/device bash tools/device_check.sh     # needs python3 with torch (CUDA), onnx,
#                                                   # onnxruntime, click, tqdm, safetensors, sklearn
# Carry assets/mobilenetv2/mobilenetv2.onnx, assets/minilm/config.json and vocab.txt
# (tools/device_data.py makes the data and, without the 90 MB file, a random-weight MiniLM).
# Writes $OUT/log.txt and $OUT/reports.json (the figures of every compress run).
# Parts can be narrowed for a rerun: DIGITS="cuda:off" MNV2="cuda" MINILM="" BENCH_GPU=1 BENCH_DDP=0.
set -u
DIGITS=${DIGITS-cpu:off cuda:off cuda:bf16 cuda:fp16}
MNV2=${MNV2-cuda cpu}
MINILM=${MINILM-cuda cpu}
BENCH_GPU=${BENCH_GPU-1}
BENCH_DDP=${BENCH_DDP-1}
OUT=${OUT:-runs/device}
mkdir -p "$OUT" runs/dev
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
G="python3 -m geta_onnx.cli compress"
step() { echo; echo "== $* ($(date +%T))"; }
{
step versions
python3 -c "import torch, onnx, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'onnx', onnx.__version__, 'ort', onnxruntime.__version__)"
nproc
step data
timeout 120 python3 tools/device_data.py runs/dev

step "digits sample: cpu vs cuda (fp32), cuda bf16 / fp16"
for run in $DIGITS; do
  dev=${run%%:*}; amp=${run##*:}
  timeout 150 $G samples/digits/digits_cnn.onnx --data npz:samples/digits/digits.npz --config samples/digits/compress.toml \
    -o runs/dev/digits_${dev}_${amp}/s.onnx --steps 200 --device $dev --amp $amp --no-progress --no-plots --batch 1,32
done

step "MobileNetV2 (label-free distillation on photo crops): $MNV2"
for dev in $MNV2; do
  timeout 240 $G assets/mobilenetv2/mobilenetv2.onnx --data npz:runs/dev/mnv2.npz -o runs/dev/mnv2_${dev}_off/s.onnx \
    --steps 40 --batch-size 16 --target-sparsity 0.3 --device $dev --no-progress --no-plots --batch 1 \
    --skip-data-check --eval-limit 64
done

step "MiniLM (sentence-embedding distillation): $MINILM"
for dev in $MINILM; do
  timeout 200 $G runs/dev/minilm.onnx --data npz:runs/dev/minilm.npz --config samples/minilm/compress.toml \
    -o runs/dev/minilm_${dev}_off/s.onnx --steps 40 --batch-size 16 --device $dev --no-progress --no-plots --batch 1 \
    --skip-data-check
done

if [ "$BENCH_GPU" = 1 ]; then
  step "bench_scale on the GPU"
  timeout 240 python3 tools/bench_scale.py --models resnet,bert,mobilenetv2-224,minilm --procs 1 --device cuda --steps 24
fi
if [ "$BENCH_DDP" = 1 ]; then
  step "bench_scale: 1 vs 2 CPU processes (8 threads each)"
  timeout 240 python3 tools/bench_scale.py --models mobilenetv2-224 --procs 1,2 --threads 8 --per-process --steps 16
fi

step "summary"
python3 - "$OUT/reports.json" <<'EOF'
import json, sys
from pathlib import Path
rows = {}
for f in sorted(Path("runs/dev").glob("*/s.report.json")):
    r = json.loads(f.read_text())
    keep = {k: r.get(k) for k in ("accuracy", "fidelity", "speedup", "groups", "relative_bops", "wall_time_s")}
    keep["training"] = {k: v for k, v in r["training"].items() if k != "history"}
    keep["epoch_seconds"] = [round(h["seconds"], 2) for h in r["training"]["history"]]
    keep["weight_bits"] = [row.get("weight_bits") for row in r["layers"]]
    rows[f.parent.name] = keep
    print(f.parent.name, json.dumps({k: keep[k] for k in ("accuracy", "fidelity", "speedup", "wall_time_s")}))
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
EOF
} 2>&1 | tee "$OUT/log.txt"
