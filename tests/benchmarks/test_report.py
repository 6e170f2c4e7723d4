"""The benchmark page and plot (tools/benchmarks/report.py) from a hand-made result."""
from __future__ import annotations

import tomllib

import pytest

from tools.benchmarks import report
from tools.benchmarks.rows import _toml


def _row(id_, kind, quality, b1, b32, seconds=0.0):
    return {"id": id_, "label": id_, "kind": kind, "path": f"{id_}.onnx", "seconds": seconds,
            "quality": {"metric": "accuracy", "value": quality, "percent": True}, "relative_bops": 0.5,
            "macs": 2_000_000, "size_bytes": 150_000, "latency_ms": {"1": b1, "32": b32},
            "speedup": {"1": 1.0 / b1, "32": 10.0 / b32}, "fusion": {"int8": 3, "float": 0, "detail": {}}}


def _result(quick=True):
    return {"model": "fmnist", "title": "tiny", "quick": quick, "quality_label": "top-1", "command": "python x",
            "environment": report.environment(2), "notes": ["a note"], "skipped": [],
            "latency": {"batches": [1, 32], "threads": 2, "repeats": 10, "warmup": 2, "statistic": "median"},
            "settings": {"epochs": 1, "lr": 1e-3, "batch_size": 32, "finetune_loss": "task", "calibration_samples": 64,
                         "unit": 16},
            "rows": [_row("fp32", "fp32", 0.90, 1.0, 10.0), _row("ptq", "int8", 0.89, 0.5, 3.0, 2.0),
                     {**_row("geta-30", "geta", 0.91, 0.4, 2.5, 100.0), "command": "geta-onnx compress m.onnx"}]}


def test_pareto_front_keeps_only_undominated_points():
    # (latency, quality): the second is dominated by the third (slower and worse)
    pts = [(1.0, 0.90), (0.6, 0.85), (0.5, 0.89), (0.4, 0.80)]
    assert report.pareto_front(pts) == [3, 2, 0]


def test_page_and_plot(tmp_path):
    result = _result()
    text = report.render({"fmnist": result}, "benchmarks")
    assert "| fp32 | 90.00% |" in text and "Smoke run" in text
    assert "![quality vs latency](benchmarks/fmnist_pareto.png)" in text
    assert "geta-onnx compress m.onnx" in text
    assert "Not run yet: `python tools/benchmarks/run.py crepe`" in text
    assert "geta-onnx schedule" not in text  # rows made before their reports' schedule was kept: no claim
    result["rows"][-1]["report"] = {"schedule": {"warmup": 0.02, "projection": 0.05, "pruning_start": 0.07,
                                                 "pruning": 0.15}}
    text = report.render({"fmnist": result}, "benchmarks")
    assert "- geta-onnx schedule: pruning done by 22% of the steps (warm-up 0.02, projection 0.05" in text
    assert "no check read" not in text  # an unguarded row: no unseen-samples line
    exported = {"split": "eval", "samples": 10000, "drop": 0.001, "action": "shipped",
                "unseen": {"samples": 4880, "drop": 0.0031}}
    result["rows"][-1]["report"]["guard"] = {"samples": 5120, "tolerance": 0.005, "exported": exported}
    assert ("- geta-30: its guard's checks scored the first 5120 held-out samples; on the 4880 after them, which no "
            "check read, the drop was +0.0031 (tolerance 0.005)") in report.render({"fmnist": result}, "benchmarks")
    png = tmp_path / "p.png"
    report.pareto_png(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_toml_round_trips():
    sections = {"data": {"resize": True, "mean": (0.485, 0.456, 0.406), "limit": 100}, "train": {"kd": "mse"}}
    back = tomllib.loads(_toml(sections))
    assert back == {"data": {"resize": True, "mean": [0.485, 0.456, 0.406], "limit": 100}, "train": {"kd": "mse"}}


def test_budgets_parse_sparsities_speedups_and_guards():
    from pathlib import Path
    from types import SimpleNamespace

    from tools.benchmarks.rows import Budget, geta_command

    plain, speed, guarded = Budget("0.3"), Budget("3x"), Budget("4.5x@0.005")
    assert (plain.tag, plain.option, plain.guard_option(True)) == ("30", ["--target-sparsity", "0.3"], [])
    assert (speed.tag, speed.option, repr(speed)) == ("3x", ["--target-speedup", "3"], "3x")
    assert guarded.tag == "4p5x_g0p005" and repr(guarded) == "4.5x@0.005" and guarded.label.endswith("guard 0.005")
    assert guarded.guard_option(True) == ["--max-accuracy-drop", "0.005"]
    assert guarded.guard_option(False) == ["--min-fidelity", "0.995"]  # label-free data: fidelity
    bench = SimpleNamespace(model="m.onnx", data_spec="npz:d.npz", epochs=1, batch_size=8, geta_lr=None,
                            geta_config=None, data=SimpleNamespace(has_labels=True))
    cmd, out = geta_command(bench, Path("w"), guarded)
    assert cmd[cmd.index("--max-accuracy-drop") + 1] == "0.005" and out.name == "geta_4p5x_g0p005.onnx"


def test_geta_set_overrides_parse_and_show_on_the_page():
    from tools.benchmarks.run import geta_settings

    sections = geta_settings(["prune.latency_selection=knapsack", "schedule.pruning_periods=6",
                              "train.loss=\"task\"", "data.resize=true"])
    assert sections == {"prune": {"latency_selection": "knapsack"}, "schedule": {"pruning_periods": 6},
                        "train": {"loss": "task"}, "data": {"resize": True}}
    assert tomllib.loads(_toml(sections)) == sections  # what compress's --config file reads back
    for bad in ("latency_selection=knapsack", "prune.latency_selection", ".x=1"):
        with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
            geta_settings([bad])
    result = _result()
    result["settings"]["geta_config"] = {"prune": {"latency_selection": "knapsack"}}
    assert '[prune] latency_selection = "knapsack"' in report.render({"fmnist": result}, "benchmarks")
