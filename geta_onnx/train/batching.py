"""Batches: seeded epoch samplers, datasets indexed by whole batches, and batch layouts.

Our loaders hand the dataset a whole batch of indices at once (BatchSampler as the sampler,
batch_size=None), so an in-memory array is sliced once per batch instead of once per sample.
Shuffling uses a torch.Generator seeded with (seed + epoch): an epoch's order depends only
on the seed and the epoch number, which is what makes a resumed run bit-identical.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from ..errors import DataError
from .transforms import Transform

_TARGET_KEYS = ("y", "label", "labels", "target", "targets")


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, shuffled by torch.randperm with a generator seeded (seed + epoch).
    Each pass advances the epoch; set_epoch() pins it (the loop calls it before every epoch)."""

    def __init__(self, n: int, *, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        self.epoch += 1
        return iter(order)


class ArrayDataset(Dataset):
    """Rows `index` of arrays (in memory or lazy ImageFiles), indexed by a whole batch of
    positions at once: dataset[[i, j, ...]] -> ((x_1, ..., x_k), y) with x_i (B, ...)."""

    def __init__(self, xs: list, y: np.ndarray | None, index: np.ndarray, transforms: list[Transform]):
        self.xs, self.y, self.index, self.transforms = xs, y, index, transforms

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, batch):
        rows = self.index[np.asarray(batch, dtype=np.int64)]
        xs = tuple(t(torch.from_numpy(_native(x[rows]))) for x, t in zip(self.xs, self.transforms))
        if self.y is None:
            return xs, None
        y = torch.from_numpy(_native(self.y[rows]))
        return xs, (y.long() if not y.is_floating_point() else y.float())


def _native(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.byteorder == ">":  # IDX / foreign npz data: torch only takes native byte order
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def set_epoch(loader, epoch: int) -> None:
    """Pin the shuffling epoch of a loader's sampler(s), wherever they sit (ours, torch's
    DistributedSampler, a StridedLoader): an epoch's order then depends on (seed, epoch) only."""
    seen = set()
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for o in (obj, getattr(obj, "sampler", None)):
            if o is not None and id(o) not in seen and callable(getattr(o, "set_epoch", None)):
                seen.add(id(o))
                o.set_epoch(epoch)


class FirstBatches:
    """The first `n` batches of a loader, each time it is iterated. `pinned`: in the order of
    its epoch 0 every time (train.batching.set_epoch), so that a shuffled training loader gives
    the same batches to every guard check: the checks then compare the model, not the batches
    its BatchNorm statistics were refreshed from. A running training epoch keeps its order
    (drawn when the epoch began), and the next epoch pins its own."""

    def __init__(self, loader, n: int, pinned: bool = False):
        self.loader, self.n, self.pinned = loader, n, pinned

    def __iter__(self):
        if self.pinned:
            set_epoch(self.loader, 0)
        return itertools.islice(iter(self.loader), self.n)


def _keep(batch):  # collate_fn: the dataset already returns whole batches
    return batch


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool = False,
                num_workers: int = 0, sampler: Sampler | None = None) -> DataLoader:
    sampler = sampler if sampler is not None else EpochSampler(len(ds), shuffle=shuffle, seed=seed)
    return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                      collate_fn=_keep, num_workers=num_workers)


def split_batch(batch, input_names: list[str],
                label: str = "data") -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Any batch layout -> (inputs in model-input order, target or None); see _split."""
    xs, target = _split(batch, input_names, label)
    for x in (*xs, *([] if target is None else [target])):
        numeric = isinstance(x, torch.Tensor) or (isinstance(x, np.ndarray) and x.dtype.kind in "biuf")
        if not numeric:
            raise DataError(f"{label}: a batch holds a {type(x).__name__}, not a tensor; yield torch tensors or numpy "
                            "arrays of numbers")
    return xs, target


def _split(batch, input_names: list[str], label: str):
    """Any batch layout -> (inputs in model-input order, target or None). Accepted: x;
    (x, y); (x1, ..., xk[, y]); ((x1, ..., xk), y); {input name: x, ..., "y" | "label": y}."""
    k = len(input_names)
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, dict):
        if all(n in batch for n in input_names):
            xs = tuple(batch[n] for n in input_names)
        elif k == 1 and ("x" in batch or "input" in batch):
            xs = (batch.get("x", batch.get("input")),)
        else:
            raise DataError(f"{label}: a batch dict needs the keys {', '.join(input_names)} "
                            f"(got {', '.join(map(str, batch))})")
        return xs, next((batch[t] for t in _TARGET_KEYS if t in batch), None)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and isinstance(batch[0], (tuple, list)):
            return tuple(batch[0]), batch[1]
        if len(batch) == k:
            return tuple(batch), None
        if len(batch) == k + 1:
            return tuple(batch[:k]), batch[k]
        raise DataError(f"{label}: a batch of {len(batch)} items does not fit a model with {k} input(s); "
                        "yield (inputs..., target) or a dict keyed by input name")
    raise DataError(f"{label}: cannot read a batch of type {type(batch).__name__}; yield tensors, tuples or dicts")
