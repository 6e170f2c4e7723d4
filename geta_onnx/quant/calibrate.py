"""Activation ranges from data, before training (docs/algorithm.md section 1).

A departure from the original GETA code, which initialises activation ranges from WEIGHT statistics
(saturating about a third of BERT's activations): here q_m of every activation quantizer
is the `config.calibration_percentile` percentile of |a| over the first
`config.calibration_batches` batches, observed in eval mode with every quantizer
disabled (the fp32 network), and d = d(act_bits_start).

The percentile is POOLED over all batches (not an average of per-batch percentiles),
computed from a histogram of |a| per quantizer, so memory stays bounded for any amount
of data: at most 4096 bins of equal width; the result is exact to one bin width
(<= max|a| / 2048), and percentile 100 is the exact maximum.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..config import QuantConfig
from ..errors import DataError, GetaError
from .plan import QuantPlan
from .quantizer import quantizers_off

BINS = 2048


class AbsHistogram:
    """Running histogram of |a| with bins [i * width, (i + 1) * width); the width is set by
    the first non-zero batch and doubles (merging bin pairs) when a larger value arrives."""

    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.counts: torch.Tensor | None = None  # (n_bins,) int64
        self.width = 0.0
        self.count = 0  # values seen
        self.max = 0.0
        self._zeros = 0  # values seen while every value so far was 0 (no width yet)

    def add(self, a: torch.Tensor) -> None:
        a = a.detach().abs().reshape(-1).float()
        if a.numel() == 0:
            return
        top = float(a.max())
        if not math.isfinite(top):
            raise DataError(f"calibration saw a non-finite activation ({top}); check the data and the model")
        self.count += a.numel()
        self.max = max(self.max, top)
        if self.counts is None:
            if top == 0.0:
                self._zeros += a.numel()
                return
            self.width = top / self.bins
            self.counts = torch.zeros(self.bins, dtype=torch.int64, device=a.device)
            self.counts[0] += self._zeros
        while top >= self.width * 2 * self.bins:  # keep at most 2 * bins bins: merge pairs, double width
            c = self.counts
            c = torch.cat([c, c.new_zeros(len(c) % 2)])
            self.counts, self.width = c.view(-1, 2).sum(1), self.width * 2
        needed = int(top // self.width) + 1
        if needed > len(self.counts):
            self.counts = torch.cat([self.counts, self.counts.new_zeros(needed - len(self.counts))])
        idx = (a / self.width).floor().long().clamp_(max=len(self.counts) - 1)
        self.counts += torch.bincount(idx, minlength=len(self.counts))

    def percentile(self, p: float) -> float:
        """The p-th percentile (0 < p <= 100) of everything added: the upper edge of the bin
        where the cumulative count reaches p %, capped at the maximum seen."""
        if self.count == 0:
            raise GetaError("percentile of an empty histogram")
        if p >= 100 or self.counts is None:
            return self.max
        cum = torch.cumsum(self.counts, 0)
        target = math.ceil(p / 100 * self.count)
        i = int(torch.searchsorted(cum, torch.tensor([target], device=cum.device))[0])
        return min((i + 1) * self.width, self.max)


def calibrate(module: torch.nn.Module, plan: QuantPlan, batches: Iterable, config: QuantConfig) -> dict[str, float]:
    """Set q_m and d of every activation quantizer of `plan` from data; returns name -> q_m.

    batches: each a tuple / list of inputs in module.input_names order, a dict
    input name -> value, or a single tensor (torch tensors or numpy arrays, already on the
    module's device). The module's train / eval mode and the quantizers' enabled flags are
    restored afterwards."""
    acts = plan.act_quantizers()
    if not acts:
        return {}
    hists = {name: AbsHistogram() for name in acts}
    training = module.training
    hooks = [q.register_forward_pre_hook(lambda _m, args, h=hists[name]: h.add(args[0])) for name, q in acts.items()]
    seen = 0
    try:
        module.eval()
        with quantizers_off(plan.every_quantizer()), torch.no_grad():
            for batch in itertools.islice(batches, config.calibration_batches):  # never pulls one more
                module(*_inputs(module, batch))
                seen += 1
    finally:
        for h in hooks:
            h.remove()
        module.train(training)
    if seen == 0:
        raise DataError("calibration got no batches; pass at least one batch of model inputs")
    ranges = {}
    for name, q in acts.items():
        h = hists[name]
        if h.count == 0:
            raise GetaError(f"activation quantizer '{name}' saw no data during calibration; "
                            "its tensor is not computed for these inputs")
        value = h.percentile(config.calibration_percentile)
        if value <= 0.0:  # an all-zero tensor: any range represents it exactly
            value = h.max if h.max > 0 else 1.0
        q.set_range(value, config.act_bits_start)
        q.calibrated = True
        ranges[name] = value
    return ranges


def _inputs(module, batch) -> list:
    names = list(getattr(module, "input_names", []))
    if isinstance(batch, Mapping):
        missing = [n for n in names if n not in batch]
        if missing:
            raise DataError(f"calibration batch lacks model input(s) {missing}; it has {sorted(batch)}")
        batch = [batch[n] for n in names]
    elif isinstance(batch, (torch.Tensor, np.ndarray)):
        batch = [batch]
    batch = [torch.from_numpy(np.asarray(b)) if isinstance(b, np.ndarray) else b for b in batch]
    if names and len(batch) != len(names):
        raise DataError(f"calibration batch has {len(batch)} input(s), the model takes {len(names)} ({names})")
    return batch
