"""Time of a QASSO training step vs a plain optimizer step on the same quantized model.

    python tools/bench_qasso.py [--model resnet] [--batch 32] [--repeats 20]
    python tools/bench_qasso.py --onnx assets/minilm/minilm.onnx --data npz:runs/minilm/minilm_text.npz

Both run forward + backward + step on the bridged zoo model with the GETA quantizers
attached; QASSO is timed in each of its stages (the pruning stage includes the period
starts that score every group). Medians over repeats; ratio QASSO / Adam.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geta_onnx.bridge import to_torch  # noqa: E402
from geta_onnx.config import DataConfig, QuantConfig  # noqa: E402
from geta_onnx.graph import from_proto, load_model  # noqa: E402
from geta_onnx.optim import QASSO, quant_targets  # noqa: E402
from geta_onnx.qadg import analyze  # noqa: E402
from geta_onnx.quant.sites import attach_quantizers  # noqa: E402
from geta_onnx.train import Schedule, load_data, split_batch  # noqa: E402
from samples import export_zoo, zoo  # noqa: E402


def build(model):
    """(model, bridged module with GETA quantizers, plan) of an OnnxModel."""
    module = to_torch(model).train()
    plan = attach_quantizers(module, model, QuantConfig())
    return model, module, plan


def step_time(module, opt, args) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    out = module(*args)
    (out[0] if isinstance(out, tuple) else out).float().square().mean().backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet", help="a zoo model (samples/zoo.py)")
    p.add_argument("--onnx", help="an ONNX file instead of a zoo model (needs --data)")
    p.add_argument("--data", help="data spec of --onnx: the first training batch is the input")
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.onnx:
        onnx_model = load_model(a.onnx)
        data = load_data(a.data, DataConfig(batch_size=a.batch), model=onnx_model, seed=0)
        args = list(split_batch(next(iter(data.train)), [i.name for i in onnx_model.inputs])[0])
    else:
        onnx_model = from_proto(export_zoo.export(a.model, "legacy", io.BytesIO()))
        args = list(zoo.get(a.model).example_inputs(batch=a.batch).values())
    model, plain_module, _ = build(onnx_model)
    adam = torch.optim.Adam(plain_module.parameters(), lr=1e-4)
    n = a.repeats
    total = 8 * n  # stages of n steps each at least: warm-up, projection, pruning (2n), cool-down
    model, module, plan = build(onnx_model)
    sched = Schedule(total, total, warmup_steps=n, projection_steps=2 * n, projection_periods=2,
                     pruning_start=3 * n, pruning_steps=3 * n, pruning_periods=3)
    qasso = QASSO(module, analyze(model), quant_targets(plan, QuantConfig()), sched, lr=1e-4, base="adam",
                  target_sparsity=a.sparsity, group_divisible=1)
    times: dict[str, list[float]] = {"adam": []}
    for k in range(total):
        times["adam"].append(step_time(plain_module, adam, args))
        stage = sched.stage(k).name
        times.setdefault(stage, []).append(step_time(module, qasso, args))
    base = statistics.median(times["adam"][2:])
    print(f"{a.onnx or a.model}, batch {a.batch}, {a.threads} threads, torch {torch.__version__}: median ms per training step")
    print(f"{'optimizer / stage':<22} {'ms':>8} {'ratio':>6}")
    print(f"{'Adam':<22} {base * 1e3:>8.2f} {1.0:>6.2f}")
    for stage in ("warmup", "projection", "pruning", "cooldown"):
        med = statistics.median(times[stage][1:])
        print(f"{'QASSO ' + stage:<22} {med * 1e3:>8.2f} {med / base:>6.2f}")
    print(f"QASSO all steps        {statistics.mean(sum((times[s] for s in times if s != 'adam'), [])) * 1e3:>8.2f} "
          f"{statistics.mean(sum((times[s] for s in times if s != 'adam'), [])) / statistics.mean(times['adam']):>6.2f} (mean)")


if __name__ == "__main__":
    main()
