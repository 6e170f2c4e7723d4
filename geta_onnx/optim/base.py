"""The base optimizers' processed gradient ghat (docs/algorithm.md section 3: the SGD
momentum, Adam or AdamW direction), kept separate from the update so QASSO can use ghat for
scores, forgetting rates and the step itself."""
from __future__ import annotations

import math

import torch

BASES = ("sgd", "adam", "adamw")


def direction(p: torch.Tensor, state: dict, group: dict, base: str) -> torch.Tensor:
    """ghat for parameter p (p.grad must be set); updates the moment buffers in `state`."""
    g = p.grad
    wd = group.get("weight_decay", 0.0)
    if base == "sgd":
        if wd:
            g = g.add(p, alpha=wd)
        momentum = group.get("momentum", 0.0)
        if not momentum:
            return g
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = g.detach().clone()
        else:
            buf.mul_(momentum).add_(g)
        return g.add(buf, alpha=momentum) if group.get("nesterov", False) else buf
    # adam / adamw: bias-corrected m / (sqrt(v) + eps); adam folds weight decay into g
    if base == "adam" and wd:
        g = g.add(p, alpha=wd)
    beta1, beta2 = group.get("betas", (0.9, 0.999))
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] = 0
    state["step"] += 1
    state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
    t = state["step"]
    # m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t), in
    # two new tensors (torch.optim.Adam's arrangement) instead of five: the step passes over
    # every parameter (docs/measurements.md, "Fake-quant, Clip and optimizer cost")
    denom = state["exp_avg_sq"].sqrt().div_(math.sqrt(1 - beta2 ** t)).add_(group.get("eps", 1e-8))
    return torch.div(state["exp_avg"], denom, out=denom).div_(1 - beta1 ** t)


def directions(params: list[torch.Tensor], states: list[dict], group: dict, base: str) -> list[torch.Tensor]:
    """ghat of each of `params` (grads set; one param group), the values direction() gives
    one by one, bit for bit: Adam's moment updates run as torch._foreach ops over all the
    parameters at the same step count, one call per op instead of one per op and parameter.
    A step's Python cost was most of the optimizer's on models with many small tensors (each
    quantizer's d and q_m are parameters; docs/measurements.md, "QASSO step time")."""
    if base == "sgd" or len(params) < 2:
        return [direction(p, s, group, base) for p, s in zip(params, states)]
    grads = [p.grad for p in params]
    wd = group.get("weight_decay", 0.0)
    if base == "adam" and wd:
        grads = torch._foreach_add(grads, params, alpha=wd)
    beta1, beta2 = group.get("betas", (0.9, 0.999))
    at_step: dict[int, list[int]] = {}  # step count -> indices (a frozen d skips steps: its own count)
    for i, (p, state) in enumerate(zip(params, states)):
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] = 0
        state["step"] += 1
        at_step.setdefault(state["step"], []).append(i)
    out: list[torch.Tensor | None] = [None] * len(params)
    for t, index in at_step.items():
        g = [grads[i] for i in index]
        m = [states[i]["exp_avg"] for i in index]
        v = [states[i]["exp_avg_sq"] for i in index]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, g, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - beta2 ** t))
        torch._foreach_add_(denom, group.get("eps", 1e-8))
        ghat = torch._foreach_div(m, denom)
        torch._foreach_div_(ghat, 1 - beta1 ** t)
        for i, value in zip(index, ghat):
            out[i] = value
    return out


def decoupled_decay(params: list[torch.Tensor], group: dict, base: str) -> None:
    """AdamW's decoupled weight decay of `params` (one group), applied before the step."""
    if base == "adamw" and group.get("weight_decay", 0.0) and params:
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])


def check_base(base: str) -> str:
    from ..errors import ConfigError

    if base not in BASES:
        raise ConfigError(f"option 'optimizer': unknown base '{base}'; choose one of {', '.join(BASES)}")
    return base


__all__ = ["BASES", "check_base", "decoupled_decay", "direction", "directions", "math"]
