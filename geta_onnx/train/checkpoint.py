"""Training checkpoints without pickle: one safetensors file, written atomically.

The file holds every tensor (model and optimizer state, torch RNG states) as a safetensors
entry, and everything else as JSON in the safetensors header metadata under "geta_onnx":
    {"format": "geta-onnx-checkpoint", "version": 1, "state": <tree>}
The tree mirrors the saved dict; a tensor leaf is {"__tensor__": "<entry name>"}, and types
JSON lacks keep a tag: {"__tuple__": [...]}, {"__dict__": [[key, value], ...]} (dicts whose
keys are not all strings: an optimizer's state is keyed by int), {"__ndarray__": [...],
"dtype": ...} (numpy RNG state). Loading never executes anything from the file.
"""
from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import DataError
from ..io import write_bytes_atomic

FORMAT, VERSION, _KEY = "geta-onnx-checkpoint", 1, "geta_onnx"


# ---- the JSON <-> tree encoding ----------------------------------------------------------------
def _encode(obj, path: str, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()  # clone: no storage shared between entries
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"cannot checkpoint a dict key of type {type(k).__name__} at '{path}'")
        return {"__dict__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at '{path}': state dicts may hold "
                    "tensors, numbers, strings, None, lists, tuples and dicts")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__tuple__" in node:
        return tuple(_decode(v, tensors) for v in node["__tuple__"])
    if "__dict__" in node:
        return {k: _decode(v, tensors) for k, v in node["__dict__"]}
    if "__ndarray__" in node:
        return np.asarray(node["__ndarray__"], dtype=np.dtype(node["dtype"]))
    return {k: _decode(v, tensors) for k, v in node.items()}


# ---- RNG states --------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]  # JSON turned the inner tuple into a tuple already
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- files ---------------------------------------------------------------------------------------
def save(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` (nested dicts / lists / tuples of tensors and plain values) atomically:
    the file is complete or absent, never half-written. Returns the path."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    meta = json.dumps({"format": FORMAT, "version": VERSION, "state": tree})
    path = Path(path)
    write_bytes_atomic(path, st_save(tensors, metadata={_KEY: meta}))
    return path


def read_config(path: str | os.PathLike):
    """The `config` entry of a checkpoint's state (the run's settings record) from its header
    alone, without reading the tensors; DataError on a truncated or foreign file."""
    path = Path(path)
    bad = f"checkpoint '{path}' is truncated or not a geta-onnx checkpoint; delete it and start without resume"
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = f.read(n) if n < 1 << 30 else b""
        meta = json.loads(json.loads(header)["__metadata__"][_KEY])
        if meta.get("format") != FORMAT:
            raise ValueError("wrong format tag")
    except OSError as e:
        raise DataError(f"checkpoint '{path}': cannot read it ({e.strerror})") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of a foreign / damaged file means the same
        raise DataError(f"{bad} ({type(e).__name__})") from None
    config = meta["state"].get("config") if isinstance(meta.get("state"), dict) else None
    return _decode(config, {}) if config is not None else None


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by save(); DataError on a missing, truncated or foreign file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"checkpoint '{path}': cannot read it ({e.strerror}); check the path or start "
                        "without resume") from None
    bad = f"checkpoint '{path}' is truncated or not a geta-onnx checkpoint; delete it and start without resume"
    if len(data) < 8:
        raise DataError(bad)
    (n,) = struct.unpack("<Q", data[:8])  # safetensors: u64 header length, JSON header, raw tensor bytes
    try:
        if n > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8:8 + n])
        meta = json.loads(header["__metadata__"][_KEY])
        if meta.get("format") != FORMAT:
            raise ValueError("wrong format tag")
        tensors = st_load(data)
    except Exception as e:  # noqa: BLE001  any parse failure of a foreign / damaged file means the same
        raise DataError(f"{bad} ({type(e).__name__}: {e})") from None
    if meta.get("version") != VERSION:
        raise DataError(f"checkpoint '{path}' has format version {meta.get('version')}, this geta-onnx reads "
                        f"version {VERSION}; start without resume")
    return _decode(meta["state"], tensors)
