"""Data specs -> seeded train / eval DataLoaders fitted to the model's inputs.

    data = load_data("idx:/usr/share/datasets/fashion-mnist", DataConfig(batch_size=128), model=onnx_model)
    for inputs, target in data.train: ...   # inputs: tuple, one (N, ...) tensor per model input

Specs (readers.py): npz:FILE[:XKEY,YKEY], idx:DIR, folder:DIR, py:MODULE:FUNCTION.
Fitting raw samples to the model input: transforms.py; samplers and batch layouts: batching.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from ..config import DataConfig
from ..errors import DataError
from .batching import ArrayDataset, make_loader, set_epoch, split_batch
from .readers import Arrays, Loaders, read
from .transforms import InputSpec, fmt_shape, matches, plan

__all__ = ["Data", "load_data", "model_inputs", "set_epoch", "split_batch"]

# at most this share of the training split is held out for the quality guard (the rest trains)
GUARD_SHARE = 0.25


@dataclass
class Data:
    """Train / eval loaders and what the loss and the report need to know about them."""

    train: DataLoader
    eval: DataLoader | None
    has_labels: bool
    num_classes: int | None  # integer labels: max label + 1 (folder: number of class folders)
    sample_shape: tuple[int, ...]  # one sample of the first input, as fed to the model (no batch axis)
    spec: str
    n_train: int | None = None  # samples (None: unknown, py: loaders)
    n_eval: int | None = None
    classes: list[str] | None = None
    # training samples held out for the quality guard's checks (load_data's guard_samples), never trained on
    guard: DataLoader | None = None
    n_guard: int = 0
    # a validation split stored beside the eval split (npz val_ arrays, a folder's val/ beside test/):
    # what the quality guard scores by default, so its checks leave the eval split unread
    val: DataLoader | None = None
    n_val: int = 0

    @property
    def samples(self) -> int | None:
        """Distinct samples the loaders hold (training + held-out); None when unknown (py:)."""
        return self.n_train + (self.n_eval or 0) + self.n_guard + self.n_val if self.n_train else None

    def shard(self, rank: int, world: int) -> Data:
        """This rank's share for data-parallel training (distributed.shard_loader): its slice
        of every global batch of our own datasets, every world-th batch of a py: loader."""
        from .distributed import shard_loader

        train = shard_loader(self.train, rank, world, train=True)
        eval_ = None if self.eval is None else shard_loader(self.eval, rank, world, train=False)
        # the guard's held-out samples (and the validation split) stay whole: every rank's check scores all
        # of them and decides the same
        return dataclasses.replace(self, train=train, eval=eval_)


def model_inputs(model) -> list[InputSpec]:
    """InputSpecs of an OnnxModel's graph inputs (shape without the batch axis)."""
    specs = []
    for vi in model.inputs:
        info = model.info(vi.name)
        shape = tuple(info.shape[1:]) if info is not None and info.shape else None
        specs.append(InputSpec(vi.name, shape, info.np_dtype if info is not None else np.dtype(np.float32)))
    return specs


def load_data(spec: str, config: DataConfig = DataConfig(), *, model=None, seed: int = 0,
              guard_samples: int = 0) -> Data:
    """Read `spec`, fit it to `model` (an OnnxModel; None: no shape check) and batch it.
    `guard_samples` > 0: that many training samples (seeded, at most GUARD_SHARE of the training
    split) are held out as `Data.guard` for the quality guard's checks and never trained on."""
    wants = model_inputs(model) if model is not None else None
    names = [w.name for w in wants] if wants else ["x"]
    size, gray = _image_hints(wants, config)
    src = read(spec, names, seed=seed, batch_size=config.batch_size, image_size=size, gray=gray)
    if isinstance(src, Loaders):
        if guard_samples:
            raise DataError(f"data spec '{spec}': a py: loader's samples cannot be held out for the quality guard "
                            "([prune] guard_data = \"train\"); use guard_data = \"eval\", or an npz / idx / "
                            "folder spec")
        return _from_loaders(spec, src, names, wants)
    return _from_arrays(spec, src, names, wants, config, seed, guard_samples)


def _image_hints(wants, config):
    """(H, W) to resize folder images to and whether to read them gray, from a (C, H, W) input."""
    if not wants or wants[0].shape is None or len(wants[0].shape) != 3:
        return None, None
    c, h, w = wants[0].shape
    size = (h, w) if config.resize and isinstance(h, int) and isinstance(w, int) else None
    return size, (True if c == 1 else False if c == 3 else None)


def _from_arrays(spec: str, src: Arrays, names: list[str], wants, cfg: DataConfig, seed: int,
                 guard_samples: int = 0) -> Data:
    if len(src.train_x) != len(names):
        raise DataError(f"data spec '{spec}': the model has {len(names)} inputs ({', '.join(names)}); store one "
                        "array per input in the npz file, named like the inputs")
    keys = names if len(names) > 1 else ["x"]  # readers key multi-input arrays by input name
    xs = [src.train_x[k] for k in keys]
    _check_arrays(spec, keys, xs, src.train_y, "")
    for split_x, split_y, prefix in ((src.eval_x, src.eval_y, "eval_"), (src.val_x, src.val_y, "val_")):
        if split_x is not None:
            _check_arrays(spec, keys, [split_x[k] for k in keys], split_y, prefix)
    transforms = []
    for i, (x, k) in enumerate(zip(xs, keys)):
        want = wants[i] if wants else None
        vr = _value_range(x) if cfg.scale == "unit" else None
        transforms.append(plan(f"data spec '{spec}' ({k})", tuple(x.shape[1:]), x.dtype, want, cfg,
                               channels_last=src.channels_last, value_range=vr))
    rng = np.random.default_rng(seed)
    n = len(xs[0])
    train_idx = np.arange(n)
    if cfg.limit and cfg.limit < n:  # a seeded random subset (folders are sorted by class)
        train_idx = np.sort(rng.permutation(n)[:cfg.limit])
    eval_xs, eval_y, eval_idx = None, None, None
    if src.eval_x is not None:
        eval_xs, eval_y, eval_idx = _stored_split(spec, keys, xs, src.eval_x, src.eval_y, "eval", cfg.limit, rng)
    elif cfg.val_split > 0:  # hold out a seeded fraction of the training samples
        n_val = int(round(len(train_idx) * cfg.val_split))
        if 0 < n_val < len(train_idx):
            perm = rng.permutation(train_idx)
            train_idx, eval_idx = np.sort(perm[n_val:]), np.sort(perm[:n_val])
            eval_xs, eval_y = xs, src.train_y
    val = None
    if src.val_x is not None:  # its own seeded draw under --limit: the eval split's stays as without it
        val_xs, val_y, val_idx = _stored_split(spec, keys, xs, src.val_x, src.val_y, "val", cfg.limit,
                                               np.random.default_rng([seed, 2]))
        val = ArrayDataset(val_xs, val_y, val_idx, transforms)
    train_idx, guard_idx = _hold_out(spec, train_idx, guard_samples, seed)
    y = src.train_y
    train = ArrayDataset(xs, y, train_idx, transforms)
    eval_ = ArrayDataset(eval_xs, eval_y, eval_idx, transforms) if eval_xs is not None else None
    guard = ArrayDataset(xs, y, guard_idx, transforms) if guard_idx is not None else None
    ebs = cfg.eval_batch_size or cfg.batch_size
    num_classes = len(src.classes) if src.classes else _num_classes(spec, y, eval_y, src.val_y)
    bs = cfg.batch_size
    return Data(
        train=make_loader(train, bs, shuffle=cfg.shuffle, seed=seed, drop_last=cfg.drop_last,
                          num_workers=cfg.num_workers),
        eval=make_loader(eval_, ebs, shuffle=False, seed=seed, num_workers=cfg.num_workers)
        if eval_ is not None else None,
        has_labels=y is not None, num_classes=num_classes, sample_shape=transforms[0].out_shape, spec=spec,
        n_train=len(train), n_eval=len(eval_) if eval_ is not None else 0, classes=src.classes,
        guard=make_loader(guard, ebs, shuffle=False, seed=seed, num_workers=cfg.num_workers)
        if guard is not None else None, n_guard=len(guard) if guard is not None else 0,
        val=make_loader(val, ebs, shuffle=False, seed=seed, num_workers=cfg.num_workers) if val is not None else None,
        n_val=len(val) if val is not None else 0)


def _stored_split(spec: str, keys: list[str], xs: list, split_x: dict, split_y, name: str, limit: int, rng):
    """(arrays, labels, indices) of a held-out split stored beside the training samples (the
    eval or validation split): the same per-sample shapes (one transform plan serves every
    split), all of its samples or a seeded `limit` of them."""
    split_xs = [split_x[k] for k in keys]
    for sx, x, k in zip(split_xs, xs, keys):
        if tuple(sx.shape[1:]) != tuple(x.shape[1:]):
            raise DataError(f"data spec '{spec}': {name} samples of '{k}' have shape {tuple(sx.shape[1:])}, "
                            f"train samples {tuple(x.shape[1:])}")
    m = len(split_xs[0])
    return split_xs, split_y, np.sort(rng.permutation(m)[:limit]) if limit and limit < m else np.arange(m)


def _hold_out(spec: str, train_idx: np.ndarray, wanted: int, seed: int):
    """(training indices, guard indices or None): `wanted` training samples held out for the
    quality guard, at most GUARD_SHARE of them, drawn by their own seeded generator (the eval
    split's draw stays as without them)."""
    if wanted <= 0:
        return train_idx, None
    n = min(int(wanted), int(len(train_idx) * GUARD_SHARE))
    if n < 1:
        raise DataError(f"data spec '{spec}': {len(train_idx)} training samples are too few to hold any out for the "
                        "quality guard ([prune] guard_data = \"train\"); use guard_data = \"eval\"")
    perm = np.random.default_rng([seed, 1]).permutation(train_idx)
    return np.sort(perm[n:]), np.sort(perm[:n])


def _check_arrays(spec: str, keys: list[str], xs: list, y, prefix: str) -> None:
    """Samples a model can be fed and labels a loss can read, or a DataError naming the array."""
    for k, x in zip(keys, xs):
        if not isinstance(x, np.ndarray):  # lazy images (folder:): uint8 by construction
            continue
        if len(x) == 0:
            raise DataError(f"data spec '{spec}': '{prefix}{k}' holds no samples")
        if x.ndim < 2:
            raise DataError(f"data spec '{spec}': '{prefix}{k}' has shape {x.shape}; store samples with the sample "
                            "axis first, e.g. (N, C, H, W)")
        if x.dtype.kind not in "fiu":
            raise DataError(f"data spec '{spec}': '{prefix}{k}' holds {x.dtype} values; store real numbers "
                            "(float32 images or features, integer token ids)")
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x)
            if bad.any():
                n = int(bad.reshape(len(x), -1).any(1).sum())
                kind = "NaN" if np.isnan(x).any() else "inf"
                raise DataError(f"data spec '{spec}': '{prefix}{k}' has {kind} values in {n} sample(s) (first: "
                                f"sample {int(np.argwhere(bad)[0][0])}); clean or drop them")
    if y is None:
        return
    if y.dtype.kind not in "fiu":
        raise DataError(f"data spec '{spec}': labels '{prefix}y' hold {y.dtype} values; store class indices as "
                        "integers (int64), or float targets for regression")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"data spec '{spec}': targets '{prefix}y' have NaN / inf values; clean or drop them")
    if y.dtype.kind in "iu" and y.ndim != 1:
        raise DataError(f"data spec '{spec}': integer labels '{prefix}y' have shape {y.shape}; class labels are one "
                        "index per sample, shape (N,) (not one-hot)")


def _value_range(x) -> tuple[float, float]:
    if not isinstance(x, np.ndarray):  # lazy images: uint8
        return 0.0, 255.0
    return float(x.min()), float(x.max())


def _num_classes(spec: str, *labels) -> int | None:
    ys = [y for y in labels if y is not None]
    if not ys or ys[0].dtype.kind not in "iu" or ys[0].ndim != 1:
        return None
    if min(int(y.min()) for y in ys if len(y)) < 0:
        raise DataError(f"data spec '{spec}': labels must be class indices >= 0; found negative labels")
    return max(int(y.max()) for y in ys if len(y)) + 1


def _from_loaders(spec: str, src: Loaders, names: list[str], wants) -> Data:
    """py: loaders are used as they are; one batch is read to learn the shapes and check them."""
    try:
        first = next(iter(src.train))
    except StopIteration:
        raise DataError(f"data spec '{spec}': the train loader yields no batches") from None
    inputs, target = split_batch(first, names, spec)
    for i, x in enumerate(inputs):
        want = wants[i] if wants else None
        if want is not None and want.shape is not None:
            if not matches(tuple(x.shape[1:]), want.shape):
                raise DataError(f"data spec '{spec}': batches of shape {fmt_shape(tuple(x.shape[1:]))} cannot "
                                f"feed model input '{want.name}' of shape {fmt_shape(want.shape)}; "
                                "fix the shapes in the loader")
    dataset = getattr(src.train, "dataset", None)
    n_train = len(dataset) if hasattr(dataset, "__len__") else None
    return Data(train=src.train, eval=src.eval, has_labels=target is not None, num_classes=src.num_classes,
                sample_shape=tuple(inputs[0].shape[1:]), spec=spec, n_train=n_train, val=src.val)
