"""QASSO: the GETA optimizer (docs/algorithm.md section 3, with each departure from the
original code).

It trains the bridged module's weights and its quantizers' (d, q_m, t) under two
white-box constraints: exactly K pruning groups are zero at the end, and every quantized
tensor's bit width lies in [b_l, b_u]. Stages (train.schedule.Schedule): warm-up; projection (the
upper bit bound shrinks over B periods, d projected per layer after every step);
pruning (P periods: score, pick the redundant set R, forget it progressively while
choosing d so the step stays a descent direction, commit R to exact zero); cool-down
(bits frozen, d re-derived from them, pruned groups kept at zero).

The forgetting rule sets the d of R's quantized weights. Per tensor (GETA) that is the whole
layer's d, so every layer holding a group of R leaves the pruning stage at the width the
rule chose (b_l whenever cos(r, g) >= 0); with per-channel weight quantizers it is only the
d of R's output channels, which go to zero anyway, and the kept channels keep their learned d.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..bridge import OnnxModule
from ..errors import ConfigError
from ..qadg import QADG
from ..quant.quantizer import D_FLOOR, Q_FLOOR, bits_of, d_of_bits, levels_foreach, levels_of
from . import base as base_opt
from .importance import ImportanceWeights, scores
from .selection import max_removal, plan, plan_latency
from .slices import GroupView, Slice, ZeroMasks, group_views, merge_slices
from .taylor import TAYLOR_BATCHES, TaylorScores
from ..train import distributed
from ..train.schedule import Schedule

ETA, ZETA = 0.999, 0.9


@dataclass
class QuantTarget:
    """One quantizer as QASSO sees it: its module (geta_onnx.quant.Quantizer: d, q_m, t,
    signed, bit_range), the initializer it quantizes (weights; None for activations) with the
    per-channel axis in the initializer's layout, and the upper bound at the start of
    projection. The bit bounds [low, high] QASSO enforces are the quantizer's own bit_range:
    one record of them, which the report shows too."""

    name: str
    quantizer: nn.Module
    weight: str | None
    start: float
    axis: int | None = None  # per-channel axis of the initializer (None: per tensor)
    # widths the deployed runtime executes (optim.targets.deployable_bits); () = any width in [low, high]
    widths: tuple[int, ...] = ()

    @property
    def low(self) -> float:
        return float(self.quantizer.bit_range[0])

    @property
    def high(self) -> float:
        return float(self.quantizer.bit_range[1])

    def deployable(self, bits: torch.Tensor) -> torch.Tensor:
        """Frozen widths: rounded into [low, high], then each raised to the smallest width the
        runtime executes that is >= it, among those inside [low, high] and `high` itself (the
        bounds are guaranteed; a width between containers only ever gets a finer grid)."""
        bits = bits.round().clamp(self.low, self.high)
        if not self.widths:
            return bits
        allowed = sorted({float(w) for w in self.widths if self.low <= w <= self.high} | {float(self.high)})
        out = torch.full_like(bits, allowed[-1])
        for w in reversed(allowed):
            out = torch.where(bits <= w, torch.full_like(bits, w), out)
        return out

    def t(self) -> torch.Tensor:
        t = self.quantizer.t
        return t if isinstance(t, torch.Tensor) else self.quantizer.d.new_tensor(1.0)

    def bits(self) -> torch.Tensor:
        q = self.quantizer
        return bits_of(q.d.detach(), q.q_m.detach(), self.t().detach(), q.signed)

    def d_for(self, b) -> torch.Tensor:
        q = self.quantizer
        return d_of_bits(torch.as_tensor(b, dtype=q.d.dtype), q.q_m.detach(), self.t().detach(), q.signed)

    def broadcast(self, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A per-tensor scalar or a per-channel vector, shaped to broadcast over `shape`."""
        if value.numel() == 1:
            return value.reshape(())
        view = [1] * len(shape)
        view[self.axis] = -1
        return value.reshape(view)


@dataclass
class _DEntries:
    """Entries of one quantizer's d that a forgetting step sets: the whole (per-tensor) d, or
    the listed channels of a per-channel d. dot and gg, shape (n,) with n = 1 or the number of
    channels: <r, g> and ||g||^2 over the entries of R each d entry quantizes (float64)."""

    layer: QuantTarget
    channels: torch.Tensor | None  # (n,) int64 indices into a per-channel d; None: per tensor
    dot: torch.Tensor
    gg: torch.Tensor

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(d(b_u), d(b_l)) of these entries, shape (n,)."""
        lo, hi = (self.layer.d_for(b).double().reshape(-1) for b in (self.layer.high, self.layer.low))
        if self.channels is None:  # a per-tensor d: one value
            return lo.max().reshape(1), hi.min().reshape(1)
        return lo[self.channels], hi[self.channels]

    def cap(self, bound: torch.Tensor) -> None:
        """d <- min(d, bound) on these entries (bound shape (n,))."""
        param = self.layer.quantizer.d
        if self.channels is None:
            param.clamp_(max=float(bound[0]))
        else:
            d = torch.minimum(param.detach()[self.channels], bound.to(param.dtype))
            param.index_copy_(0, self.channels, d)


class QASSO(torch.optim.Optimizer):
    def __init__(self, module: OnnxModule, qadg: QADG, layers: list[QuantTarget], stages: Schedule, *,
                 lr: float, lr_quant: float = 1e-3, base: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 target_sparsity: float | None = 0.5, target_bops: float | None = None, bops_fn=None,
                 bit_reduction: float | None = None, group_divisible: int = 16,
                 importance: ImportanceWeights = ImportanceWeights(), forget: str = "budget",
                 target_latency_ms: float | None = None, latency=None, latency_selection: str = "knapsack",
                 recovery_steps: int = 0):
        """`recovery_steps`: the first steps of each pruning period train the structure the last
        commit left before this period's forgetting starts (the quality guard checks that
        structure after them, optim/guard.py); 0: forgetting from the period's first step."""
        if forget not in FORGET_RULES:
            raise ConfigError(f"option 'forget': expected one of {', '.join(FORGET_RULES)}, got '{forget}'")
        self.forget = forget
        if target_sparsity is None and target_bops is None and target_latency_ms is None:
            raise ConfigError("give a budget: option 'target_sparsity', 'target_bops' or a latency target")
        if target_latency_ms is not None and (not target_latency_ms > 0 or (latency is None and distributed.info().is_main)):
            raise ConfigError("a latency budget needs a positive time and a latency model (geta_onnx.latency)")
        if target_sparsity is not None and not 0 <= target_sparsity < 1:
            raise ConfigError(f"option 'target_sparsity': expected a fraction in [0, 1), got {target_sparsity}")
        if target_bops is not None and (not 0 < target_bops <= 1 or bops_fn is None):
            raise ConfigError("option 'target_bops': expected a fraction in (0, 1] (and a BOPs model)")
        self.base = base_opt.check_base(base)
        self.stages, self.layers = stages, layers
        quant_ids = {id(p) for layer in layers for p in layer.quantizer.parameters()}
        weights = [p for p in module.parameters() if id(p) not in quant_ids and p.requires_grad]
        qparams = [p for layer in layers for p in layer.quantizer.parameters() if p.requires_grad]
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, betas=betas, eps=eps, kind="weight")
        super().__init__([{"params": weights}, {"params": qparams, "lr": lr_quant, "weight_decay": 0.0,
                                                 "momentum": 0.0, "kind": "quant"}], defaults)
        self.views: list[GroupView] = group_views(module, qadg.groups)
        self._by_id = {v.id: v for v in self.views}
        self._d_params = {id(layer.quantizer.d): layer for layer in layers}
        self._weight_layer = {layer.weight: layer for layer in layers if layer.weight}
        self.target_sparsity, self.target_bops, self.bops_fn = target_sparsity, target_bops, bops_fn
        # latency budget: latency.LatencyModel on rank 0 (None on the other ranks, which take rank 0's plan)
        self.target_latency_ms, self.latency = target_latency_ms, latency
        if latency_selection not in LATENCY_SELECTIONS:
            raise ConfigError(f"option 'latency_selection': expected one of {', '.join(LATENCY_SELECTIONS)}, "
                              f"got '{latency_selection}'")
        self.latency_selection = latency_selection
        # the knapsack's scores: loss-based, comparable across layers (optim/taylor.py), gathered over the
        # TAYLOR_BATCHES steps up to each pruning period's first step
        self.taylor = TaylorScores(self.views) if self._knapsack else None
        self._taylor_steps = {first - back for first in stages.pruning_period_starts
                              for back in range(TAYLOR_BATCHES)} if self._knapsack else set()
        if latency is not None and target_latency_ms is not None:
            fastest = latency.ms(latency.state(max_removal(self.views, group_divisible, set())))
            if fastest > target_latency_ms:
                raise ConfigError(
                    f"latency budget {target_latency_ms:.3f} ms ({latency.reference_ms / target_latency_ms:.2f}x the "
                    f"original's {latency.reference_ms:.3f} ms) is out of reach: with every prunable layer cut to one "
                    f"unit the model is predicted at {fastest:.3f} ms ({latency.reference_ms / fastest:.2f}x); "
                    "give a smaller --target-speedup or a larger --target-latency-ms")
        self.bit_reduction, self.unit, self.importance = bit_reduction, group_divisible, importance
        self.module = module
        self.masks = ZeroMasks()
        self.stopped = False  # a quality guard (optim.guard) ended the pruning: no new removals
        # never the whole period: forgetting needs a step
        self.recovery_steps = max(0, min(int(recovery_steps), stages.shortest_pruning_period - 1))
        self.step_count = 0
        self.zeroed: set[int] = set()
        self.redundant: list[int] = []  # R of the running period
        self.period = -1
        self.planned: int | None = None  # K after rounding kept counts to the unit
        self.frozen = False
        self._index_device: torch.device | None = None  # where the slices' index tensors live

    # ---- public state -----------------------------------------------------------------
    def predicted_ms(self, removed=None) -> dict[str, float] | None:
        """The latency model's prediction (int8 and float export) of the structure with
        `removed` groups gone (default: the zeroed ones); None without a latency model."""
        if self.latency is None:
            return None
        return self.latency.forms_ms(self.latency.state(self.zeroed if removed is None else removed))

    @property
    def target_groups(self) -> int:
        """K requested by the sparsity budget (before unit rounding); under a BOPs or latency
        budget, the count the last plan found for it."""
        if self.target_sparsity is None:
            return self.planned or 0
        return round(self.target_sparsity * len(self.views))

    @property
    def structure_version(self) -> int:
        """Changes exactly when a commit zeroes groups: the training loop then evaluates with
        re-estimated BatchNorm statistics (train.loop.refreshed_batchnorm)."""
        return len(self.zeroed)

    def group_sparsity(self) -> float:
        return len(self.zeroed) / len(self.views) if self.views else 0.0

    def mean_bits(self, kind: str | None = None, bounded: bool = False) -> float:
        """Mean bit width over the layers (of `kind`: weight / act). `bounded`: each layer's
        bits capped at the running upper bound, as deployed: in warm-up a quantizer is not yet
        bounded and its free bit width (e.g. 46) means "float", shown as the start bound."""
        vals = [min(float(layer.bits().mean()), self.upper_bits(layer)) if bounded else float(layer.bits().mean())
                for layer in self.layers if kind is None or (layer.weight is not None) == (kind == "weight")]
        return sum(vals) / len(vals) if vals else 32.0

    def upper_bits(self, layer: QuantTarget, step: int | None = None) -> float:
        """b_u of the running projection period: start - j * reduction after j reductions
        (one per period, B in all), never below b_u or b_l (departure: B periods, B reductions)."""
        info = self.stages.stage(self.step_count if step is None else step)
        periods = self.stages.projection_periods
        if info.name == "warmup":
            return layer.start
        if periods == 0:  # no projection periods: the final bound at once
            return max(layer.high, layer.low)
        j = min(info.period + 1, periods) if info.name == "projection" else periods
        reduction = self.bit_reduction or (layer.start - layer.high) / periods
        return max(layer.high, layer.low, layer.start - j * reduction)

    # ---- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._follow_device()
        k = self.step_count
        info = self.stages.stage(k)
        stage = info.name
        ghat: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p, g in zip(params, base_opt.directions(params, [self.state[p] for p in params], group, self.base)):
                ghat[id(p)] = g
        if k in self._taylor_steps and not self.stopped:
            self.taylor.add()
        if stage == "cooldown" and not self.frozen:
            self._freeze_bits()
        caps = []  # (d entries, bound) from the forgetting rule: applied after this step's update of d
        if stage == "pruning":
            if info.period != self.period:
                self._start_period(info.period, ghat)
            if self.redundant and info.step_in_period >= self.recovery_steps:
                w = self.recovery_steps  # R shrinks to zero over the period's last steps
                caps = self._forget(ghat, info.period_steps - w, info.step_in_period - w)
        for group in self.param_groups:  # p <- p - lr ghat, one foreach call per group
            params = [p for p in group["params"]
                      if id(p) in ghat and not (self.frozen and id(p) in self._d_params)]
            base_opt.decoupled_decay(params, group, self.base)
            if params:
                torch._foreach_add_(params, [ghat[id(p)] for p in params], alpha=-group["lr"])
        for entries, bound in caps:  # the descent rule bounds d from above; d keeps its own step below it
            entries.cap(bound)
        self._keep_positive()
        if stage in ("projection", "pruning"):
            self._project_bits()
        if self.frozen and self.layers:  # cool-down: d follows the frozen bits as q_m and t keep training
            self._follow_frozen_bits()
        if stage == "pruning" and info.step_in_period == info.period_steps - 1:
            self._commit()
        self.masks.apply()
        self.step_count += 1
        return loss

    # ---- stage mechanics -----------------------------------------------------------------
    def _follow_device(self) -> None:
        """Move the groups' index tensors to the parameters' device: the optimizer is built
        on the CPU module, and train() moves it (e.g. to CUDA) afterwards."""
        device = self.views[0].slices[0].param.device if self.views else None
        if device is None or device == self._index_device:
            return
        for view in self.views:
            for s in view.slices:
                s.index = s.index.to(device)
        self._index_device = device

    # Per-quantizer updates run as torch._foreach ops over all layers: one call per op, not one
    # per op and layer (each quantizer's d and q_m are tiny tensors: the Python cost was the
    # step's). Each computes what Quantizer.clamp_ / QuantTarget.d_for compute, bit for bit.
    def _keep_positive(self) -> None:
        if self.layers:
            torch._foreach_clamp_min_([layer.quantizer.d for layer in self.layers], D_FLOOR)
            torch._foreach_clamp_min_([layer.quantizer.q_m for layer in self.layers], Q_FLOOR)

    def _tops(self) -> list[torch.Tensor]:
        """q_m^t of every layer (q_m floored), detached: the numerator of d(b) (d_of_bits)."""
        q_m = torch._foreach_clamp_min([layer.quantizer.q_m.detach() for layer in self.layers], Q_FLOOR)
        return torch._foreach_pow(q_m, [layer.t().detach() for layer in self.layers])

    def _project_bits(self) -> None:
        """d <- clip(d, d(b_u current), d(b_l)) for EVERY quantizer: after each step
        b_l <= b <= b_u current (departure: per layer, weights and activations alike)."""
        if not self.layers:
            return
        tops, ds = self._tops(), [layer.quantizer.d for layer in self.layers]
        hi = torch._foreach_div(tops, [levels_of(layer.low, layer.quantizer.signed, d.dtype)
                                       for layer, d in zip(self.layers, ds)])
        lo = torch._foreach_div(tops, [levels_of(self.upper_bits(layer), layer.quantizer.signed, d.dtype)
                                       for layer, d in zip(self.layers, ds)])
        torch._foreach_minimum_(ds, hi)
        torch._foreach_maximum_(ds, lo)

    def _follow_frozen_bits(self) -> None:
        """Cool-down: d <- d(frozen bits) at the current q_m and t, for every layer."""
        tops, ds = self._tops(), [layer.quantizer.d for layer in self.layers]
        for signed in (True, False):
            index = [i for i, layer in enumerate(self.layers) if layer.quantizer.signed == signed]
            if not index:
                continue
            bits = [self.layers[i].quantizer.frozen_bits for i in index]
            steps = torch._foreach_div([tops[i] for i in index], levels_foreach(bits, signed))
            torch._foreach_copy_([ds[i] for i in index], steps)

    def _freeze_bits(self) -> None:
        for layer in self.layers:
            layer.quantizer.freeze_bits(layer.deployable(layer.bits()))
        self.frozen = True

    @property
    def _knapsack(self) -> bool:
        """A latency budget picked by the knapsack: it plans with the Taylor scores (optim/taylor.py)."""
        return self.target_latency_ms is not None and self.latency_selection == "knapsack"

    def _budget(self, s: dict[int, float]) -> int:
        """K: the sparsity's count, or the smallest K whose planned removal meets the BOPs target
        or (latency_selection "count") the latency budget."""
        if self.target_latency_ms is not None:
            meets = lambda removed: self.latency.ms(self.latency.state(removed)) <= self.target_latency_ms  # noqa: E731
        elif self.target_bops is not None:
            meets = lambda removed: self.bops_fn(removed) <= self.target_bops  # noqa: E731
        else:
            return self.target_groups
        lo, hi = 0, len(self.views) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if meets(plan(self.views, s, mid, self.unit, self.zeroed)):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _start_period(self, period: int, ghat: dict[int, torch.Tensor]) -> None:
        if self._knapsack:  # the loss-based scores of the batches up to this step (optim/taylor.py)
            s = self.taylor.scores()
            self.taylor.reset()
        else:
            s = scores([v for v in self.views if v.id not in self.zeroed], ghat, self.importance)
        s.update({gid: -1.0 for gid in self.zeroed})
        if self.stopped or (self.target_latency_ms is not None and self.latency is None):
            final = set(self.zeroed)  # the guard stopped pruning; or off rank 0: rank 0's plan comes below
        elif self._knapsack:
            final = plan_latency(self.views, s, self.target_latency_ms, self.unit, self.zeroed, self.latency)
        else:  # the importance plan of the budget's K (for a latency budget, the smallest K within it)
            final = plan(self.views, s, self._budget(s), self.unit, self.zeroed)
        periods = self.stages.pruning_periods
        step = final
        if period < periods - 1 and not self.stopped:
            # this period's share of the plan, itself a plan: every layer's kept width after each
            # commit is on the unit, as at the end, since the quality guard may stop at any commit
            # (a slice of the score-sorted plan left widths such as 17 of 32, which onnxruntime
            # runs slower than the unpruned layer). Groups outside the final plan come last.
            upto = round(len(final) * (period + 1) / periods)
            outside = max(s.values(), default=0.0) + 1.0
            step = plan(self.views, {g: (v if g in final else outside + v) for g, v in s.items()}, upto,
                        self.unit, self.zeroed)
        todo = sorted(step - self.zeroed, key=lambda g: s.get(g, 0.0))
        # under torchrun every rank scores the same all-reduced gradients; rank 0's plan is taken
        # so that a last-bit difference can never split the ranks' structures
        self.planned, self.redundant = distributed.agree((len(final), todo))
        self.period = period

    def _forget(self, ghat: dict[int, torch.Tensor], steps: int, tau: int) -> list[tuple[_DEntries, torch.Tensor]]:
        """One step of progressive forgetting on R: choose gamma and the d entries of R's
        quantized weights, then x_R <- x_R - gamma * Q(x)_R. Returns the d entries with the
        cap the descent rule puts on them (the caller applies it after this step's base update).

        The rule (docs/algorithm.md) is an upper bound: any d at or below it keeps the step a
        descent direction (a finer step only shrinks the rounding term). We cap d there rather
        than set it to the bound: setting it put a per-tensor layer at b_l (the coarsest step,
        the bound wherever cos(r, g) >= 0) as soon as R touched any of its channels, and the
        cool-down froze it there (CREPE's layers next to pruned channels all ended at their
        lowest width: docs/measurements.md, "QASSO: the forgetting rule caps the step size")."""
        lr = self.param_groups[0]["lr"]
        slices = merge_slices([self._by_id[g] for g in self.redundant])  # one per (tensor, axis)
        quantized = [s for s in slices if s.name in self._weight_layer]
        terms = {id(s): self._quant_terms(self._weight_layer[s.name], s) for s in quantized}  # (c, r, Q) of R
        c, g = self._flat_cg(slices, terms, ghat)
        gamma = forget_rate(_cos(c, g), lr * float(g.norm()), float(c.norm()), max(steps - tau, 1), self.forget)
        entries = self._d_entries(slices, terms, ghat)
        for _ in range(64):  # shrink gamma until every d allows the descent (d >= d(b_u))
            chosen = [self._descent_d(e, gamma, lr) for e in entries]
            if all(ok for _, ok in chosen):
                break
            gamma *= 0.8
        caps = [(e, d) for e, (d, _) in zip(entries, chosen)]
        for e, bound in caps:
            e.cap(bound)
        capped = {e.layer.weight for e, _ in caps}  # their d may have changed: Q(x) follows
        terms.update({id(s): self._quant_terms(self._weight_layer[s.name], s) for s in quantized if s.name in capped})
        for s in slices:  # x_R <- x_R - gamma * Q(x)_R
            q = terms[id(s)][2] if id(s) in terms else s.view()
            s.param.index_copy_(s.axis, s.index, s.view() - gamma * q)
        return caps

    @staticmethod
    def _flat_cg(slices: list[Slice], terms: dict, ghat: dict[int, torch.Tensor]):
        """R's clipped values c (raw values for unquantized tensors) and processed gradient g,
        each flattened to one float64 vector over every slice of R."""
        c, g = [], []
        for s in slices:
            grad = ghat.get(id(s.param))
            g.append(s.view(grad).reshape(-1) if grad is not None else s.view().new_zeros(s.view().numel()))
            c.append((terms[id(s)][0] if id(s) in terms else s.view()).reshape(-1))
        return torch.cat(c).double(), torch.cat(g).double()

    def _d_entries(self, slices: list[Slice], terms: dict, ghat: dict[int, torch.Tensor]) -> list[_DEntries]:
        """The d entries the forgetting rule sets, with <r, g> and ||g||^2 over the R entries
        each one quantizes. Per-tensor weight: its one d, over every slice of R in it (all of
        the layer's channels then share R's d). Per-channel weight: only the d of R's OUTPUT
        channels (slices on the quantizer's axis), one per channel: those channels go to zero,
        every other channel keeps its learned d (R on a layer's input axis sets none)."""
        acc: dict[str, list] = {}  # weight name -> [channel index tensors, <r, g> parts, ||g||^2 parts]
        for s in slices:
            layer = self._weight_layer.get(s.name)
            if layer is None or (layer.axis is not None and s.axis != layer.axis):
                continue
            grad = ghat.get(id(s.param))
            gs = s.view(grad).double() if grad is not None else s.view().new_zeros(s.view().shape, dtype=torch.float64)
            rs = terms[id(s)][1].double()
            if layer.axis is None:  # one row: the whole slice
                rows_r, rows_g = rs.reshape(1, -1), gs.reshape(1, -1)
            else:  # (channels of R, entries per channel)
                rows_r, rows_g = (t.movedim(s.axis, 0).reshape(s.index.numel(), -1) for t in (rs, gs))
            parts = acc.setdefault(s.name, [[], [], []])
            parts[0].append(s.index)
            parts[1].append((rows_r * rows_g).sum(1))
            parts[2].append(rows_g.pow(2).sum(1))
        out = []
        for name, (index, dot, gg) in acc.items():
            layer = self._weight_layer[name]
            if layer.axis is None:
                out.append(_DEntries(layer, None, torch.cat(dot).sum().reshape(1), torch.cat(gg).sum().reshape(1)))
            else:
                out.append(_DEntries(layer, torch.cat(index), torch.cat(dot), torch.cat(gg)))
        return out

    @staticmethod
    def _descent_d(e: _DEntries, gamma: float, lr: float) -> tuple[torch.Tensor, bool]:
        """d per entry so that the forgetting step stays a descent direction: d(b_l) where
        cos(r, g) >= 0; else d = -zeta * eta * alpha * ||g|| / (gamma * cos(r, g) * ||r||)
        = -zeta * eta * alpha * ||g||^2 / (gamma * <r, g>), capped at d(b_l). ok: every
        entry is >= d(b_u) before the cap (else the caller shrinks gamma)."""
        lo, hi = e.bounds()
        negative = e.dot < 0
        d = torch.where(negative, -ZETA * ETA * lr * e.gg / (gamma * torch.where(negative, e.dot, -1.0)), hi)
        return torch.minimum(d, hi), bool((d >= lo).all())

    @staticmethod
    def _quant_terms(layer: QuantTarget, s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clipped values c, rounding residual r, quantized values Q) of the weight slice s
        (optim.slices.Slice of the layer's weight), shaped like s.view(): only R's entries
        are computed, not the whole tensor (a transformer's R touches a few rows of each)."""
        q, w = layer.quantizer, s.view()

        def sliced(value: torch.Tensor) -> torch.Tensor:  # d / q_m / t broadcast over the slice
            b = layer.broadcast(value.detach(), s.param.shape)
            return b.index_select(s.axis, s.index) if b.dim() and b.shape[s.axis] > 1 else b

        d, q_m, t = sliced(q.d), sliced(q.q_m), sliced(layer.t())
        u = torch.minimum(w.abs(), q_m).pow(t)
        sign = torch.sign(w)
        return sign * u, sign * (torch.round(u / d) - u / d), sign * d * torch.round(u / d)

    def _commit(self) -> None:
        """R reaches exact zero and stays there."""
        for gid in self.redundant:
            view = self._by_id[gid]
            for s in view.slices:
                s.param.index_fill_(s.axis, s.index, 0.0)
            self.masks.add(view)
            self.zeroed.add(gid)
        self.redundant = []

    # ---- the quality guard's rollback (optim.guard) ------------------------------------------
    def snapshot(self) -> dict:
        """Copies of everything a pruning period changes: the module's parameters and buffers
        (weights, quantizers, BatchNorm statistics) and this optimizer's state."""
        return copy.deepcopy({"module": self.module.state_dict(), "optimizer": self.state_dict()})

    def rollback(self, snap: dict) -> None:
        """Back to `snap` (taken at a period's start), and no more removals: the groups zeroed
        before that period stay the final structure. The step count and the schedule go on."""
        step, period = self.step_count, self.period
        self.module.load_state_dict(snap["module"])
        self.load_state_dict(copy.deepcopy(snap["optimizer"]))  # the live state never aliases the snapshot
        self.step_count, self.period, self.redundant = step, period, []
        self.stopped, self.planned = True, len(self.zeroed)

    @torch.no_grad()
    def fall_back(self, snap: dict) -> None:
        """The end of a guarded run whose final model missed the tolerance: back to `snap` (the
        last state the guard found within it), as rollback. Bits frozen since (the cool-down)
        are frozen again from the snapshot's widths, snapped to the deployed ones, so the
        export gets widths its runtime executes as after any cool-down."""
        frozen = self.frozen
        if frozen:  # frozen_bits is a None buffer in a snapshot taken before the freeze: not restored by it
            for layer in self.layers:
                layer.quantizer.unfreeze()
        self.rollback(snap)
        if frozen and not self.frozen:
            self._freeze_bits()

    @torch.no_grad()
    def regrow(self, snap: dict, sources: list[dict]) -> list[int]:
        """The cool-down probe's way back (optim.guard): to the structure of `snap` (a pruning
        period's start), keeping the training since, where fall_back would discard it. The
        groups removed after `snap` come back with their entries (weights, BatchNorm statistics,
        the optimizer's moments) from the last of `sources` (period-start snapshots in step
        order) taken before their removal, and so do a regrown output channel's entries of a
        per-channel weight quantizer (_regrow_channels); every other entry, the other
        quantizers and the frozen bits stay as trained. No more removals. Returns the groups
        regrown."""
        keep = set(snap["optimizer"]["qasso"]["zeroed"])
        back = self.zeroed - keep
        last = {}  # group -> index of the last source in which it was still there (sources in step order)
        for i, source in enumerate(sources):
            for gid in back - set(source["optimizer"]["qasso"]["zeroed"]):
                last[gid] = i
        live = self.module.state_dict(keep_vars=True)  # qualified name -> the live tensor
        names = {id(t): name for name, t in live.items()}
        params = [p for group in self.param_groups for p in group["params"]]
        index_of = {id(p): i for i, p in enumerate(params)}
        # latest sources first: an entry two regrown groups share (a conv weight's [out, in] of two removed
        # channels) ends with the earlier group's source, the last state before either removal zeroed it
        for gid in sorted(last, key=lambda g: (-last[g], g)):
            source = sources[last[gid]]
            for m in self._by_id[gid].group.members:
                name = self.module.tensor_of.get(m.tensor)
                if name not in live:
                    continue
                index = torch.tensor(m.indices, dtype=torch.long, device=live[name].device)
                self._restore_entries(live[name], m.axis, index, source, name, index_of)
                layer = self._weight_layer.get(m.tensor)
                if layer is not None and layer.axis is not None and m.axis == layer.axis:
                    self._regrow_channels(layer, index, source, names, index_of)
        self.zeroed, self.redundant = keep, []
        self._mask_zeroed()
        self.stopped, self.planned = True, len(self.zeroed)
        return sorted(back)

    @torch.no_grad()
    def _restore_entries(self, tensor: torch.Tensor, axis: int, index: torch.Tensor, source: dict, name: str,
                         index_of: dict[int, int]) -> None:
        """`tensor`'s entries `index` on `axis`, and their optimizer moments, from the snapshot
        `source` (`name`: the tensor's key in its module state)."""
        was = source["module"][name].to(tensor.device)
        tensor.data.index_copy_(axis, index, was.index_select(axis, index))
        moments = source["optimizer"]["state"].get(index_of.get(id(tensor), -1), {})
        for key, value in self.state.get(tensor, {}).items():
            if torch.is_tensor(value) and value.shape == tensor.shape and key in moments:
                value.index_copy_(axis, index, moments[key].to(value.device).index_select(axis, index))

    @torch.no_grad()
    def _regrow_channels(self, layer: QuantTarget, index: torch.Tensor, source: dict, names: dict[int, str],
                         index_of: dict[int, int]) -> None:
        """Regrown output channels `index` of a per-channel weight quantizer: their q_m and d
        (and moments) from `source`. The forgetting had set their d to the coarsest step and
        the cool-down froze that width (b_l where the runtime runs it: int4 MatMul weights, free
        widths); left so, a regrown channel of an int8 layer would train on at b_l's grid. In the
        cool-down their frozen widths are made again from the source's d, snapped as any freeze."""
        q = layer.quantizer
        for p in (q.q_m, q.d):
            self._restore_entries(p, 0, index, source, names[id(p)], index_of)
        if q.frozen_bits is not None:
            t = layer.t().detach()
            bits = layer.deployable(bits_of(q.d[index], q.q_m[index], t, q.signed))
            q.frozen_bits.index_copy_(0, index, bits.to(q.frozen_bits.dtype))
            q.d.index_copy_(0, index, d_of_bits(bits, q.q_m[index].clamp_min(Q_FLOOR), t, q.signed).to(q.d.dtype))

    def _mask_zeroed(self) -> None:
        """Masks of exactly the zeroed groups (after a load or a regrowth changed them)."""
        self.masks = ZeroMasks()
        for gid in self.zeroed:
            self.masks.add(self._by_id[gid])

    # ---- persistence --------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["qasso"] = {
            "step_count": self.step_count, "zeroed": sorted(self.zeroed), "redundant": list(self.redundant),
            "period": self.period, "planned": self.planned, "frozen": self.frozen,
            "frozen_bits": [layer.quantizer.frozen_bits.tolist() if self.frozen else None for layer in self.layers],
            "latency": self.latency.snapshot() if self.latency is not None else None,
            "target_latency_ms": self.target_latency_ms, "stopped": self.stopped,
            "recovery_steps": self.recovery_steps,  # a guard's retry changes it for one period
            "taylor": self.taylor.state_dict() if self.taylor is not None else None,
        }
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        extra = state.pop("qasso")
        super().load_state_dict(state)
        self.step_count, self.period, self.planned = extra["step_count"], extra["period"], extra["planned"]
        self.zeroed, self.redundant = set(extra["zeroed"]), list(extra["redundant"])
        self.stopped = bool(extra.get("stopped", False))
        self.recovery_steps = int(extra.get("recovery_steps", self.recovery_steps))
        if self.taylor is not None and extra.get("taylor"):
            self.taylor.load_state_dict(extra["taylor"])
        self._follow_device()
        self._mask_zeroed()
        if self.latency is not None and extra.get("latency"):
            self.latency.restore(extra["latency"])
        if extra.get("target_latency_ms") is not None:  # a speedup's budget in ms as first measured
            self.target_latency_ms = extra["target_latency_ms"]
        self.frozen = extra["frozen"]
        if self.frozen:
            for layer, bits in zip(self.layers, extra["frozen_bits"]):
                layer.quantizer.freeze_bits(torch.tensor(bits, dtype=layer.quantizer.d.dtype))


FORGET_RULES = ("spec", "budget")
# under a latency budget: "count" removes the importance plan's groups (optim.selection.plan, as for
# a sparsity) up to the smallest count predicted within the budget; "knapsack" picks cluster steps
# by loss-based importance (optim/taylor.py) per millisecond saved (HALP; optim.selection.plan_latency)
LATENCY_SELECTIONS = ("count", "knapsack")


def forget_rate(cos_cg: float, step_norm: float, c_norm: float, steps_left: int, rule: str = "spec") -> float:
    """The forget rate gamma of one step (docs/algorithm.md section 3). step_norm = alpha ||g||.

    cos(c, g) >= 0: 1 / (T - tau), so R reaches zero at the period's end. cos(c, g) < 0: the
    step alpha g + gamma c stays a descent direction while gamma < bound = alpha ||g|| /
    (|cos| ||c||). "spec" takes (1 - eta) bound, 0.1 % of that budget: with Adam directions
    (alpha ||g|| small, cos slightly negative on most steps) R keeps most of its norm until
    the commit zeroes it. "budget" takes min(1 / (T - tau), eta bound): the same descent
    guarantee, progressive forgetting whenever the budget allows it (the default, the more
    accurate one: docs/measurements.md, "End to end")."""
    if cos_cg >= 0:
        return 1.0 / steps_left
    bound = step_norm / (-cos_cg * c_norm) if c_norm > 0 else math.inf
    if rule == "spec":
        return (1 - ETA) * bound
    return min(1.0 / steps_left, ETA * bound)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine clamped to [-1, 1]; 0 for a zero vector (departure: never NaN)."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0 or math.isnan(na) or math.isnan(nb):
        return 0.0
    return max(-1.0, min(1.0, float(a @ b) / (na * nb)))
