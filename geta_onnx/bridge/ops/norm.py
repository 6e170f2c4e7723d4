"""Normalisation ops: BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization and LRN.

BatchNormalization is the one op with training state: its running mean / variance are
persistent buffers (the `state` slots) passed in by the builder as the buffers
themselves, so the in-place update of F.batch_norm in train mode changes the module's
state exactly as torch.nn.BatchNorm2d would (torch momentum = 1 - ONNX momentum,
unbiased batch variance in the running update).
"""
from __future__ import annotations

import torch
import torch.distributed
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter


def _stash(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype statistics are computed in: at least `dtype` (float32 for half inputs,
    the input's own dtype for float64, as onnxruntime does)."""
    return torch.promote_types(x.dtype, dtype)


def _channel(t: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel vector (C,) shaped to broadcast over (N, C, spatial...)."""
    return t.reshape((1, -1) + (1,) * (rank - 2))


class BatchNorm(nn.Module):
    """Y = (X - mean) / sqrt(var + eps) * scale + bias, per channel (dim 1).

    module.training -> batch statistics, and the running buffers updated in place with
    torch semantics. Otherwise the running statistics (onnxruntime inference), unless
    the node itself is a training node (`onnx_training`: training_mode=1 at opset 14+,
    or the optional statistics outputs requested before 14): then Y uses batch
    statistics and the extra outputs follow onnxruntime:
        running_mean = mean * m + batch_mean * (1 - m)   (biased batch variance likewise)
        saved_mean = batch_mean, saved_var = 1 / sqrt(batch_var + eps)   (opset < 14)
    Those outputs are computed from the running statistics before any in-place update.

    `sync` (set by train.distributed.synced_batchnorm under torchrun): train-mode statistics
    over the global batch of every rank, as one process would compute them (synced_batch_norm).
    """

    def __init__(self, eps: float, momentum: float, onnx_training: bool, n_outputs: int, update_running: bool):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.onnx_training, self.n_outputs, self.update_running = onnx_training, n_outputs, update_running
        self.sync = False

    def forward(self, x, scale, bias, mean, var):
        extra = self._extra_outputs(x, mean, var) if self.n_outputs > 1 else ()
        if self.training:
            # running stats that are not buffers (graph inputs, computed) are never written
            rm, rv = (mean, var) if self.update_running else (None, None)
            if self.sync:
                y = synced_batch_norm(x, rm, rv, scale, bias, 1.0 - self.momentum, self.eps)
            else:
                y = F.batch_norm(x, rm, rv, scale, bias, True, 1.0 - self.momentum, self.eps)
        elif self.onnx_training:
            y = F.batch_norm(x, None, None, scale, bias, True, 0.0, self.eps)
        else:
            y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, self.eps)
        if self.n_outputs == 1:
            return y
        return (y,) + extra[: self.n_outputs - 1]  # the builder picks outputs by position

    def _extra_outputs(self, x, mean, var):
        """running_mean, running_var, saved_mean, saved_var as onnxruntime computes them."""
        dims = [0] + list(range(2, x.dim()))
        batch_var, batch_mean = torch.var_mean(x, dims, correction=0)
        m = self.momentum
        running_mean = mean * m + batch_mean.to(mean.dtype) * (1 - m)
        running_var = var * m + batch_var.to(var.dtype) * (1 - m)
        return running_mean, running_var, batch_mean, torch.rsqrt(batch_var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, momentum={self.momentum}, onnx_training={self.onnx_training}"


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def synced_batch_norm(x, running_mean, running_var, scale, bias, momentum: float, eps: float):
    """Train-mode batch norm over the union of every rank's batch, as torch's SyncBatchNorm
    (GPU-only) computes it, on any device. Each rank's (count, mean, biased variance) per
    channel, shape (W, 2C + 1) with only its own row filled, is summed over ranks by one
    differentiable all-reduce (the gradient also flows back to the other ranks' inputs),
    then combined as Chan et al.'s parallel variance: mean = sum(n_r mean_r) / N,
    var = sum(n_r (var_r + (mean_r - mean)^2)) / N, stable in float32. The running
    statistics follow torch (unbiased variance, weight `momentum` on the batch)."""
    c = x.shape[1]
    dims = [0] + list(range(2, x.dim()))
    var_r, mean_r = torch.var_mean(x, dims, correction=0)
    count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rows = torch.cat([x.new_zeros(rank, 2 * c + 1), torch.cat([count, mean_r, var_r])[None],
                      x.new_zeros(world - rank - 1, 2 * c + 1)])
    rows = _AllReduceSum.apply(rows)  # (W, 2C + 1): every rank's statistics
    n_r, means, vars_ = rows[:, :1], rows[:, 1:c + 1], rows[:, c + 1:]
    n = n_r.sum()
    mean = (n_r * means).sum(0) / n
    var = (n_r * (vars_ + (means - mean) ** 2)).sum(0) / n
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var * n / (n - 1).clamp_min(1)).to(running_var.dtype), alpha=momentum)
    view = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.reshape(view)) * torch.rsqrt(var + eps).reshape(view)
    if scale is not None:
        y = y * scale.reshape(view)
    if bias is not None:
        y = y + bias.reshape(view)
    return y


@converter("BatchNormalization", versions=(1, 6, 7, 9, 14, 15), weights=(1, 2), state=(3, 4))
def convert_batch_norm(ctx: NodeContext) -> nn.Module:
    if ctx.since < 9 and not ctx.attr("spatial", 1):
        raise ctx.fail("spatial=0 (per-activation statistics) is not supported; re-export with spatial=1")
    outputs = ctx.outputs
    wants_stats = any(outputs[1:])
    if ctx.since >= 14:
        onnx_training = bool(ctx.attr("training_mode", 0))
        if wants_stats and not onnx_training:
            raise ctx.fail("running_mean / running_var outputs need training_mode=1")
    else:
        onnx_training = wants_stats  # before opset 14 the statistics outputs mean training
    update = all(ctx.model.is_initializer(ctx.inputs[i]) for i in (3, 4))
    eps, momentum = float(ctx.attr("epsilon", 1e-5)), float(ctx.attr("momentum", 0.9))
    return BatchNorm(eps, momentum, onnx_training, len(outputs), update)


class InstanceNorm(nn.Module):
    """Per (sample, channel) statistics over the spatial dims; scale / bias per channel."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x, scale, bias):
        return F.instance_norm(x, weight=scale, bias=bias, use_input_stats=True, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def _group_norm_constants(model, node) -> set[int]:
    """GroupNorm as both exporters write it: Reshape(x, (N, G, -1)) ->
    InstanceNormalization(ones(G), zeros(G)) -> Reshape -> Mul(weight) -> Add(bias). The
    ones and zeros are constants (PyTorch has no such parameters), not weights."""
    producer = model.producer(node.input[0])
    if producer is None or producer.op_type != "Reshape" or len(node.input) < 3:
        return set()
    scale, bias = node.input[1], node.input[2]
    if not (model.is_initializer(scale) and model.is_initializer(bias)):
        return set()
    if (model.array(scale) == 1).all() and (model.array(bias) == 0).all():
        return {1, 2}
    return set()


@converter("InstanceNormalization", versions=(1, 6), weights=(1, 2), static_when=_group_norm_constants)
def convert_instance_norm(ctx: NodeContext) -> nn.Module:
    return InstanceNorm(float(ctx.attr("epsilon", 1e-5)))


_STASH_TYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class LayerNorm(nn.Module):
    """Statistics over dims axis..rank-1, computed in the stash dtype (float32 for half
    inputs); Y = (X - mean) * inv_std_dev * scale + bias, scale / bias broadcasting
    against X.shape[axis:]. The optional Mean / InvStdDev outputs have the stash dtype
    and shape X.shape[:axis] + (1,) * (rank - axis)."""

    def __init__(self, axis: int, eps: float, stash: torch.dtype, n_outputs: int):
        super().__init__()
        self.axis, self.eps, self.stash, self.n_outputs = axis, eps, stash, n_outputs

    def forward(self, x, scale, bias=None):
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        xs = x.to(_stash(x, self.stash))
        scale = scale.to(xs.dtype)
        bias = None if bias is None else bias.to(xs.dtype)
        shape = xs.shape[axis:]
        if self.n_outputs == 1:
            if scale.shape == shape and (bias is None or bias.shape == shape):  # torch's fused kernel
                return F.layer_norm(xs, shape, scale, bias, self.eps).to(x.dtype)
            y = F.layer_norm(xs, shape, None, None, self.eps) * scale
            return (y if bias is None else y + bias).to(x.dtype)
        var, mean = torch.var_mean(xs, tuple(range(axis, x.dim())), correction=0, keepdim=True)
        inv_std = torch.rsqrt(var + self.eps)
        y = (xs - mean) * inv_std * scale
        y = (y if bias is None else y + bias).to(x.dtype)
        return (y, mean.to(self.stash), inv_std.to(self.stash))[: self.n_outputs]

    def extra_repr(self) -> str:
        return f"axis={self.axis}, eps={self.eps}, stash={self.stash}"


@converter("LayerNormalization", versions=(17,), weights=(1, 2))
def convert_layer_norm(ctx: NodeContext) -> nn.Module:
    stash_type = int(ctx.attr("stash_type", 1))
    if stash_type not in _STASH_TYPES:
        raise ctx.fail(f"stash_type {stash_type} is not a floating-point type")
    eps = float(ctx.attr("epsilon", 1e-5))
    return LayerNorm(int(ctx.attr("axis", -1)), eps, _STASH_TYPES[stash_type], len(ctx.outputs))


class GroupNorm(nn.Module):
    """Statistics per (sample, group of C / num_groups channels). GroupNormalization-18
    has one scale / bias value per GROUP (broadcast to the group's channels here);
    GroupNormalization-21 one per CHANNEL, as torch.nn.GroupNorm."""

    def __init__(self, num_groups: int, eps: float, per_group: bool, stash: torch.dtype):
        super().__init__()
        self.num_groups, self.eps, self.per_group, self.stash = num_groups, eps, per_group, stash

    def forward(self, x, scale, bias):
        channels = x.shape[1]
        if self.per_group:  # (G,) -> (C,): each group's value repeated for its channels
            scale = scale.repeat_interleave(channels // self.num_groups)
            bias = bias.repeat_interleave(channels // self.num_groups)
        y = F.group_norm(x.to(_stash(x, self.stash)), self.num_groups, None, None, self.eps)
        return (y * _channel(scale.to(y.dtype), x.dim()) + _channel(bias.to(y.dtype), x.dim())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, eps={self.eps}, per_group={self.per_group}"


@converter("GroupNormalization", versions=(18, 21), weights=(1, 2))
def convert_group_norm(ctx: NodeContext) -> nn.Module:
    num_groups = ctx.attr("num_groups")
    if num_groups is None or int(num_groups) < 1:
        raise ctx.fail("num_groups is missing or not positive")
    shape = ctx.input_shape(0)
    if shape is not None and len(shape) > 1 and isinstance(shape[1], int) and shape[1] % int(num_groups):
        raise ctx.fail(f"{shape[1]} channels do not split into {num_groups} groups")
    stash_type = int(ctx.attr("stash_type", 1))
    if stash_type not in _STASH_TYPES:
        raise ctx.fail(f"stash_type {stash_type} is not a floating-point type")
    return GroupNorm(int(num_groups), float(ctx.attr("epsilon", 1e-5)), ctx.since < 21, _STASH_TYPES[stash_type])


class LRN(nn.Module):
    """Local response normalisation across channels:
        Y = X / (bias + alpha / size * sum of X^2 over channels c - floor((size-1)/2)
                 .. c + ceil((size-1)/2)) ^ beta
    torch's F.local_response_norm centres even windows the other way, so the window sum
    is an average pool over the channel axis with ONNX's asymmetric zero padding."""

    def __init__(self, size: int, alpha: float, beta: float, bias: float):
        super().__init__()
        self.size, self.alpha, self.beta, self.bias = size, alpha, beta, bias

    def forward(self, x):
        n, c = x.shape[:2]
        sq = (x * x).reshape(n, 1, c, -1)  # channels become a spatial dim of a 2-d pool
        front, back = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        sq = F.pad(sq, (0, 0, front, back))
        mean = F.avg_pool2d(sq, (self.size, 1), stride=1).reshape(x.shape)  # = sum / size
        return x / (self.bias + self.alpha * mean).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias}"


@converter("LRN", versions=(1, 13))
def convert_lrn(ctx: NodeContext) -> nn.Module:
    size = ctx.attr("size")
    if size is None or int(size) < 1:
        raise ctx.fail("size is missing or not positive")
    return LRN(int(size), float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0)))


class LpNormalization(nn.Module):
    def __init__(self, axis: int, p: int):
        super().__init__()
        self.axis, self.p = axis, p

    def forward(self, x):
        # x / ||x||_p along `axis`; onnxruntime divides by the plain norm (no epsilon)
        return x / torch.linalg.vector_norm(x, ord=self.p, dim=self.axis, keepdim=True)


@converter("LpNormalization", versions=(1,))
def convert_lp_normalization(ctx: NodeContext) -> nn.Module:
    p = ctx.attr("p", 2)
    if p not in (1, 2):
        raise ctx.fail(f"p={p}: ONNX allows only 1 or 2")
    return LpNormalization(ctx.attr("axis", -1), p)
