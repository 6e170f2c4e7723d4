"""Data-parallel training with torchrun (gloo, 2 CPU processes): identical weights on every rank."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.train.models import blobs, bridged

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_two_ranks_end_with_identical_weights(cnn_path, tmp_path):
    x, y = blobs(64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_worker.py")), str(cnn_path), f"npz:{tmp_path / 'd.npz'}", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert list(w0) == list(w1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between ranks"
    initial = bridged(cnn_path)[1].state_dict()
    assert not torch.equal(w0["params.fc_weight"], initial["params.fc_weight"])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 6
    assert len(r0["seen"]) == len(r1["seen"]) == 6 and r0["seen"] != r1["seen"]  # each rank its own shard
    assert r0["metrics"] == r1["metrics"] and "accuracy" in r0["metrics"]  # eval sums are all-reduced
    assert (tmp_path / "ck" / "checkpoint.safetensors").exists()  # written by rank 0
