"""Checkpoints: exact round trips without pickle, atomic writes, clear errors on damaged files."""
import json
import math
import random
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geta_onnx.errors import DataError
from geta_onnx.train import checkpoint


def test_nested_state_round_trips_exactly(tmp_path):
    shared = torch.arange(6.0)
    state = {
        "model": {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16), "ids": torch.arange(3)},
        "ints": {0: {"step": torch.tensor(3.0), "m": shared}, 7: None},  # int keys stay ints
        "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 7], "name": "w", "flag": True}],
        "views": [shared, shared[2:]],  # tensors sharing storage are saved as separate entries
        "odd": {"__tensor__": 1, "inf": math.inf, "big": 2 ** 100},
        "np": np.arange(5, dtype=np.uint32),
    }
    path = checkpoint.save(tmp_path / "c.safetensors", state)
    got = checkpoint.load(path)
    assert list(got["ints"]) == [0, 7] and got["ints"][7] is None
    assert torch.equal(got["model"]["w"], state["model"]["w"]) and got["model"]["b"].dtype == torch.bfloat16
    assert got["groups"][0] == state["groups"][0] and isinstance(got["groups"][0]["betas"], tuple)
    assert torch.equal(got["views"][1], shared[2:]) and got["odd"] == state["odd"]
    assert got["np"].dtype == np.uint32 and np.array_equal(got["np"], state["np"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temp file left behind


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    def make():
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        return net, torch.optim.AdamW(net.parameters(), lr=0.1)

    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    net, opt = make()
    for _ in range(3):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    checkpoint.save(tmp_path / "o.safetensors", {"model": net.state_dict(), "optimizer": opt.state_dict()})
    net2, opt2 = make()
    state = checkpoint.load(tmp_path / "o.safetensors")
    net2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).square().sum().backward()
        o.step()
    assert torch.equal(net.weight, net2.weight) and torch.equal(net.bias, net2.bias)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg_sq"], opt2.state_dict()["state"][0]["exp_avg_sq"])


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    checkpoint.save(tmp_path / "r.safetensors", {"rng": checkpoint.rng_state()})
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.safetensors")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_damaged_or_foreign_files_raise_data_error(tmp_path):
    path = checkpoint.save(tmp_path / "c.safetensors", {"w": torch.randn(100)})
    raw = path.read_bytes()
    cases = {"truncated": raw[:-10], "header_cut": raw[:40], "tiny": b"abc", "random": bytes(range(256)) * 4}
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")  # a safetensors file, not ours
    cases["foreign"] = (tmp_path / "foreign.safetensors").read_bytes()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"'{tmp_path / name}' is truncated or not a geta-onnx checkpoint"):
            checkpoint.load(tmp_path / name)
    with pytest.raises(DataError, match="cannot read"):
        checkpoint.load(tmp_path / "missing.safetensors")
    # a newer format version is refused with its own message
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["geta_onnx"])
    meta["version"] = 99
    header["__metadata__"]["geta_onnx"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    (tmp_path / "v99").write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    with pytest.raises(DataError, match="format version 99"):
        checkpoint.load(tmp_path / "v99")


def test_unsupported_values_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="type object at '/hooks/0/fn'"):
        checkpoint.save(tmp_path / "x.safetensors", {"hooks": [{"fn": object()}]})
    assert not list(tmp_path.iterdir())
