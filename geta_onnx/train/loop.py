"""The training loop: any torch.optim.Optimizer (QASSO included), optional hooks, an eval and
a checkpoint each epoch, exact resume, and data-parallel training under torchrun.

Exact resume: a checkpoint at the end of epoch k holds the weights, optimizer / scheduler /
hook states and every RNG state; the data order of epoch e depends only on (seed, e). So
"k epochs, stop, resume" ends with the same bits as one uninterrupted run.

Evaluation after a structural change: an optimizer whose `structure_version` (any
comparable value; QASSO: the number of zeroed groups) changed since the last evaluation has
altered the network discontinuously, so the running BatchNorm statistics are stale; that
evaluation runs on a copy with re-estimated statistics (refreshed_batchnorm).

Hooks are objects with any of these methods (all optional):
    before_step(step)                   before the forward pass of global step `step`
    after_step(step, loss) -> dict      after optimizer.step(); the dict's items join the
                                        progress bar (e.g. stage, group sparsity, mean bits)
    state_dict() / load_state_dict(d)   saved in / restored from the checkpoint
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..bridge.ops.norm import BatchNorm as OnnxBatchNorm
from ..config import ScheduleConfig
from ..errors import ConfigError, DataError, GetaError
from . import checkpoint, distributed
from .data import Data, set_epoch, split_batch
from .evaluate import evaluate
from .schedule import Schedule, plan_steps

CHECKPOINT = "checkpoint.safetensors"
BN_REFRESH_BATCHES = 20  # training batches that re-estimate BatchNorm statistics for an evaluation


@dataclass
class TrainResult:
    steps: int  # global steps done (including those before a resume)
    epochs: int  # epochs started (the last one may be partial when training is bounded by steps)
    metrics: dict[str, float]  # the last evaluation
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, step, train_loss, eval metrics, seconds
    checkpoint: Path | None = None
    resumed_at: int | None = None  # the step a resumed run started from
    seconds: float = 0.0  # wall time of this call
    schedule: Schedule | None = None  # the schedule the run followed
    processes: int = 1  # data-parallel processes (torchrun) that trained it
    device: str = "cpu"  # the torch device of this process


def _hooks(hooks) -> list:
    return [] if hooks is None else list(hooks) if isinstance(hooks, (list, tuple)) else [hooks]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _to(x, device):
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


_SHORT = {"loss": "eval_loss", "accuracy": "acc", "agreement": "agree"}  # eval metrics on the bar


def _fmt(v):
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    return f"{v:.4g}" if isinstance(v, float) else v


def train(module: torch.nn.Module, data: Data, optimizer: torch.optim.Optimizer, *, loss_fn,
          schedule: Schedule | None = None, epochs: int | None = None, steps: int | None = None,
          lr_scheduler=None, device: str = "cpu", eval_fn=None, checkpoint_dir=None, resume: bool = False,
          hooks=None, progress: bool = True, seed: int = 0, grad_clip: float = 0.0, output: int = 0,
          config: dict | None = None, sync_batchnorm: bool = True, amp: str = "off") -> TrainResult:
    """Train `module` in place and return what happened.

    Length: `schedule`, else `epochs` / `steps` (else the automatic length of ScheduleConfig).
    loss_fn(outputs, target, inputs) -> scalar: a losses.Loss or any callable of that shape (a
    Loss's teacher moves to `device` too). lr_scheduler is stepped once per optimizer step.
    eval_fn(module) -> dict replaces the default evaluation (and runs on rank 0 only).
    resume=True continues from checkpoint_dir's checkpoint when there is one (else starts
    fresh). torch, numpy and random are seeded with `seed` first. `output` is the model output
    the default evaluation scores. `config` (plain JSON values) is stored in the checkpoint.
    Under torchrun (distributed.py): `data`'s batch size is the global batch, each rank
    trains on its slice of it, and `sync_batchnorm` normalises with the global batch.
    `amp` ("bf16" / "fp16"): the forward and the loss run under torch.autocast; parameters,
    gradients and the optimizer (QASSO's projections, masks and bit bounds) stay float32, and
    the quantizers compute in float32 (quant.quantizer). fp16 scales the loss (GradScaler);
    a step whose gradients overflow is skipped by the scaler, as torch does.
    """
    started = time.perf_counter()
    if schedule is not None and (epochs or steps):
        raise ConfigError("train(): give either a schedule or epochs / steps, not both")
    if resume and checkpoint_dir is None:
        raise ConfigError("option 'resume' needs a checkpoint directory")
    rank = distributed.init(device) if distributed.launched() else distributed.info()
    dev = distributed.device_for(device, rank)
    hooks = _hooks(hooks)
    _seed_everything(seed)
    module.to(dev)
    if hasattr(loss_fn, "to"):
        loss_fn.to(dev)
    if rank.enabled:
        data = data.shard(rank.rank, rank.world_size)
    if schedule is None:
        per_epoch = _batches(data.train, data.spec)
        total, _ = plan_steps(per_epoch, ScheduleConfig(epochs=epochs or 0, steps=steps or 0))
        schedule = Schedule.plain(total, per_epoch)
    names = list(getattr(module, "input_names", ["x"]))
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    memo = getattr(loss_fn, "memo", None)  # the teacher's outputs per sample (teacher_memo.py)

    step, epoch, history, resumed_at = 0, 0, [], None
    if resume and ckpt.exists():
        state = checkpoint.load(ckpt)
        _restore(state, ckpt, module, optimizer, lr_scheduler, hooks)
        if memo is not None and state.get("teacher_memo"):  # the rows the uninterrupted run would read
            memo.load_state_dict(state["teacher_memo"])
        step, epoch, history, resumed_at = state["step"], state["epoch"], list(state["history"]), state["step"]
    cast = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    if scaler is not None and resume and ckpt.exists() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    model, find_unused, wrapped = module, False, None  # wrapped: trainable() when the DDP wrapper was made
    uneven = rank.enabled and getattr(getattr(data.train, "sampler", None), "uneven", False)
    if rank.enabled:
        find_unused = bool(_unused(module, data, names, loss_fn, dev, output))
        model, wrapped = distributed.wrap(module, dev, find_unused), distributed.trainable(module)

    show_stage = schedule.warmup_steps < schedule.total_steps  # a GETA schedule, not plain training
    bar = tqdm(total=schedule.total_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not (progress and rank.is_main), desc="train")
    structure = getattr(optimizer, "structure_version", None)  # as of the last evaluation (or the resume)
    metrics, fields, smooth = (history[-1]["eval"] if history else {}), {}, None
    post: dict = {}  # what the progress bar shows
    with distributed.synced_batchnorm(module, sync_batchnorm):
        while step < schedule.total_steps:
            epoch_start, loss_sum, n = time.perf_counter(), 0.0, 0
            set_epoch(data.train, epoch)
            model.train()
            for batch in data.train:
                if step >= schedule.total_steps:
                    break
                inputs, target = split_batch(batch, names, f"data '{data.spec}'")
                inputs, target = tuple(_to(x, dev) for x in inputs), _to(target, dev)
                for h in hooks:
                    if hasattr(h, "before_step"):
                        h.before_step(step)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=cast or torch.bfloat16, enabled=cast is not None):
                    loss = loss_fn(model(*inputs), target, inputs).float()
                if uneven:  # this rank's slice is not 1 / world of the global batch
                    loss = loss * distributed.batch_weight(inputs[0].shape[0], dev)
                value = float(loss.detach())
                if not np.isfinite(value):
                    raise GetaError(f"the loss became {value} at step {step} ({schedule.stage(step).name}); "
                                    "lower the learning rate, or check the data for NaN / inf")
                if scaler is None:
                    loss.backward()
                else:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                if lr_scheduler is not None:
                    lr_scheduler.step()
                if wrapped is not None and distributed.trainable(module) != wrapped:  # a stage froze / thawed some
                    model = None  # the old wrapper's gradient hooks go with it before the new one adds its own
                    model, wrapped = distributed.wrap(module, dev, find_unused), distributed.trainable(module)
                for h in hooks:
                    if hasattr(h, "after_step"):
                        fields.update(h.after_step(step, loss.detach()) or {})
                step, n, loss_sum = step + 1, n + 1, loss_sum + value
                smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
                post.update({"loss": smooth, **({"stage": schedule.stage(step - 1).name} if show_stage else {}), **fields})
                bar.set_postfix({k: _fmt(v) for k, v in post.items()}, refresh=False)
                bar.update(1)
            if n == 0:
                raise DataError(f"data '{data.spec}': the train loader yielded no batch in epoch {epoch}; "
                                "make it yield at least one batch per pass")
            epoch += 1
            distributed.broadcast_buffers(module)  # one model on every rank for eval and the checkpoint
            if eval_fn is not None:
                metrics = dict(eval_fn(module)) if rank.is_main else {}
            elif data.eval is not None:
                scored = module
                if getattr(optimizer, "structure_version", None) != structure:
                    structure = optimizer.structure_version
                    scored = refreshed_batchnorm(module, data.train, names, dev)
                metrics = evaluate(scored, data.eval, loss_fn, device=dev, input_names=names, output=output)
            post.update({_SHORT.get(k, k): v for k, v in metrics.items()})
            bar.set_postfix({k: _fmt(v) for k, v in post.items()})
            history.append({"epoch": epoch, "step": step, "train_loss": loss_sum / max(n, 1), "eval": metrics,
                            "seconds": time.perf_counter() - epoch_start})
            if ckpt is not None and rank.is_main:
                state = _state(module, optimizer, lr_scheduler, hooks, step, epoch, history, schedule, seed, config)
                if scaler is not None:
                    state["scaler"] = scaler.state_dict()
                state["teacher_memo"] = memo.state_dict() if memo is not None else None
                checkpoint.save(ckpt, state)
            distributed.barrier()  # nobody races ahead (or reads the checkpoint) before it is written
    bar.close()
    return TrainResult(step, epoch, metrics, history, ckpt if ckpt is not None and ckpt.exists() else None,
                       resumed_at, time.perf_counter() - started, schedule, rank.world_size, str(dev))


@torch.no_grad()
def refreshed_batchnorm(module: torch.nn.Module, loader, input_names: list[str], device,
                        batches: int = BN_REFRESH_BATCHES) -> torch.nn.Module:
    """A copy of `module` whose BatchNorm running mean / var are re-estimated from the first
    `batches` batches of `loader` (train-mode forwards, no gradient), in eval mode; `module`
    itself when it has no BatchNorm. Batch k updates the statistics with weight 1 / k, so
    they end as the plain average over the refresh batches. The module, its mode and the
    RNG streams are left as they were: training and exact resume do not see it.

    Why: QASSO's commit hard-zeroes groups that still carry weight, which shifts the input of
    every layer downstream; their running statistics (an EMA over past batches) then describe
    the old network until training refreshes them, while train mode uses batch statistics and
    never sees the gap. Fashion-MNIST, width 16: accuracy right after a commit 0.44 with the
    stale statistics, 0.83 with re-estimated ones."""
    if not _batch_norms(module):
        return module
    fresh = copy.deepcopy(module)
    norms = _batch_norms(fresh)
    fresh.train()
    where = torch.device(device)
    with torch.random.fork_rng(devices=[where.index or 0] if where.type == "cuda" else []):
        for k, batch in enumerate(loader, start=1):
            if k > batches:
                break
            for norm in norms:  # weight 1 / k of this batch: torch's momentum, 1 - ONNX's momentum
                norm.momentum = 1.0 / k if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) else 1.0 - 1.0 / k
            inputs, _ = split_batch(batch, input_names, "BatchNorm refresh data")
            fresh(*(_to(x, device) for x in inputs))
    return fresh.eval()


def _batch_norms(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The BatchNorms that keep running statistics: torch's, and the bridge's (ONNX
    BatchNormalization whose statistics are buffers)."""
    return [m for m in module.modules()
            if (isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats)
            or (isinstance(m, OnnxBatchNorm) and m.update_running)]


def _unused(module, data: Data, names: list[str], loss_fn, device, output: int) -> list[str]:
    """Trainable parameters one probe batch gives no gradient (distributed.unused_parameters);
    said once, since they switch on DDP's slower find_unused_parameters."""
    batch = next(iter(data.train), None)
    if batch is None:
        return []
    inputs, target = split_batch(batch, names, f"data '{data.spec}'")
    inputs, target = tuple(_to(x, device) for x in inputs), _to(target, device)
    unused = distributed.unused_parameters(module, inputs, lambda out: loss_fn(out, target, inputs))
    if unused and distributed.info().is_main:
        tqdm.write(f"note: {len(unused)} parameter(s) get no gradient from the loss (e.g. {', '.join(unused[:3])}); "
                   "data-parallel training looks for unused parameters every step")
    return unused


def _batches(loader, spec: str) -> int:
    """Batches per epoch; a loader without len() cannot be planned in epochs."""
    try:
        return len(loader)
    except TypeError:
        raise DataError(f"data '{spec}': the train loader has no len(); use a map-style dataset or pass a "
                        "Schedule built with a known number of steps per epoch") from None


def _state(module, optimizer, lr_scheduler, hooks, step, epoch, history, schedule, seed, config) -> dict:
    return {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "hooks": [h.state_dict() for h in hooks if hasattr(h, "state_dict")],  # stateful hooks, in order
        "rng": checkpoint.rng_state(),
        "step": step, "epoch": epoch, "history": history, "seed": seed,
        "schedule": asdict(schedule), "config": config,
    }


def _restore(state: dict, path: Path, module, optimizer, lr_scheduler, hooks) -> None:
    """Load a checkpoint into the live objects; DataError when it belongs to another setup."""
    try:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise DataError(f"checkpoint '{path}' was written for a different model or optimizer "
                        f"({str(e).splitlines()[0]}); delete it or start without resume") from None
    if (state["lr_scheduler"] is None) != (lr_scheduler is None):
        raise DataError(f"checkpoint '{path}': the run was {'' if lr_scheduler is None else 'not '}using an LR "
                        "scheduler and this one is; resume with the same settings")
    if lr_scheduler is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    saved, stateful = state["hooks"], [h for h in hooks if hasattr(h, "state_dict")]
    if len(saved) != len(stateful):
        raise DataError(f"checkpoint '{path}' holds {len(saved)} hook states, this run has {len(stateful)} hooks "
                        "with state; resume with the same hooks")
    for h, s in zip(stateful, saved):
        h.load_state_dict(s)
    checkpoint.set_rng_state(state["rng"])
