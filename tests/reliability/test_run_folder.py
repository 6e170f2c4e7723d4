"""The run folder (geta_onnx/runs.py) through the CLI: a checkpoint is never overwritten
silently, a resume must match the checkpoint's settings, two runs never share a folder,
Ctrl-C exits 130 with a resumable checkpoint, and an interrupted + resumed run ends
bit-identical to an uninterrupted one."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.reliability import files
from tests.reliability.harness import assert_hostile, invoke

CONFIG = "[schedule]\nepochs = 2\n[data]\nbatch_size = 16\n[export]\nrepeats = 1\nbatches = [1]\nplots = false\n"


@pytest.fixture
def problem(tmp_path):
    model = files.good_model(tmp_path)
    data = files.good_npz(tmp_path, model)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    return tmp_path, model, f"npz:{data}", config


def _train(folder, model, spec, config, *extra):
    return ["train", model, "--data", spec, "-o", folder / "run", "--config", config, "--no-progress", *extra]


def _finished(problem) -> Path:
    folder, model, spec, config = problem
    out = invoke(_train(folder, model, spec, config))
    assert out.code == 0, out.stderr
    return folder / "run" / "checkpoint.safetensors"


def test_existing_checkpoint_needs_resume_or_force(problem):
    folder, model, spec, config = problem
    _finished(problem)
    assert_hostile(folder, _train(folder, model, spec, config), 2, mentions=("--resume", "--force"))
    out = assert_hostile(folder, _train(folder, model, spec, config, "--force"), 0, writes=("run",))
    assert "trained" in out.stdout


def test_resume_without_checkpoint_is_refused(problem):
    folder, model, spec, config = problem
    assert_hostile(folder, _train(folder, model, spec, config, "--resume"), 2, mentions=("no checkpoint",))


@pytest.mark.parametrize("change,key", [
    (["--target-sparsity", "0.25"], "prune.target_sparsity"), (["--lr", "0.01"], "optim.lr"),
    (["--seed", "3"], "train.seed"), (["--weight-bits", "6:8"], "quant.weight_bits"),
    (["--batch-size", "8"], "data.batch_size"), (["--epochs", "3"], "schedule.epochs"),
])
def test_resume_with_changed_settings_is_refused(problem, change, key):
    folder, model, spec, config = problem
    _finished(problem)
    assert_hostile(folder, _train(folder, model, spec, config, "--resume", *change), 2, mentions=(key, "--force"))


def test_resume_of_another_model_or_data_is_refused(problem):
    folder, model, spec, config = problem
    _finished(problem)
    other = files.good_npz(folder, model, n=200, name="other.npz")
    assert_hostile(folder, _train(folder, model, f"npz:{other}", config, "--resume"), 2, mentions=("data",))
    proto = model.read_bytes()
    twin = folder / "twin.onnx"
    twin.write_bytes(proto.replace(b"good", b"evil"))  # same weights, another graph name: another file
    assert_hostile(folder, _train(folder, twin, spec, config, "--resume"), 2, mentions=("model_sha256",))


def test_resume_with_same_settings_and_free_ones(problem):
    """A finished run resumes to itself; progress / device are free to change."""
    folder, model, spec, config = problem
    ckpt = _finished(problem)
    before = load_file(str(ckpt))
    out = assert_hostile(folder, _train(folder, model, spec, config, "--resume", "--device", "cpu"), 0, writes=("run",))
    assert "trained" in out.stdout
    after = load_file(str(ckpt))
    assert all((before[k] == after[k]).all() for k in before)


def test_force_resumes_with_new_settings(problem):
    folder, model, spec, config = problem
    _finished(problem)
    assert_hostile(folder, _train(folder, model, spec, config, "--resume", "--force", "--lr", "0.01"), 0,
                   writes=("run",))


def test_second_run_on_a_locked_folder_is_refused(problem):
    folder, model, spec, config = problem
    (folder / "run").mkdir()
    lock = folder / "run" / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's run, as the kernel sees it
    try:
        assert_hostile(folder, _train(folder, model, spec, config), 1, mentions=("in use", "4242"))
    finally:
        os.close(fd)
    lock.unlink()
    assert invoke(_train(folder, model, spec, config)).code == 0  # a stale lock file (no holder) is no obstacle
    assert not lock.exists()


def test_a_failed_run_leaves_its_checkpoint_and_no_lock(problem):
    folder, model, spec, config = problem
    ckpt = _finished(problem)
    digest = ckpt.read_bytes()
    assert_hostile(folder, _train(folder, model, spec, config, "--resume", "--lr", "0.5"), 2)
    assert ckpt.read_bytes() == digest and not (folder / "run" / ".lock").exists()


def _cli(*args) -> list[str]:
    # Ctrl-C's default handler restored: a job started in the background by a non-interactive
    # shell inherits SIGINT ignored, and the test would then see no interruption at all
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from geta_onnx.cli import main; main()"
    return [sys.executable, "-c", code, *map(str, args)]


@pytest.mark.slow
def test_ctrl_c_exits_130_and_resume_is_bit_identical(tmp_path):
    model = files.good_model(tmp_path)
    data = files.good_npz(tmp_path, model, n=640)
    config = tmp_path / "long.toml"
    config.write_text("[schedule]\nepochs = 40\n[data]\nbatch_size = 16\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--data", f"npz:{data}", "--config", config, "--no-progress", "--skip-data-check"]
    reference = subprocess.run(_cli("train", model, "-o", tmp_path / "ref", *common), env=env, capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "cut"
    proc = subprocess.Popen(_cli("train", model, "-o", run, *common), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "checkpoint.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal landed: nothing to test on this machine
        pytest.skip("the run finished before Ctrl-C")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert not (run / ".lock").exists()
    resumed = subprocess.run(_cli("train", model, "-o", run, *common, "--resume"), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "ref" / "checkpoint.safetensors"))
    b = load_file(str(run / "checkpoint.safetensors"))
    model_keys = [k for k in a if k.startswith("/model/")]
    assert model_keys and all((a[k] == b[k]).all() for k in model_keys)
