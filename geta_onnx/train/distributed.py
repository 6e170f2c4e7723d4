"""Data-parallel training across processes started by torchrun.

    torchrun --standalone --nproc_per_node=2 my_script.py      # my_script calls train(...)

train() calls init() itself when torchrun's environment is present: gloo on CPU, nccl on CUDA
(one GPU per local rank). The design goal is that N processes follow the same trajectory as
one process with the same settings (docs/distributed.md):

- the batch size is the GLOBAL batch: every rank walks the single-process batch order
  (seed, epoch) and takes its own slice of each batch (RankSlices), so the schedule, the
  learning rate and a resume with another number of processes all mean the same thing;
- DistributedDataParallel averages the gradients (mean of the slices' means = the global
  mean when N divides the batch), so every rank applies the same update;
- the bridge's BatchNorm layers use statistics of the whole global batch (synced_batchnorm:
  one differentiable all-reduce of [sum, sum of squares, count] per layer and step);
- parameters that receive no gradient are handled by design: a stage that stops training
  a parameter sets requires_grad=False (QASSO's cool-down freezes the quantizers' d) and the
  loop re-wraps the module when the set of trainable parameters changes; only parameters a
  probe finds unused from the start turn on DDP's find_unused_parameters (its graph walk
  costs time every step, tools/bench_scale.py);
- decisions (QASSO's pruning plan) are taken from rank 0 (agree);
- only rank 0 writes checkpoints and outputs and shows progress.

Entry points end with clean_exit(): with gloo on CPU a plain interpreter exit sometimes aborts
(SIGABRT; docs/distributed.md); destroying the process group, flushing and os._exit(0) does not.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

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


def wrap(module: torch.nn.Module, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `module`, which keeps its own parameters (optimizers
    built on module.parameters() stay valid). DDP reduces the parameters that require a
    gradient NOW: call again (trainable() changed) when a stage freezes or thaws some."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def trainable(module: torch.nn.Module) -> tuple[bool, ...]:
    """Which parameters require a gradient (compared step to step to know when to re-wrap)."""
    return tuple(p.requires_grad for p in module.parameters())


def unused_parameters(module: torch.nn.Module, inputs: tuple, loss_of) -> list[str]:
    """Names of the trainable parameters that get no gradient from one probe batch: a
    forward in eval mode (running statistics untouched, RNG forked) and autograd.grad of
    loss_of(outputs). Such a parameter (e.g. one that only feeds an output the loss ignores)
    would make DDP wait for a gradient that never comes."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        return []
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            loss = loss_of(module(*inputs))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        module.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is None]


def agree(value):
    """Rank 0's `value` on every rank (any picklable object); `value` itself in one process."""
    if not info().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def synced_batchnorm(module: torch.nn.Module, enabled: bool = True):
    """Inside: the module's bridge BatchNorm layers, in train mode, normalise with the
    statistics of the global batch (bridge.ops.norm.BatchNorm.sync). Off again on exit, so
    forwards of one rank alone (export, validation) never wait for the others."""
    from ..bridge.ops.norm import BatchNorm

    norms = [m for m in module.modules() if isinstance(m, BatchNorm)] if enabled and info().enabled else []
    for m in norms:
        m.sync = True
    try:
        yield len(norms)
    finally:
        for m in norms:
            m.sync = False


class _RankSlice(Sampler[int]):
    """Indices rank, rank + world, ... of 0..n-1: an eval shard without DistributedSampler's
    padding, so every sample is counted exactly once across ranks."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))


class RankSlices(Sampler[list[int]]):
    """This rank's slice of every batch of `batches` (the single-process BatchSampler): the
    global batch [i_0, ..., i_{B-1}] gives rank r the positions r*B//N .. (r+1)*B//N - 1.
    A last batch smaller than N (a slice would be empty) is skipped on every rank."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def set_epoch(self, epoch: int) -> None:
        from .batching import set_epoch

        set_epoch(self.batches, epoch)

    def __len__(self) -> int:
        n, b = len(self.batches.sampler), self.batches.batch_size
        full, rest = divmod(n, b)
        return full + (1 if rest >= self.world and not self.batches.drop_last else 0)

    @property
    def uneven(self) -> bool:
        """Some global batch does not split evenly: the ranks' mean losses then need the
        weights batch_weight() gives them to average to the global batch's mean."""
        n, b = len(self.batches.sampler), self.batches.batch_size
        rest = 0 if self.batches.drop_last else n % b
        return b % self.world != 0 or (rest >= self.world and rest % self.world != 0)

    def __iter__(self):
        for batch in self.batches:
            b = len(batch)
            if b >= self.world:
                yield batch[self.rank * b // self.world:(self.rank + 1) * b // self.world]


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


def shard_loader(loader, rank: int, world: int, *, train: bool = True):
    """This rank's share of `loader`. Our own datasets: training takes this rank's slice of
    every global batch (RankSlices; the batch size stays the global one), eval a padding-free
    slice of the samples. A py: loader we cannot re-sample: every world-th batch (the global
    batch is then world x its batch size)."""
    from .batching import ArrayDataset, make_loader

    if isinstance(loader, DataLoader) and isinstance(loader.dataset, ArrayDataset):
        ds, bs = loader.dataset, loader.sampler  # our loaders: batch_size=None, sampler = BatchSampler
        if train:
            return DataLoader(ds, sampler=RankSlices(bs, rank, world), batch_size=None, collate_fn=loader.collate_fn,
                              num_workers=loader.num_workers)
        return make_loader(ds, bs.batch_size, shuffle=False, seed=0, drop_last=False,
                           num_workers=loader.num_workers, sampler=_RankSlice(len(ds), rank, world))
    return StridedLoader(loader, rank, world, even=train)


def batch_weight(samples: int, device: torch.device) -> float:
    """world * samples / global samples: the factor on this rank's mean loss that makes DDP's
    average of the ranks' gradients the gradient of the global batch's mean loss."""
    total = all_reduce_sum([float(samples)], device)[0]
    return info().world_size * samples / total


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
