"""Fashion-MNIST evidence for GETA training: a ResNet-style CNN trained in fp32, exported
to ONNX, then ONE GETA run at 50 % group sparsity with weight bits in [4, 8].

    apt-get install dataset-fashion-mnist     # the data (Debian package, Expat license)
    python tools/fmnist_geta.py [--width 16] [--fp32-epochs 4] [--geta-epochs 6] [--loss task+kd]
                                [--per-channel] [--fp32-onnx runs/fmnist/resnet_fmnist.onnx] [--out runs/fmnist]

Prints fp32 accuracy, compressed accuracy, relative BOPs, group sparsity, bit-width
histograms and wall times; writes them (and the per-epoch evaluations) to OUT/report.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geta_onnx.config import DataConfig, OptimConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig  # noqa: E402
from geta_onnx.bridge import to_torch  # noqa: E402
from geta_onnx.geta import run_geta  # noqa: E402
from geta_onnx.graph import load_model  # noqa: E402
from geta_onnx.quant.bops import kept_from_groups  # noqa: E402
from geta_onnx.train import load_data  # noqa: E402

from samples.fashion_mnist import DATA, ResNetFM, accuracy, export, train_fp32  # noqa: E402


def bits_histograms(result) -> dict[str, dict[int, int]]:
    """{"weight": {bits: kept output channels at that width, over every quantized layer},
    "act": {bits: activation quantizers at that width}}. Removed channels are not counted;
    a per-tensor weight quantizer gives each of its kept channels the layer's width."""
    plan = result.plan
    kept = kept_from_groups(plan, [result.qadg.group(g) for g in result.removed_groups])
    weight: dict[int, int] = {}
    for layer in plan.layers:
        if layer.weight_quantizer is None:
            continue
        bits = plan.quantizer(layer.weight_quantizer).bits().round().reshape(-1)
        size = layer.weight_shape[layer.out_axis] if layer.out_axis is not None else 1
        channels = kept[layer.node].out_channels or range(size)
        for c in channels:
            b = int(bits[c if bits.numel() > 1 else 0])
            weight[b] = weight.get(b, 0) + 1
    act: dict[int, int] = {}
    for q in plan.act_quantizers().values():
        b = int(q.bits().round())
        act[b] = act.get(b, 0) + 1
    return {"weight": dict(sorted(weight.items())), "act": dict(sorted(act.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (then 2x, 4x)")
    p.add_argument("--fp32-epochs", type=int, default=4)
    p.add_argument("--geta-epochs", type=int, default=6)
    p.add_argument("--per-channel", action="store_true", help="one weight quantizer (d, q_m) per output channel")
    p.add_argument("--out", default="runs/fmnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp32-onnx", help="reuse a trained fp32 export of an earlier run instead of training again")
    p.add_argument("--forget", default="budget", choices=["spec", "budget"],
                   help="forget rate when cos(c, g) < 0 (geta_onnx.optim.qasso.forget_rate)")
    p.add_argument("--loss", default="auto", help="auto (task+kd with labels), task, task+kd (with distillation from the fp32 model), kd")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(a.fp32_onnx) if a.fp32_onnx else out / "resnet_fmnist.onnx"
    if a.fp32_onnx:
        onnx_model = load_model(path)
        data = load_data(DATA, DataConfig(batch_size=128, val_split=0.0), model=onnx_model, seed=0)
        fp32_acc, fp32_s = accuracy(to_torch(onnx_model), data.eval), 0.0
    else:
        model = ResNetFM(a.width)
        export(model, path)  # untrained: only so the data is fitted to the model's input (N, 1, 28, 28)
        data = load_data(DATA, DataConfig(batch_size=128, val_split=0.0), model=load_model(path), seed=0)
        start = time.perf_counter()
        fp32_acc = train_fp32(model, data, a.fp32_epochs)
        fp32_s = time.perf_counter() - start
        export(model, path)
        onnx_model = load_model(path)
    print(f"fp32: top-1 {fp32_acc:.4f} ({fp32_s:.0f} s)", flush=True)
    start = time.perf_counter()
    result = run_geta(onnx_model, data, quant=QuantConfig(weight_bits=(4, 8), act_bits=(4, 8),
                                                          per_channel=a.per_channel),
                      prune=PruneConfig(target_sparsity=0.5, group_divisible=8),
                      optim=OptimConfig(optimizer="adam", lr=1e-3, forget=a.forget),
                      schedule=ScheduleConfig(epochs=a.geta_epochs),
                      train_config=TrainConfig(progress=False, loss=a.loss))
    geta_s = time.perf_counter() - start
    report = {
        "fp32_onnx": str(path), "width": a.width, "loss": a.loss, "per_channel": a.per_channel, "forget": a.forget,
        "fp32_accuracy": fp32_acc, "fp32_epochs": a.fp32_epochs, "fp32_seconds": fp32_s,
        "compressed_accuracy": result.metrics.get("accuracy"), "geta_epochs": a.geta_epochs, "geta_seconds": geta_s,
        "relative_bops": result.relative_bops, "group_sparsity": result.metrics["group_sparsity"],
        "removed_groups": result.metrics["removed_groups"], "prunable_groups": result.metrics["prunable_groups"],
        "bits_histogram": bits_histograms(result), "bits": result.bits,
        "history": [h["eval"] for h in result.train.history],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("bits", "history")}, indent=2))


if __name__ == "__main__":
    main()
