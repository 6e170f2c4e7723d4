"""Data-parallel training across processes started by torchrun.

    torchrun --standalone --nproc_per_node=2 my_script.py      # my_script calls train(...)

train() calls init() itself when torchrun's environment is present: gloo on CPU, nccl on CUDA
(one GPU per local rank). The module is wrapped in DistributedDataParallel (gradients are
averaged, so every rank applies the same update and the weights stay identical), our own
datasets are split with a DistributedSampler seeded (seed, epoch), and only rank 0 writes
checkpoints and shows progress. Entry points end with clean_exit(): with gloo on CPU a
plain interpreter exit aborts (SIGABRT) 10-25 % of the time; destroying the process group,
flushing and os._exit(0) does not (assets.md).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """True inside a multi-process torchrun launch (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (MASTER_ADDR / RANK / WORLD_SIZE); a no-op
    for a single process or when already initialised."""
    if not launched() or dist.is_initialized():
        return info()
    if not dist.is_available():
        raise ConfigError("torchrun launched several processes but this torch build has no torch.distributed")
    cuda = device.startswith("cuda")
    if cuda:  # one GPU per process: local rank r drives cuda:r
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return info()


def device_for(device: str, rank_info: DistInfo) -> torch.device:
    """The torch.device this process trains on; ConfigError when CUDA is asked for but absent."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"option 'device': '{device}' asked for but torch sees no CUDA GPU; use --device cpu")
        if rank_info.enabled:
            return torch.device("cuda", rank_info.local_rank)
    return torch.device(device)


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module`, which keeps its own parameters (optimizers
    built on module.parameters() stay valid)."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


class _RankSlice(Sampler[int]):
    """Indices rank, rank + world, ... of 0..n-1: an eval shard without DistributedSampler's
    padding, so every sample is counted exactly once across ranks."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))


class StridedLoader:
    """Batches rank, rank + world, ... of a loader we cannot re-sample (py: specs). With
    even=True every rank gets len(loader) // world batches (DDP needs equal step counts)."""

    def __init__(self, loader, rank: int, world: int, even: bool):
        self.loader, self.rank, self.world, self.even = loader, rank, world, even

    def __len__(self) -> int:
        n = len(self.loader)
        return n // self.world if self.even else len(range(self.rank, n, self.world))

    def set_epoch(self, epoch: int) -> None:
        from .batching import set_epoch

        set_epoch(self.loader, epoch)

    def __iter__(self):
        limit = len(self)
        taken = 0
        for i, batch in enumerate(self.loader):
            if taken >= limit:
                break
            if i % self.world == self.rank:
                taken += 1
                yield batch


def shard_loader(loader, rank: int, world: int, *, seed: int = 0, train: bool = True):
    """This rank's share of `loader`. Training: a DistributedSampler(seed) over our own datasets
    (padded so every rank takes the same number of steps); eval: a padding-free slice."""
    from .batching import ArrayDataset, make_loader

    if isinstance(loader, DataLoader) and isinstance(loader.dataset, ArrayDataset):
        ds, bs = loader.dataset, loader.sampler  # our loaders: batch_size=None, sampler = BatchSampler
        shuffle = getattr(bs.sampler, "shuffle", True)
        sampler = (DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed) if train
                   else _RankSlice(len(ds), rank, world))
        return make_loader(ds, bs.batch_size, shuffle=False, seed=seed, drop_last=bs.drop_last,
                           num_workers=loader.num_workers, sampler=sampler)
    return StridedLoader(loader, rank, world, even=train)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over every rank (eval counts and loss sums)."""
    if not info().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's persistent buffers (BatchNorm running statistics) to every rank. DDP
    does this before each forward, so after the last step the ranks differ until this runs."""
    if not info().enabled:
        return
    persistent = set(module.state_dict())
    for name, buf in module.named_buffers():
        if name in persistent:
            dist.broadcast(buf.data, src=0)


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def clean_exit(code: int = 0) -> None:
    """End a torchrun worker: destroy the process group, flush, os._exit(code). Call it last
    in an entry point; it never returns (atexit handlers do not run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
