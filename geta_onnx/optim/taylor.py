"""Loss-based group importance for the latency knapsack (optim.selection.plan_latency).

HALP's knapsack (Shen et al. 2022) divides a group's importance by the milliseconds its removal
saves, so the importances of different layers must be in the same units. Ours
(optim/importance.py) are normalised per cluster, so each layer's weakest group scores near 0
whatever it does to the loss; divided by milliseconds, that made the expensive layers nearly
free to strip (docs/latency.md, "Selection under a latency budget").

These scores are in the loss's units, as HALP's: the first-order Taylor estimate of the loss
change when a group is zeroed, squared and averaged over the last TAYLOR_BATCHES batches up to
a pruning period's first step (fewer when the period before is shorter: each plan starts the sum
again), after Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019:

    I_g = mean over batches of ( sum over the group's entries w of  w * dL/dw )^2

A group's entries are every slice it zeroes (a conv's output channel, its BatchNorm scale and
shift, the next layer's input channel), so the sum is the first-order change of zeroing it all.
The gradients are the raw ones (before momentum / Adam), as the loss sees them; under DDP they
are the all-reduced gradients, the same on every rank.
"""
from __future__ import annotations

import torch

from .slices import GroupView

TAYLOR_BATCHES = 32  # batches averaged before each period's plan (the period's first step included)


class TaylorScores:
    """Accumulates I_g over batches: add() after a backward pass, scores() at the plan, reset()
    after it. Its state (float64 sums and the batch count) goes into QASSO's checkpoint."""

    def __init__(self, views: list[GroupView]):
        self.ids = [v.id for v in views]
        parts: dict[tuple[int, int], tuple[torch.nn.Parameter, int, list, list]] = {}
        for position, v in enumerate(views):
            for s in v.slices:
                param, axis, groups, channels = parts.setdefault((id(s.param), s.axis), (s.param, s.axis, [], []))
                groups.append(torch.full((s.index.numel(),), position, dtype=torch.long))
                channels.append(s.index.cpu())
        # per (tensor, axis): the tensor, the axis, the position of each sliced channel's group, the channel
        self._parts = [(p, axis, torch.cat(g), torch.cat(c)) for p, axis, g, c in parts.values()]
        self.sums = torch.zeros(len(views), dtype=torch.float64)
        self.batches = 0

    @torch.no_grad()
    def add(self) -> None:
        """One batch: the parameters' .grad must hold this batch's gradients."""
        dots = torch.zeros(len(self.ids), dtype=torch.float64)
        for param, axis, groups, channels in self._parts:
            if param.grad is None:
                continue
            product = param.detach().double() * param.grad.double()
            others = [d for d in range(product.dim()) if d != axis]
            per_channel = (product.sum(others) if others else product).cpu()  # [channels along axis]
            dots.index_add_(0, groups, per_channel[channels])
        self.sums += dots.pow(2)
        self.batches += 1

    def scores(self) -> dict[int, float]:
        """{group id: I_g}; all 0 before any batch."""
        mean = self.sums / max(self.batches, 1)
        return dict(zip(self.ids, mean.tolist()))

    def reset(self) -> None:
        self.sums.zero_()
        self.batches = 0

    def state_dict(self) -> dict:
        return {"sums": self.sums.tolist(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        sums = torch.tensor(state["sums"], dtype=torch.float64)
        if sums.shape != self.sums.shape:
            raise ValueError(f"Taylor scores of {sums.numel()} groups in the checkpoint, the model has {self.sums.numel()}")
        self.sums, self.batches = sums, int(state["batches"])
