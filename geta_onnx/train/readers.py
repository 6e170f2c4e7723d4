"""Readers behind the data specs: npz:FILE[:XKEY,YKEY], idx:DIR, folder:DIR, py:MODULE:FUNCTION.

A reader turns a spec into raw samples and nothing more: `Arrays` (numpy arrays, or a lazy
image list, with a batch axis first) or `Loaders` (ready-made DataLoaders from a py: spec).
Scaling, layout, shape checks and batching live in data.py.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import inspect
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

SCHEMES = ("npz", "idx", "folder", "py")
_USAGE = "expected npz:FILE[:XKEY,YKEY], idx:DIR, folder:DIR or py:MODULE:FUNCTION"
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Arrays:
    """Samples in memory (or lazily on disk); every x has the batch axis first."""

    train_x: dict[str, object]  # model input name (or "x") -> (N, ...) array or ImageFiles
    train_y: np.ndarray | None  # (N,) labels or (N, ...) targets
    eval_x: dict[str, object] | None = None
    eval_y: np.ndarray | None = None
    classes: list[str] | None = None  # class names (folder:)
    channels_last: bool = False  # images stored (N, H, W, C)
    # a validation split beside the eval split, never trained on: what the quality guard scores
    # ([prune] guard_data "auto" / "val"), so the eval split the report scores stays unread by its checks
    val_x: dict[str, object] | None = None
    val_y: np.ndarray | None = None


@dataclass
class Loaders:
    """DataLoaders made by a py: function, used as they are."""

    train: object
    eval: object | None
    num_classes: int | None = None
    val: object | None = None  # a validation loader beside eval (the quality guard's; Arrays.val_x)


def split_spec(spec: str) -> tuple[str, str]:
    """'npz:a.npz' -> ('npz', 'a.npz'); a bare .npz file or directory gets its scheme guessed."""
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in SCHEMES:
        if not rest:
            raise DataError(f"data spec '{spec}': nothing after '{scheme}:'; {_USAGE}")
        return scheme, rest
    path = Path(spec)
    if path.suffix == ".npz":
        return "npz", spec
    if path.is_dir():
        return ("idx", spec) if _find_idx(path, "train", "images") else ("folder", spec)
    hint = f"unknown scheme '{scheme}'" if sep and len(scheme) > 1 else "no such file or directory"
    raise DataError(f"data spec '{spec}': {hint}; {_USAGE}")


def read(spec: str, input_names: list[str], *, seed: int, batch_size: int, image_size: tuple[int, int] | None,
         gray: bool | None) -> Arrays | Loaders:
    scheme, rest = split_spec(spec)
    if scheme == "npz":
        return read_npz(rest, input_names)
    if scheme == "idx":
        return read_idx(rest)
    if scheme == "folder":
        from .images import read_folder

        return read_folder(rest, image_size=image_size, gray=gray)
    return read_py(rest, seed=seed, batch_size=batch_size)


# ---- npz -------------------------------------------------------------------------------
def read_npz(rest: str, input_names: list[str]) -> Arrays:
    path, keys = Path(rest), None
    if not path.exists() and ":" in rest:  # npz:FILE:XKEY,YKEY
        file, _, key_part = rest.rpartition(":")
        path, keys = Path(file), [k.strip() for k in key_part.split(",")]
        if not 1 <= len(keys) <= 2 or not all(keys):
            raise DataError(f"npz:{rest}: keys must be 'XKEY' or 'XKEY,YKEY', got '{key_part}'")
    if not path.is_file():
        raise DataError(f"npz:{rest}: no such file '{path}'")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"npz:{path}: cannot read the file ({e}); write it with numpy.savez") from None
    if keys is not None:
        xkeys, ykey = [keys[0]], (keys[1] if len(keys) == 2 else None)
    elif (len(input_names) > 1 or "x" not in arrays) and input_names and all(n in arrays for n in input_names):
        xkeys, ykey = list(input_names), ("y" if "y" in arrays else None)  # one array per model input, by name
    else:
        xkeys, ykey = ["x"], ("y" if "y" in arrays else None)
    for k in xkeys + ([ykey] if ykey else []):
        if k not in arrays:
            named = f" or after the model's inputs ({', '.join(input_names)})" if input_names else ""
            raise DataError(f"npz:{path}: no array '{k}' (the file has: {', '.join(sorted(arrays)) or 'nothing'}); "
                            f"name the arrays x and y{named}, or give the keys as npz:FILE:XKEY,YKEY")
    names = ["x"] if len(xkeys) == 1 else xkeys  # data.py matches names to model inputs
    x = {n: arrays[k] for n, k in zip(names, xkeys)}
    y = arrays[ykey] if ykey else None
    _check_lengths(f"npz:{path}", x, y)
    # optional held-out splits stored beside: eval_XKEY (and eval_YKEY), and val_XKEY (val_YKEY), a
    # validation split for the quality guard; val_ arrays alone are the eval split
    held = {}
    for split in ("eval", "val"):
        if all(f"{split}_{k}" in arrays for k in xkeys):
            hx = {n: arrays[f"{split}_{k}"] for n, k in zip(names, xkeys)}
            hy = arrays.get(f"{split}_{ykey}") if ykey else None
            _check_lengths(f"npz:{path} ({split}_ arrays)", hx, hy)
            held[split] = (hx, hy)
    eval_x, eval_y = held.pop("eval", None) or held.pop("val", (None, None))
    val_x, val_y = held.get("val", (None, None))
    return Arrays(x, y, eval_x, eval_y, val_x=val_x, val_y=val_y)


def _check_lengths(label: str, x: dict, y) -> None:
    scalar = next((k for k, v in x.items() if np.ndim(v) == 0), None)
    if scalar is not None:
        raise DataError(f"{label}: array '{scalar}' is a scalar; every array holds one entry per sample along its "
                        "first axis. An input fed one value for every sample (e.g. a sample rate) takes it from "
                        f"--input-value {scalar}=VALUE instead")
    n = {k: len(v) for k, v in x.items()}
    if len(set(n.values())) > 1 or (y is not None and len(y) not in n.values()):
        lens = ", ".join(f"{k}: {v}" for k, v in n.items()) + (f", y: {len(y)}" if y is not None else "")
        raise DataError(f"{label}: arrays have different numbers of samples ({lens}); the first axis is the "
                        "sample axis")


# ---- idx (MNIST / Fashion-MNIST files) ------------------------------------------------------
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_idx(folder: Path, split: str, kind: str) -> Path | None:
    rank = 3 if kind == "images" else 1  # train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]
    for name in (f"{split}-{kind}-idx{rank}-ubyte", f"{split}-{kind}.idx{rank}-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def read_idx_file(path: Path) -> np.ndarray:
    """One IDX file: magic 0x0000 | dtype code | rank, then rank big-endian uint32 dims."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"idx: cannot read '{path}' ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"idx: '{path}' is not an IDX file (bad magic number)")
    rank = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(data) - 4 - 4 * rank != need:
        raise DataError(f"idx: '{path}' holds {len(data) - 4 - 4 * rank} bytes of data, its header says {need} "
                        f"(shape {dims}); the file is truncated or corrupt")
    return np.frombuffer(data, dtype, offset=4 + 4 * rank).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(rest: str) -> Arrays:
    folder = Path(rest)
    if not folder.is_dir():
        raise DataError(f"idx:{rest}: no such directory")
    images = _find_idx(folder, "train", "images")
    if images is None:
        raise DataError(f"idx:{rest}: no train-images-idx3-ubyte[.gz] in the folder")
    labels = _find_idx(folder, "train", "labels")
    x, y = read_idx_file(images), (read_idx_file(labels) if labels else None)
    _check_lengths(f"idx:{rest}", {"x": x}, y)
    ex, ey = _find_idx(folder, "t10k", "images"), _find_idx(folder, "t10k", "labels")
    eval_x = read_idx_file(ex) if ex else None
    eval_y = read_idx_file(ey) if ex and ey and y is not None else None
    return Arrays({"x": x}, y, {"x": eval_x} if eval_x is not None else None, eval_y)


# ---- py:MODULE:FUNCTION ------------------------------------------------------------------------
def read_py(rest: str, *, seed: int, batch_size: int) -> Loaders:
    """Calls FUNCTION with whichever of (batch_size, seed) it accepts. It returns
    (train_loader, eval_loader_or_None), a single loader, or {"train", "eval", "val", "num_classes"}
    ("val": a validation loader the quality guard scores, beside "eval")."""
    module_name, _, func_name = rest.rpartition(":")
    if not module_name or not func_name:
        raise DataError(f"py:{rest}: expected py:MODULE:FUNCTION (MODULE dotted or a path to a .py file)")
    try:
        module = _import(module_name, rest)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import: its error, in one line
        raise DataError(f"py:{rest}: importing '{module_name}' failed: {type(e).__name__}: {_first_line(e)}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise DataError(f"py:{rest}: module '{module_name}' has no function '{func_name}'")
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("batch_size", batch_size), ("seed", seed)) if k in params}
    try:
        out = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's function failed: its error, in one line
        raise DataError(f"py:{rest}: {func_name}({', '.join(kwargs)}) raised {type(e).__name__}: {_first_line(e)}; "
                        f"it is called with the keyword arguments batch_size and seed when it takes them") from None
    if out is None:
        raise DataError(f"py:{rest}: {func_name}() returned None; return (train_loader, eval_loader_or_None), a "
                        "loader, or a dict with 'train'")
    num_classes = val = None
    if isinstance(out, dict):
        if "train" not in out:
            raise DataError(f"py:{rest}: the returned dict needs a 'train' loader (has: {', '.join(map(str, out))})")
        train, ev, val, num_classes = out["train"], out.get("eval"), out.get("val"), out.get("num_classes")
        ev, val = (val, None) if ev is None else (ev, val)  # a validation loader alone is the eval split
    elif isinstance(out, (tuple, list)) and len(out) == 2:
        train, ev = out
    else:
        train, ev = out, None
    if train is None:
        raise DataError(f"py:{rest}: {func_name}() gave no train loader (None); return (train_loader, eval_loader)")
    for name, loader in (("train", train), ("eval", ev), ("val", val)):
        if loader is not None and not hasattr(loader, "__iter__"):
            raise DataError(f"py:{rest}: the {name} loader is a {type(loader).__name__}, not an iterable of batches")
    return Loaders(train, ev, num_classes, val)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def _import(module_name: str, rest: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise DataError(f"py:{rest}: no such file '{path}'")
        name = "_geta_data_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]  # stable per file
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling (DataLoader workers) look modules up here
        spec.loader.exec_module(module)
        return module
    cwd_added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if cwd_added:  # console scripts do not put the working directory on sys.path; `python -m` does
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise DataError(f"py:{rest}: cannot import '{module_name}'; give a path to the .py file "
                            "or add its folder to PYTHONPATH") from None
        raise
    finally:
        if cwd_added:
            sys.path.remove(str(Path.cwd()))
