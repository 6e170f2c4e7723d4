"""Forward + backward time of the bridged module vs the original PyTorch module.

    python tools/bench_bridge.py [--models resnet,bert] [--batch 32] [--repeats 30] [--threads 2]

Both modules train (train mode, BatchNorm with batch statistics) on the same batch;
the two are timed alternately in one run so machine noise hits both alike, and the
median over repeats is reported with the ratio bridge / original (target <= 1.15).
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
from geta_onnx.graph import from_proto  # noqa: E402
from samples import export_zoo, zoo  # noqa: E402


def _step_time(module: torch.nn.Module, args: list[torch.Tensor], entry) -> float:
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = module(*args)
    out = out[0] if isinstance(out, tuple) else out
    loss = out.float().square().mean()
    loss.backward()
    return time.perf_counter() - start


def bench(name: str, batch: int, repeats: int, exporter: str = "legacy", warmup: int = 3) -> dict:
    entry = zoo.get(name)
    original = entry.build().train()
    proto = export_zoo.export(name, exporter, io.BytesIO())
    bridged = to_torch(from_proto(proto)).train()
    inputs = entry.example_inputs(batch=batch)
    args = list(inputs.values())
    t_orig, t_bridge = [], []
    for i in range(warmup + repeats):
        a = _step_time(original, args, entry)
        b = _step_time(bridged, args, entry)
        if i >= warmup:
            t_orig.append(a)
            t_bridge.append(b)
    mo, mb = statistics.median(t_orig), statistics.median(t_bridge)
    return {"model": f"{name}.{exporter}", "batch": batch, "original_ms": mo * 1e3, "bridge_ms": mb * 1e3, "ratio": mb / mo,
            "onnx_nodes": len(proto.graph.node)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,bert")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exporters", default="legacy,dynamo")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, median of {a.repeats} fwd+bwd steps")
    print(f"{'model':<16} {'nodes':>6} {'original ms':>12} {'bridge ms':>10} {'ratio':>6}")
    for name in a.models.split(","):
        for exporter in a.exporters.split(","):
            r = bench(name, a.batch, a.repeats, exporter)
            print(f"{r['model']:<16} {r['onnx_nodes']:>6} {r['original_ms']:>12.2f} {r['bridge_ms']:>10.2f} "
                  f"{r['ratio']:>6.3f}")


if __name__ == "__main__":
    main()
