"""The rows of one benchmark, each made and timed on its own:

    fp32            the original
    ptq             onnxruntime static int8 PTQ of the original
    l1-S            L1 structured pruning to the MACs of geta-onnx at budget S, fine-tuned
                    the same epochs (fp32; shown so pruning and quantization can be told apart)
    l1-S+ptq        ... then int8 PTQ: the multi-stage pipeline
    geta-S          `geta-onnx compress --target-sparsity S` (one run: pruning + mixed-precision QAT),
                    or `--target-speedup X` for a budget written "Xx" (e.g. 3x); a budget written
                    "B@T" (e.g. 4.5x@0.005) adds the quality guard: --max-accuracy-drop T, or
                    --min-fidelity 1-T for label-free data (docs/guard.md)

A row is a dict: {"id", "label", "path", "kind", "seconds" (wall time of the compression
itself, 0 for fp32), "details" (what the step returned), "command" (geta rows)}.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from geta_onnx.quant import weight_range

from . import baselines
from .models import Bench


def row(id_: str, label: str, path: Path, kind: str, seconds: float = 0.0, **extra) -> dict:
    return {"id": id_, "label": label, "path": str(path), "kind": kind, "seconds": seconds, **extra}


def fp32_row(bench: Bench) -> dict:
    return row("fp32", "fp32 original", bench.model, "fp32")


def ptq_row(bench: Bench, work: Path) -> dict:
    out = work / "ptq_int8.onnx"
    info = baselines.ptq_int8(bench.model, bench.calibration, out, op_types=bench.ptq_op_types)
    return row("ptq", "int8 PTQ (onnxruntime)", out, "int8", info["seconds"], details=info)


class Budget:
    """One geta-onnx budget of the benchmark: "0.3" (group sparsity) or "3x" (predicted speedup),
    optionally guarded: "3x@0.005" (a quality-guard tolerance of 0.005)."""

    def __init__(self, text: str):
        text, _, guard = str(text).strip().partition("@")
        self.speedup = text.lower().endswith("x")
        self.value = float(text[:-1] if self.speedup else text)
        self.guard = float(guard) if guard else None

    @property
    def tag(self) -> str:  # file-safe: geta_30, geta_3x, geta_4p5x_g0p005
        tag = f"{self.value:g}x".replace(".", "p") if self.speedup else str(round(self.value * 100))
        return tag if self.guard is None else f"{tag}_g{self.guard:g}".replace(".", "p")

    @property
    def label(self) -> str:
        label = f"{self.value:g}x target" if self.speedup else f"{self.value:.0%} groups"
        return label if self.guard is None else f"{label}, guard {self.guard:g}"

    def guard_option(self, has_labels: bool) -> list[str]:
        if self.guard is None:
            return []
        return ["--max-accuracy-drop", f"{self.guard:g}"] if has_labels else ["--min-fidelity", f"{1 - self.guard:g}"]

    @property
    def option(self) -> list[str]:
        return ["--target-speedup", f"{self.value:g}"] if self.speedup else ["--target-sparsity", f"{self.value:g}"]

    def __repr__(self) -> str:
        text = f"{self.value:g}x" if self.speedup else f"{self.value:g}"
        return text if self.guard is None else f"{text}@{self.guard:g}"


def geta_command(bench: Bench, work: Path, budget: Budget) -> tuple[list[str], Path]:
    """The exact `geta-onnx compress` command of one budget (and its output model)."""
    out = work / f"geta_{budget.tag}.onnx"
    exe = Path(sys.executable).with_name("geta-onnx")
    cmd = [str(exe) if exe.exists() else "geta-onnx", "compress", str(bench.model), "--data", bench.data_spec,
           "-o", str(out), *budget.option, "--epochs", str(bench.epochs), "--no-progress",
           "--batch-size", str(bench.batch_size), "--force"]  # a benchmark row is a fresh run, even in a used folder
    cmd += budget.guard_option(bench.data.has_labels)
    if bench.geta_lr is not None:
        cmd += ["--lr", f"{bench.geta_lr:g}"]
    if bench.geta_config:
        config = work / "geta_config.toml"
        config.write_text(_toml(bench.geta_config))
        cmd += ["--config", str(config)]
    return cmd, out


def geta_row(bench: Bench, work: Path, budget: Budget, log=print, reuse: bool = False) -> dict:
    """Run geta-onnx compress as a subprocess (as a user would) and read its report.
    reuse: keep an earlier run's output when it was made by the very same command."""
    cmd, out = geta_command(bench, work, budget)
    stamp = out.with_suffix(".cmd.json")
    report_path = out.with_suffix(".report.json")
    key = {"command": cmd, "defaults": geta_defaults()}
    earlier = _earlier(stamp, "key", key, (report_path,)) if reuse else None
    if earlier is not None:
        log("  reusing the output of the same command: " + str(out))
        total = earlier["seconds"]
    else:
        log("$ " + shlex.join(cmd))
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        total = time.perf_counter() - start
        (work / f"geta_{budget.tag}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"geta-onnx compress failed (exit {proc.returncode}):\n{tail}")
        stamp.write_text(json.dumps({"key": key, "seconds": total}))
    report = json.loads(report_path.read_text())
    return row(f"geta-{budget.tag}", f"geta-onnx {budget.label}", out, "geta",
               compression_seconds(report, total), command=_display(cmd), command_seconds=total,
               report=_report_summary(report))


def _earlier(stamp: Path, key: str, value, outputs) -> dict | None:
    """The stamp (JSON) of an earlier run whose `key` (its command, or its settings) equals
    `value`, when every one of its `outputs` is still there; else None: the rows are made again."""
    if not stamp.is_file() or not all(p.is_file() for p in outputs):
        return None
    earlier = json.loads(stamp.read_text())
    return earlier if earlier.get(key) == value else None


def group_sparsity(report: dict) -> float:
    """The group sparsity a geta-onnx compress report reached."""
    return report["groups"]["removed"] / report["groups"]["prunable"]


def given_geta_row(out: Path, report: dict) -> dict:
    """A geta-onnx compress output made earlier (run.py --geta-onnx) with its loaded report,
    which gives the sparsity, the settings and the compression time."""
    s = group_sparsity(report)
    return row(f"geta-{round(s * 100)}", f"geta-onnx {s:.0%} groups", out, "geta",
               compression_seconds(report, 0.0), command=f"geta-onnx compress (given: {out}; settings in its report)",
               report=_report_summary(report), settings=report.get("settings", {}))


def compression_seconds(report: dict, fallback: float) -> float:
    """Training + export seconds of a geta-onnx report (its own validation excluded, as the
    other rows' measurements are); wall_time_s is a number or {"train", "export", ...}."""
    wall = report.get("wall_time_s")
    if isinstance(wall, dict):
        return float(wall.get("train", 0.0)) + float(wall.get("export", 0.0)) or float(wall.get("total", fallback))
    return float(wall) if wall else fallback


def l1_rows(bench: Bench, work: Path, target_macs: int, tag: str, what: str, unit: int = 16,
            log=print, reuse: bool = False) -> list[dict]:
    """L1 prune to target_macs, fine-tune bench.epochs, then int8 PTQ: two rows (fp32 and int8),
    the int8 row timed over all three steps. `tag` names the files and rows (file-safe),
    `what` says in words where the target comes from. reuse: keep the three models of an earlier
    run with the very same settings and fp32 model (the stamp l1_TAG.cmd.json holds them, the
    model's SHA-256 and the steps' figures)."""
    pruned, tuned, int8 = (work / f"l1_{tag}{s}.onnx" for s in ("_pruned", "_ft", "_ft_int8"))
    stamp = work / f"l1_{tag}.cmd.json"
    settings = {"model": str(bench.model), "model_sha256": hashlib.sha256(Path(bench.model).read_bytes()).hexdigest(),
                "target_macs": int(target_macs), "unit": unit, "epochs": bench.epochs,
                "lr": bench.lr, "loss": bench.finetune_loss, "ptq_op_types": bench.ptq_op_types}
    earlier = _earlier(stamp, "settings", settings, (pruned, tuned, int8)) if reuse else None
    if earlier is not None:
        log(f"  reusing the L1 models of the same settings: {tuned}")
        prune, tune, quant = earlier["prune"], earlier["finetune"], earlier["ptq"]
        reduce_range = weight_range.int8_saturates()
        if quant.get("reduce_range", False) != reduce_range:  # PTQ alone again: onnxruntime's reduce_range
            log(f"  quantizing {tuned} again with reduce_range = {reduce_range} (this CPU's int8 kernels)")
            quant = baselines.ptq_int8(tuned, bench.calibration, int8, op_types=bench.ptq_op_types,
                                       reduce_range=reduce_range)
            stamp.write_text(json.dumps({"settings": settings, "prune": prune, "finetune": tune, "ptq": quant}))
    else:
        prune = baselines.l1_prune(bench.model, target_macs, pruned, unit=unit)
        teacher = bench.model if bench.finetune_loss != "task" else None
        tune = baselines.finetune(pruned, bench.data, bench.epochs, bench.lr, tuned, loss=bench.finetune_loss,
                                  teacher_path=teacher, output=bench.output)
        quant = baselines.ptq_int8(tuned, bench.calibration, int8, op_types=bench.ptq_op_types)
        stamp.write_text(json.dumps({"settings": settings, "prune": prune, "finetune": tune, "ptq": quant}))
    steps = prune["seconds"] + tune["seconds"]
    details = {"prune": prune, "finetune": tune}
    return [row(f"l1-{tag}", f"L1 prune + FT (fp32), {what}", tuned, "l1", steps, details=details),
            row(f"l1-{tag}+ptq", f"L1 prune + FT + int8 PTQ, {what}", int8, "l1-int8",
                steps + quant["seconds"], details={**details, "ptq": quant})]


SCHEDULE_KEYS = ("warmup", "projection", "pruning_start", "pruning")  # the stage fractions a row keeps


def _report_summary(report: dict) -> dict:
    keys = ("accuracy", "fidelity", "latency_ms", "speedup", "relative_bops", "macs", "size_bytes", "group_sparsity",
            "wall_time_s", "groups", "latency_model", "guard")
    schedule = report.get("settings", {}).get("schedule")  # the stage fractions the run trained with
    return {**{k: report[k] for k in keys if k in report},
            **({"schedule": {k: schedule[k] for k in SCHEDULE_KEYS}} if schedule else {})}



def geta_defaults() -> dict:
    """The settings geta-onnx compress takes when the command gives none (geta_onnx.config): an
    earlier output is reused only when they are the same, since a changed default (the schedule)
    changes the run that the same command makes. [quant] reduce_range "auto" is such a default
    where this CPU's int8 kernels saturate (it then trains 7-bit weights, docs/deployment.md):
    recorded only then, so outputs made where it decides "off" (the full grid, as before it
    existed) stay reusable."""
    from geta_onnx.config import ScheduleConfig

    return {"schedule": dataclasses.asdict(ScheduleConfig()),
            **({"quant": {"reduce_range": "on"}} if weight_range.int8_saturates() else {})}


def _display(cmd: list[str]) -> str:
    """The command as a reader would type it: paths relative to the repo, `geta-onnx` bare."""
    root = Path(__file__).resolve().parents[2]

    def rel(part: str) -> str:
        scheme, sep, rest = part.partition(":")
        if sep and scheme in ("npz", "idx", "folder"):
            return f"{scheme}:{rel(rest)}"
        p = Path(part)
        return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else part

    return shlex.join(["geta-onnx"] + [rel(p) for p in cmd[1:]])


def _toml(sections: dict) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, (list, tuple)):
                v = "[" + ", ".join(repr(float(x)) if isinstance(x, float) else str(x) for x in v) + "]"
            elif isinstance(v, str):
                v = json.dumps(v)
            lines.append(f"{k} = {v}")
        lines.append("")
    return "\n".join(lines)
