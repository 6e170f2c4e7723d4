"""The hostile corpus: every command against broken models, broken data, bad options, bad
config files and bad output locations (tests/reliability/harness.py says what each case
must hold). Cases are built in code in a fresh folder each; none trains for long."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability import files
from tests.reliability.harness import assert_hostile

FAST = "[schedule]\nsteps = 4\n[data]\nbatch_size = 16\n[export]\nrepeats = 1\nbatches = [1]\nplots = false\n"


def _fast_config(folder: Path) -> Path:
    path = folder / "fast.toml"
    path.write_text(FAST)
    return path


def _problem(folder: Path) -> tuple[Path, str, Path]:
    model = files.good_model(folder)
    data = files.good_npz(folder, model)
    return model, f"npz:{data}", _fast_config(folder)


# ---- broken models through every command -------------------------------------------------------
def _model_args(command: str, model: Path, folder: Path) -> list:
    good = files.good_model(folder, "reference.onnx")
    data = files.good_npz(folder, good)
    config = _fast_config(folder)
    return {
        "inspect": ["inspect", model],
        "verify": ["verify", model],
        "eval": ["eval", model, "--data", f"npz:{data}"],
        "bench": ["bench", model, "--repeats", 1, "--warmup", 0],
        "latency-table": ["latency-table", model, "-o", folder / "table.json", "--batch", 2, "--threads", 1,
                          "--group-divisible", 64, "--no-progress"],
        "train": ["train", model, "--data", f"npz:{data}", "-o", folder / "run", "--config", config, "--no-progress"],
        "compress": ["compress", model, "--data", f"npz:{data}", "-o", folder / "out" / "small.onnx", "--config",
                     config, "--no-progress"],
    }[command]


COMMANDS = ("inspect", "verify", "eval", "bench", "latency-table", "train", "compress")
TRAINING = ("train", "compress")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", files.MODEL_VARIANTS)
def test_broken_model(tmp_path, command, kind):
    model = files.model_variant(tmp_path, kind)
    if command == "inspect" and kind == "unsupported_op":  # inspect's job is to list them
        out = assert_hostile(tmp_path, _model_args(command, model, tmp_path), 0)
        assert "Frobnicate" in out.stdout
        return
    assert_hostile(tmp_path, _model_args(command, model, tmp_path), 1, mentions=(model.name,))


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_model(tmp_path, command):
    model = tmp_path / "absent.onnx"
    assert_hostile(tmp_path, _model_args(command, model, tmp_path), 1, mentions=("absent.onnx",))


UNTRAINABLE = {"hardmax": "Hardmax", "argmax_output": "cls", "no_weights": "no_weights.onnx"}


@pytest.mark.parametrize("command", TRAINING)
@pytest.mark.parametrize("kind", sorted(UNTRAINABLE))
def test_untrainable_model(tmp_path, command, kind):
    """Models that load and run but cannot be trained: said before any step is taken."""
    model = files.model_variant(tmp_path, kind)
    assert_hostile(tmp_path, _model_args(command, model, tmp_path), 1, mentions=(UNTRAINABLE[kind],))


# ---- broken data through the commands that read data --------------------------------------------
DATA_MENTIONS = {  # what the one error line must name: the array, file or function at fault, or the cause
    "strings": "'x'", "complex": "complex", "bool": "bool", "float_labels": "float targets", "labels_2d": "labels",
    "string_labels": "labels", "zero_samples": "no samples", "five_samples": "held-out", "nan_inputs": "nan",
    "inf_inputs": "inf", "labels_out_of_range": "label", "negative_labels": "label", "length_mismatch": "samples",
    "wrong_shape": "shape", "scalar_samples": "shape", "no_x": "'x'", "object_array": "object_array.npz",
    "not_a_zip": "not_a_zip.npz", "eval_shape_mismatch": "eval", "constant_inputs": "same output",
    "random_labels": "chance", "missing_file": "nope.npz", "unknown_scheme": "s3", "empty_spec": "npz:",
    "py_raises": "boom", "py_returns_none": "None", "py_returns_int": "int", "py_empty_loader": "no batch",
    "py_syntax_error": "py_syntax_error.py", "py_bad_batches": "batch", "py_import_error": "not_a_module_anywhere",
    "py_wrong_signature": "data", "py_missing_file": "nope.py", "py_missing_function": "data",
    "folder_empty": "folder_empty", "folder_fake_png": ".png", "folder_no_images": "folder_no_images",
    "idx_truncated": "truncated", "idx_bad_magic": "magic"}
EVAL_MENTIONS = {"float_labels": "targets", "labels_2d": "labels", "five_samples": "samples"}
EVAL_OK = {"random_labels", "constant_inputs", "five_samples"}  # eval scores any data; compress refuses to train on it
TRAIN_OK = {"five_samples"}  # train needs no held-out split (it evaluates when there is one); compress does


@pytest.mark.parametrize("command", ("train", "compress", "eval"))
@pytest.mark.parametrize("kind", files.DATA_VARIANTS)
def test_broken_data(tmp_path, command, kind):
    model, _, config = _problem(tmp_path)
    spec = files.data_variant(tmp_path, model, kind)
    args = {"train": ["train", model, "--data", spec, "-o", tmp_path / "run", "--config", config, "--no-progress"],
            "compress": ["compress", model, "--data", spec, "-o", tmp_path / "small.onnx", "--config", config,
                         "--no-progress"],
            "eval": ["eval", model, "--data", spec]}[command]
    if (command == "eval" and kind in EVAL_OK) or (command == "train" and kind in TRAIN_OK):
        assert_hostile(tmp_path, args, 0)
        return
    mention = EVAL_MENTIONS.get(kind, DATA_MENTIONS[kind]) if command == "eval" else DATA_MENTIONS[kind]
    assert_hostile(tmp_path, args, 1, mentions=(mention,))


# ---- bad options: usage errors, exit 2 ----------------------------------------------------------
BAD_TRAINING_OPTIONS = [
    (["--batch-size", "0"], "batch"), (["--batch-size", "-4"], "batch"), (["--batch-size", "x"], "batch"),
    (["--weight-bits", "9:4"], "weight"), (["--weight-bits", "1:8"], "weight"), (["--weight-bits", "abc"], "weight"),
    (["--weight-bits", "4:40"], "weight"), (["--act-bits", "8:4"], "act"), (["--device", "tpu"], "device"),
    (["--epochs", "0"], "epochs"), (["--epochs", "-1"], "epochs"), (["--steps", "0"], "steps"),
    (["--steps", "-5"], "steps"), (["--lr", "0"], "lr"), (["--lr", "-1"], "lr"), (["--lr", "nan"], "lr"),
    (["--lr", "inf"], "lr"), (["--target-sparsity", "1.5"], "sparsity"), (["--target-sparsity", "-0.1"], "sparsity"),
    (["--target-sparsity", "nan"], "sparsity"), (["--target-bops", "0"], "bops"), (["--target-bops", "2"], "bops"),
    (["--target-sparsity", "0.3", "--target-bops", "0.1"], "one budget"), (["--group-divisible", "0"], "divisible"),
    (["--max-accuracy-drop", "1.5"], "max-accuracy-drop"), (["--min-fidelity", "0"], "fidelity"),
    (["--max-accuracy-drop", "0.01", "--min-fidelity", "0.99"], "one quality guard"),
    (["--target-speedup", "0.5"], "speedup"), (["--target-speedup", "nan"], "speedup"),
    (["--target-latency-ms", "0"], "latency"), (["--target-speedup", "2", "--target-latency-ms", "1"], "one budget"),
    (["--optimizer", "lion"], "optimizer"), (["--seed", "-1"], "seed"), (["--config", "absent.toml"], "absent.toml"),
]


@pytest.mark.parametrize("command", TRAINING)
@pytest.mark.parametrize("extra,mention", BAD_TRAINING_OPTIONS, ids=lambda v: "_".join(v) if isinstance(v, list) else v)
def test_bad_training_option(tmp_path, command, extra, mention):
    model, spec, _ = _problem(tmp_path)
    out = ["-o", tmp_path / "run"] if command == "train" else ["-o", tmp_path / "small.onnx"]
    assert_hostile(tmp_path, [command, model, "--data", spec, *out, "--no-progress", *extra], 2, mentions=(mention,))


BAD_COMPRESS_OPTIONS = [
    (["--batch", "0"], "batch"), (["--batch", "1,x"], "batch"), (["--threads", "0"], "threads"),
    (["--profile", "tflite"], "profile"), (["--eval-limit", "-1"], "eval-limit"),
]


@pytest.mark.parametrize("extra,mention", BAD_COMPRESS_OPTIONS, ids=lambda v: "_".join(v) if isinstance(v, list) else v)
def test_bad_compress_option(tmp_path, extra, mention):
    model, spec, _ = _problem(tmp_path)
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", tmp_path / "s.onnx", *extra], 2,
                   mentions=(mention,))


def test_latency_budget_errors(tmp_path):
    """An unreachable speedup and a broken latency table: one line each, nothing left behind,
    the table file untouched."""
    model, spec, _ = _problem(tmp_path)
    base = ["compress", model, "--data", spec, "-o", tmp_path / "s.onnx", "--no-progress", "--steps", "4"]
    assert_hostile(tmp_path, [*base, "--target-speedup", "1000"], 2, mentions=("out of reach", "1000"))
    table = tmp_path / "table.json"
    table.write_text('{"format": "geta-onnx-latency/1", "target": {}}')
    assert_hostile(tmp_path, [*base, "--target-speedup", "2", "--latency-table", table], 2,
                   mentions=("table.json",))


@pytest.mark.parametrize("command", ("inspect", "verify", "bench"))
@pytest.mark.parametrize("shape", ["x=-1x1x8x8", "x=1x1x0x8", "x", "=1x2", "x=1xax8", "x=", "y=1x1x8x8"])
def test_bad_shape_option(tmp_path, command, shape):
    model = files.good_model(tmp_path)
    assert_hostile(tmp_path, [command, model, "--shape", shape], 2, mentions=("shape",))


GATE_CASES = [
    (["--min-speedup", "-1", "--max-accuracy-drop", "0.01"], 2, "min-speedup"),
    (["--min-speedup", "nan", "--max-accuracy-drop", "0.01"], 2, "min-speedup"),
    (["--min-speedup", "1", "--max-accuracy-drop", "-0.1"], 2, "accuracy-drop"),
    (["--min-speedup", "1", "--max-accuracy-drop", "0.01", "--max-relative-bops", "0"], 2, "bops"),
    (["--min-speedup", "1", "--max-accuracy-drop", "0.01", "--batch", "0"], 2, "batch"),
]


@pytest.mark.parametrize("extra,code,mention", GATE_CASES, ids=lambda v: "_".join(map(str, v)) if isinstance(v, list) else str(v))
def test_bad_gate_option(tmp_path, extra, code, mention):
    report = tmp_path / "r.report.json"
    report.write_text("{}")
    assert_hostile(tmp_path, ["gate", report, *extra], code, mentions=(mention,))


@pytest.mark.parametrize("content,mention", [
    (None, "absent"), ("", "json"), ("not json", "json"), ("[1, 2]", "object"), ('{"speedup": {}}', "missing"),
    (b"\xff\xfe\x00garbage", "json"),
], ids=["missing", "empty", "text", "list", "partial", "binary"])
def test_bad_gate_report(tmp_path, content, mention):
    report = tmp_path / ("absent.json" if content is None else "r.report.json")
    if isinstance(content, bytes):
        report.write_bytes(content)
    elif content is not None:
        report.write_text(content)
    assert_hostile(tmp_path, ["gate", report, "--min-speedup", "1", "--max-accuracy-drop", "0.01"], 1,
                   mentions=(mention,))


# ---- bad config files ---------------------------------------------------------------------------
BAD_CONFIGS = [
    ("bad.toml", b"[optim]\nlr = true\n", "optim.lr"),
    ("bad.toml", b"[optim]\nlr = \"fast\"\n", "optim.lr"),
    ("bad.toml", b"[quant]\nweight_bits = [4]\n", "quant.weight_bits"),
    ("bad.toml", b"[quant]\nweight_bits = \"4:8\"\n", "quant.weight_bits"),
    ("bad.toml", b"[quant]\nweight_bits = [4, \"x\"]\n", "quant.weight_bits"),
    ("bad.toml", b"[data]\nbatch_size = 1.5\n", "data.batch_size"),
    ("bad.toml", b"[data]\nbatch_size = true\n", "data.batch_size"),
    ("bad.toml", b"[prune]\ntarget_sparsity = \"half\"\n", "prune.target_sparsity"),
    ("bad.toml", b"[prune]\nimportance = [1, 2]\n", "prune.importance"),
    ("bad.toml", b"[train]\nprogress = \"yes\"\n", "train.progress"),
    ("bad.toml", b"[train]\nseed = 1.5\n", "train.seed"),
    ("bad.toml", b"[export]\nbatches = 32\n", "export.batches"),
    ("bad.toml", b"[export]\nbatches = [1, 0]\n", "export.batches"),
    ("bad.toml", b"[schedule]\nsteps = -3\n", "schedule.steps"),
    ("bad.toml", b"[optim]\nlr = nan\n", "optim.lr"),
    ("bad.toml", b"[optim]\nlr = inf\n", "optim.lr"),
    ("bad.toml", b"[optimm]\nlr = 0.1\n", "optim"),
    ("bad.toml", b"[optim]\nlrr = 0.1\n", "lr"),
    ("bad.toml", b"[optim]\nlr = \n", "bad.toml"),
    ("bad.toml", b"optim = 3\n", "optim"),
    ("bad.toml", b"\xff\xfe[optim]\n", "utf-8"),
    ("bad.yaml", b"- a\n- b\n", "bad.yaml"),
    ("bad.yaml", b"optim:\n  lr: [1, 2\n", "bad.yaml"),
    ("bad.yaml", b"optim:\n  lr: yes\n", "optim.lr"),
    ("bad.yaml", b"data:\n  mean: 0.5\n", "data.mean"),
    ("bad.json", b"{}", "bad.json"),
]


@pytest.mark.parametrize("name,content,mention", BAD_CONFIGS, ids=[f"{i}-{c[2]}" for i, c in enumerate(BAD_CONFIGS)])
def test_bad_config(tmp_path, name, content, mention):
    model, spec, _ = _problem(tmp_path)
    config = tmp_path / name
    config.write_bytes(content)
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", tmp_path / "s.onnx", "--config", config,
                              "--no-progress"], 2, mentions=(mention,))


def test_config_is_a_directory(tmp_path):
    model, spec, _ = _problem(tmp_path)
    (tmp_path / "conf.toml").mkdir()
    assert_hostile(tmp_path, ["train", model, "--data", spec, "-o", tmp_path / "run", "--config",
                              tmp_path / "conf.toml"], 2, mentions=("conf.toml",))


# ---- outputs that would destroy an input, or cannot be written ----------------------------------
@pytest.mark.parametrize("command", ("inspect", "verify", "eval", "bench"))
def test_json_over_the_input_model(tmp_path, command):
    model, spec, _ = _problem(tmp_path)
    args = {"inspect": ["inspect", model], "verify": ["verify", model], "eval": ["eval", model, "--data", spec],
            "bench": ["bench", model, "--repeats", 1, "--warmup", 0]}[command]
    assert_hostile(tmp_path, [*args, "--json", model], 2, mentions=("--json", "model.onnx"))


@pytest.mark.parametrize("command", ("eval", "bench"))
def test_json_over_the_data_or_reference(tmp_path, command):
    model, spec, _ = _problem(tmp_path)
    ref = files.good_model(tmp_path, "ref.onnx")
    args = {"eval": ["eval", model, "--data", spec, "--reference", ref, "--json", ref],
            "bench": ["bench", model, ref, "--repeats", 1, "--warmup", 0, "--json", ref]}[command]
    assert_hostile(tmp_path, args, 2, mentions=("--json",))


def test_json_over_the_npz(tmp_path):
    model, spec, _ = _problem(tmp_path)
    npz = spec.partition(":")[2]
    assert_hostile(tmp_path, ["eval", model, "--data", spec, "--json", npz], 2, mentions=("--json",))


@pytest.mark.parametrize("alias", ["plain", "symlink", "hardlink", "dotdot"])
def test_output_aliases_the_input(tmp_path, alias):
    model, spec, config = _problem(tmp_path)
    (tmp_path / "sub").mkdir()
    out = {"plain": model, "dotdot": tmp_path / "sub" / ".." / "model.onnx"}.get(alias)
    if alias == "symlink":
        out = tmp_path / "link.onnx"
        out.symlink_to(model)
    elif alias == "hardlink":
        out = tmp_path / "hard.onnx"
        os.link(model, out)
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", out, "--config", config], 2,
                   mentions=("-o",))


def test_output_is_the_external_data(tmp_path):
    model, weights = files.external_model(tmp_path)
    data = files.good_npz(tmp_path, model)
    config = _fast_config(tmp_path)
    target = tmp_path / "weights.onnx"
    os.replace(weights, target)  # external data named like a model, as exporters sometimes do
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "weights.onnx"
    model.write_bytes(proto.SerializeToString())
    assert_hostile(tmp_path, ["compress", model, "--data", f"npz:{data}", "-o", target, "--config", config], 2,
                   mentions=("weights.onnx", "external data"))


@pytest.mark.parametrize("what", ["report_is_model", "report_is_data", "run_is_config"])
def test_side_outputs_alias_an_input(tmp_path, what):
    """OUT.report.json / OUT.run are derived from -o: they must not land on an input either."""
    model, spec, config = _problem(tmp_path)
    if what == "report_is_model":
        victim = tmp_path / "x.report.json"
        victim.write_bytes(model.read_bytes())
        model = victim
        out = tmp_path / "x.onnx"
    elif what == "report_is_data":
        npz = Path(spec.partition(":")[2])
        victim = tmp_path / "d.report.json"
        os.replace(npz, victim)
        spec, out = f"npz:{victim}", tmp_path / "d.onnx"
    else:
        victim = tmp_path / "c.run"
        victim.write_text(config.read_text())
        config, out = victim, tmp_path / "c.onnx"
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", out, "--config", config], 2,
                   mentions=(victim.name,))


def test_run_folder_is_a_file(tmp_path):
    model, spec, config = _problem(tmp_path)
    (tmp_path / "small.run").write_text("I am a file")
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", tmp_path / "small.onnx", "--config", config],
                   1, mentions=("small.run",))


def test_train_out_is_a_file(tmp_path):
    model, spec, config = _problem(tmp_path)
    (tmp_path / "run").write_text("I am a file")
    assert_hostile(tmp_path, ["train", model, "--data", spec, "-o", tmp_path / "run", "--config", config], 2,
                   mentions=("run",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path):
    model, spec, config = _problem(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", ro / "s.onnx", "--config", config], 1,
                       mentions=("ro",))
    finally:
        ro.chmod(0o755)


def test_unwritable_output_location(tmp_path):
    """/proc refuses new files even to root: found before training, not after."""
    model, spec, config = _problem(tmp_path)
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", "/proc/geta/s.onnx", "--config", config], 1,
                   mentions=("/proc",))


def test_output_parent_is_a_file(tmp_path):
    model, spec, config = _problem(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", tmp_path / "afile" / "s.onnx", "--config",
                              config], 2, mentions=("afile",))


@pytest.mark.parametrize("out", ["small.txt", "small", "dir.onnx"])
def test_output_name(tmp_path, out):
    model, spec, config = _problem(tmp_path)
    if out == "dir.onnx":
        (tmp_path / out).mkdir()
    assert_hostile(tmp_path, ["compress", model, "--data", spec, "-o", tmp_path / out, "--config", config], 2,
                   mentions=(out,))


# ---- the controls: the same files, used right, work ----------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_good_inputs_pass(tmp_path, command):
    """Proves the corpus's failures come from what each case breaks, not from the base files."""
    model, spec, config = _problem(tmp_path)
    args = {"inspect": ["inspect", model], "verify": ["verify", model], "eval": ["eval", model, "--data", spec],
            "bench": ["bench", model, "--repeats", 1, "--warmup", 0],
            "latency-table": ["latency-table", model, "-o", tmp_path / "table.json", "--batch", 2, "--threads", 1,
                              "--group-divisible", 64, "--no-progress"],
            "train": ["train", model, "--data", spec, "-o", tmp_path / "run", "--config", config, "--no-progress"],
            "compress": ["compress", model, "--data", spec, "-o", tmp_path / "out" / "small.onnx", "--config", config,
                         "--no-progress"]}[command]
    assert_hostile(tmp_path, args, 0)
    if command == "compress":
        assert (tmp_path / "out" / "small.onnx").is_file() and not (tmp_path / "out" / "small.run" / ".lock").exists()
