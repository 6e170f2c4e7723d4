"""The benchmark's L1 rows: made once, reused only when every setting is the same."""
from types import SimpleNamespace

from tools.benchmarks import rows


def _fake_steps(monkeypatch, calls):
    def step(name):
        def run(src, *args, **kwargs):
            calls.append(name)
            out = args[3] if name == "finetune" else args[1]  # finetune(src, data, epochs, lr, out)
            open(out, "wb").write(b"onnx")
            return {"seconds": 1.5, **({"reduce_range": bool(kwargs.get("reduce_range"))} if name == "ptq" else {})}
        return run

    monkeypatch.setattr(rows.baselines, "l1_prune", step("prune"))
    monkeypatch.setattr(rows.baselines, "finetune", step("finetune"))
    monkeypatch.setattr(rows.baselines, "ptq_int8", step("ptq"))


def test_l1_rows_reuse_only_the_same_settings(tmp_path, monkeypatch):
    calls = []
    _fake_steps(monkeypatch, calls)
    bench = SimpleNamespace(model=tmp_path / "fp32.onnx", epochs=2, lr=1e-3, finetune_loss="task",
                            ptq_op_types=None, data=None, output=0, calibration=[])
    bench.model.write_bytes(b"fp32 v1")
    made = rows.l1_rows(bench, tmp_path, 1000, "3x", "MACs of geta 3x", log=lambda *_: None)
    assert calls == ["prune", "finetune", "ptq"]
    again = rows.l1_rows(bench, tmp_path, 1000, "3x", "MACs of geta 3x", log=lambda *_: None, reuse=True)
    assert calls == ["prune", "finetune", "ptq"]  # nothing re-run
    assert [r["seconds"] for r in again] == [r["seconds"] for r in made] == [3.0, 4.5]
    rows.l1_rows(bench, tmp_path, 1200, "3x", "MACs of geta 3x", log=lambda *_: None, reuse=True)
    assert calls[3:] == ["prune", "finetune", "ptq"]  # another target: made again
    bench.epochs = 3
    rows.l1_rows(bench, tmp_path, 1200, "3x", "MACs of geta 3x", log=lambda *_: None, reuse=True)
    assert calls[6:] == ["prune", "finetune", "ptq"]  # another epoch count: made again
    bench.model.write_bytes(b"fp32 v2")  # the fp32 original trained again at the same path: made again
    rows.l1_rows(bench, tmp_path, 1200, "3x", "MACs of geta 3x", log=lambda *_: None, reuse=True)
    assert calls[9:] == ["prune", "finetune", "ptq"]


def test_geta_rows_reuse_only_the_same_command_and_defaults(tmp_path, monkeypatch):
    """A geta-onnx row is made again when the package's defaults (its schedule) changed, though
    the command is the same; its row keeps the schedule the run trained with."""
    import json

    runs = []

    def compress(cmd, **kwargs):  # stands in for the geta-onnx subprocess: writes the report
        runs.append(cmd)
        out = cmd[cmd.index("-o") + 1]
        report = {"accuracy": {"original": 0.9, "compressed": 0.89}, "wall_time_s": {"train": 10.0, "export": 1.0},
                  "settings": {"schedule": {"warmup": 0.02, "projection": 0.05, "pruning_start": 0.07,
                                            "pruning": 0.15, "pruning_periods": 5}}}
        open(out.replace(".onnx", ".report.json"), "w").write(json.dumps(report))
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(rows.subprocess, "run", compress)
    bench = SimpleNamespace(model="m.onnx", data_spec="npz:d.npz", epochs=1, batch_size=8, geta_lr=None,
                            geta_config=None, data=SimpleNamespace(has_labels=True))
    made = rows.geta_row(bench, tmp_path, rows.Budget("3x"), log=lambda *_: None)
    assert made["report"]["schedule"] == {"warmup": 0.02, "projection": 0.05, "pruning_start": 0.07, "pruning": 0.15}
    rows.geta_row(bench, tmp_path, rows.Budget("3x"), log=lambda *_: None, reuse=True)
    assert len(runs) == 1  # the same command and defaults: reused
    monkeypatch.setattr(rows, "geta_defaults", lambda: {"schedule": {"warmup": 0.05}})
    rows.geta_row(bench, tmp_path, rows.Budget("3x"), log=lambda *_: None, reuse=True)
    assert len(runs) == 2  # another default schedule: made again


def test_l1_rows_quantize_again_when_the_reduce_range_decision_changed(tmp_path, monkeypatch):
    """An L1 int8 model made full-range (or before reduce_range existed) on a CPU whose int8
    kernels saturate: only the PTQ step is made again, with reduce_range."""
    calls = []
    _fake_steps(monkeypatch, calls)
    monkeypatch.setattr(rows.baselines.weight_range, "int8_saturates", lambda: False)
    bench = SimpleNamespace(model=tmp_path / "fp32.onnx", epochs=2, lr=1e-3, finetune_loss="task",
                            ptq_op_types=None, data=None, output=0, calibration=[])
    bench.model.write_bytes(b"fp32")
    rows.l1_rows(bench, tmp_path, 1000, "3x", "MACs of geta 3x", log=lambda *_: None)
    assert calls == ["prune", "finetune", "ptq"]
    monkeypatch.setattr(rows.baselines.weight_range, "int8_saturates", lambda: True)
    made = rows.l1_rows(bench, tmp_path, 1000, "3x", "MACs of geta 3x", log=lambda *_: None, reuse=True)
    assert calls[3:] == ["ptq"] and made[1]["details"]["ptq"]["reduce_range"] is True
    rows.l1_rows(bench, tmp_path, 1000, "3x", "MACs of geta 3x", log=lambda *_: None, reuse=True)
    assert calls[4:] == []  # the stamp now records it: reused


def test_geta_defaults_name_reduce_range_only_where_it_changes_the_run(monkeypatch):
    from geta_onnx.quant import weight_range

    monkeypatch.setattr(weight_range, "int8_saturates", lambda: False)
    assert "quant" not in rows.geta_defaults()  # the full grid: the run earlier stamps recorded
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: True)
    assert rows.geta_defaults()["quant"] == {"reduce_range": "on"}
