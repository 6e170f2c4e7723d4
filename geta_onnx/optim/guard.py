"""The quality guard (`--max-accuracy-drop`, `--min-fidelity`): the budget is found inside
the one training run.

QASSO removes groups period by period. The guard, a training-loop hook, does seven things:
- before each pruning period's removal, it snapshots the module and the optimizer (QASSO.snapshot);
- after each commit and `opt.recovery_steps` steps of training the structure it left
  (QASSO's forgetting of the next period starts after them), it scores the model on
  held-out batches, with BatchNorm statistics re-estimated (train.loop.refreshed_batchnorm),
  and keeps a snapshot of the last state that met the tolerance;
- when the drop from the original passes the tolerance, it rolls the period back
  (QASSO.rollback). No group is removed after that, and the remaining steps train the
  structure that met the tolerance. With `retry_steps` R, a commit scored right after it
  (no recovery steps) first gets a retry: the next R steps train its structure (the next
  period's forgetting waits for them), and only a second miss rolls it back. Each retry
  measures the share of the drop those steps recovered; when the best share seen so far
  would not bring a new miss within the tolerance, it is rolled back without one;
- before the first period, it scores the quantized, unpruned model. When that alone misses
  the tolerance (after a retry, with `retry_steps`), it finds the layers whose quantization
  costs the most (each layer's quantizers turned off in turn, ranked by `rank_score`, as
  NNCF's accuracy control does for post-training quantization) and raises FloatLayers: the
  run starts over with them in float. When no `max_float` layers bring the quality within
  the tolerance, the run stops;
- with a cool-down probe (`probe_step`), a check that misses does not stop the run or the
  pruning; the probe scores the budget's structure part-way into the cool-down and keeps it, or
  goes back to the state after the last commit whose drop, scaled by the recovery the probe
  measured, is predicted within the tolerance (_probe);
- after the last step (`finish`), it scores the final model; when that misses the tolerance,
  the run falls back to the last snapshot that met it (QASSO.fall_back). When there is none
  (a probe's run) or that misses too, the costliest layers go to float in the trained model,
  picked as the first check's fallback picks them (`floated_after_training`; the run's plan
  leaves them out: QuantPlan.with_float);
- after the export, compress gives it the file's drop on the whole eval split
  (`measured_drop`); when that misses, `export_fallback` moves to the last state within the
  tolerance for a second export, and compress ships the better file.

Its resolution is one period: more `[schedule] pruning_periods` give finer steps. The budget
(sparsity, BOPs or latency) stays the most the run removes. docs/guard.md has the details.

    guard = QualityGuard(opt, schedule, score, baseline=0.91, tolerance=0.005, metric="accuracy")
    train(..., hooks=[guard])
    guard.finish()  # after training: the end check, and the fallback when it misses
    guard.history   # [{"period", "removed", "sparsity", ("predicted_speedup"), "quality", "drop", "action"}, ...]
    guard.end       # {"quality", "drop", "action", ("fallback_period", "quality_after", "drop_after"),
                    #  ("float_layers", "quality_float", "drop_float") or ("float_search")}
    guard.exported  # set by compress: {"split", "samples", "drop", "action", ("drop_fallback"), ("unseen")}
    guard.cost      # {"checks": scores taken, "check_seconds", "float_search_seconds"}: what the guard added
"""
from __future__ import annotations

import time

from ..errors import GetaError
from ..quant.quantizer import quantizers_off
from ..train import distributed


class FloatLayers(Exception):
    """The first check's verdict: these layers go back to float, and the run starts over
    without their quantizers (geta.run_geta). `found`: {"quality": the quantized model's score,
    "layers": [{"node", "rank_score", "quality_cumulative"}]} in the order chosen:
    rank_score with only that layer's quantizers off (QualityGuard's rank_score: higher is
    better), quality_cumulative (the guard's score) with it and every layer before it off."""

    def __init__(self, found: dict):
        super().__init__(", ".join(la["node"] for la in found["layers"]))
        self.found = found

    @property
    def nodes(self) -> list[str]:
        return [la["node"] for la in self.found["layers"]]


class QualityGuard:
    def __init__(self, opt, schedule, score, *, baseline: float, tolerance: float, metric: str,
                 layer_quantizers: dict[str, list] | None = None, max_float: int = 0,
                 floated: dict | None = None, samples: int | None = None, retry_steps: int = 0,
                 rank_score=None, probe_step: int | None = None, regrow: bool = True, refresh=None,
                 held_out: str = "eval", fitted: dict | None = None):
        """`score()`: the quality of the module now on the guard's held-out batches (higher is
        better, the same batches on every call); `baseline`: the original's on them.
        `layer_quantizers`: layer node -> {qualified name: module} of the quantizers its sites
        use, the candidates of the per-layer float fallback, of which at most `max_float` go
        to float (0: none, the run stops at a first check that misses). `floated`: what an
        earlier attempt of this run put in float (FloatLayers.found): reported, and no second
        fallback. `samples`: how many held-out samples a check scores (reported); `held_out`:
        where they come from, "eval" (the eval split's first ones) or "train" (training samples
        held out for the guard, never trained on), reported; `fitted`: guarding.fitted_original's
        record when the original scores clearly higher there than on the eval split, reported.
        `retry_steps`:
        the recovery steps a commit that misses gets before its second check (0: none).
        `rank_score()`: what orders the float fallback's candidates (higher is better; e.g. the
        negated held-out loss on fewer batches: continuous, so it does not tie as accuracy on a
        few batches does); its cumulative checks use `score` (default: `score` for both).
        `probe_step`: the cool-down step before which the probe scores the structure (None: the
        commits decide, as above; see _probe). `regrow`: the probe goes back by QASSO.regrow
        (the training since kept), else by QASSO.fall_back (the period start's whole state).
        `refresh()`: re-estimate the live module's BatchNorm statistics as `score` does on its
        copy; a state shipped without training after it (the end's fallbacks) gets them, so the
        file is the state the check scored (None: no BatchNorm, or the caller's score does not
        re-estimate)."""
        self.opt, self.schedule, self.score = opt, schedule, score
        self.baseline, self.tolerance, self.metric = baseline, tolerance, metric
        self.layer_quantizers, self.max_float = layer_quantizers or {}, max_float
        # quantizer name -> the candidate layers that use it, and -> its module (for _gone_with)
        self._users: dict[str, set[str]] = {}
        self._modules: dict[str, object] = {}
        for node, quantizers in self.layer_quantizers.items():
            for name, q in quantizers.items():
                self._users.setdefault(name, set()).add(node)
                self._modules[name] = q
        self.floated, self.samples, self.retry_steps = floated, samples, retry_steps
        self.held_out, self.fitted = held_out, fitted
        self.rank_score = rank_score or score
        self.probe_step, self.regrow, self.refresh = probe_step, regrow, refresh
        # with a probe: the state at each pruning period's start, the probe's rollback targets:
        # [{"period", "step": taken after this step, "within": its last check met the tolerance, "state"}]
        self.starts: list[dict] = []
        # what each retry recovered: [{"period", "drop_at_commit", "drop_after"}] (the learned margin)
        self.recoveries: list[dict] = []
        self.history: list[dict] = []
        self.snap: dict | None = None  # the running period's start (its rollback target)
        # the last state a check found within the tolerance (the fallback target):
        # {"state": a snapshot, "step": taken after this step, "period": of the check (-1: before pruning)}
        self.good: dict | None = None
        # a commit whose check waits for its recovery steps: {"period", "check_at": the step before which it
        # runs, ("drop_at_commit": a retry's first score)}
        self.pending: dict | None = None
        self.end: dict | None = None  # the end check (finish)
        # the exported file's check (compress): {"split", "samples", "drop", "action", ("drop_fallback"),
        # ("unseen": {"samples", "drop"} on the eval samples no check scored: after the checks' ones, or the
        # whole split when the checks scored held-out training samples)}
        self.exported: dict | None = None
        # wall time the guard added to training (a resumed run adds to its checkpoint's): the checks' scores
        # (BatchNorm refresh + held-out forward) and the float fallback's search (its ranking and cumulative scores)
        self.cost = {"checks": 0, "check_seconds": 0.0, "float_search_seconds": 0.0}

    def _timed_score(self) -> float:
        """score(), counted in `cost`."""
        start = time.perf_counter()
        quality = self.score()
        self.cost["checks"] += 1
        self.cost["check_seconds"] += time.perf_counter() - start
        return quality

    def _check(self, period: int, action_over: str) -> bool:
        """Score now, record it, and whether the drop passes the tolerance (rank 0 decides)."""
        quality = self._timed_score()
        drop = self.baseline - quality
        over = bool(distributed.agree(drop > self.tolerance))
        self.history.append({"period": period, "removed": len(self.opt.zeroed), "sparsity": self.opt.group_sparsity(),
                             **self._speedup(), "quality": quality, "drop": drop,
                             "action": action_over if over else "kept"})
        return over

    def _speedup(self) -> dict:
        """{"predicted_speedup": original / predicted time of the structure now} under a latency
        model (the faster export form, as compress ships), else {}: the curve's x axis."""
        predicted = self.opt.predicted_ms()
        if not predicted:
            return {}
        return {"predicted_speedup": self.opt.latency.reference_ms / min(predicted.values())}

    def before_step(self, step: int) -> None:
        if self.pending is not None and step >= self.pending["check_at"]:
            self._check_commit(self.pending["period"], step - 1)
        if step == self.probe_step and self.starts and not any(h.get("probe") for h in self.history):
            self._probe(step)
            return
        info = self.schedule.stage(step)
        # a period's removal starts after its recovery steps: the snapshot is the state just before
        if info.name != "pruning" or info.step_in_period != self.opt.recovery_steps or self.opt.stopped:
            return
        start = not self.history or (self.history[-1]["period"] < 0 and self.history[-1]["action"] == self._retry_action)
        verdict = self._check_start() if start else "kept"
        if verdict == "retry":
            return
        if verdict == "over" and self.probe_step is not None:  # too early to tell: the probe decides
            self.history[-1]["action"] = self._probe_action
        elif verdict == "over":
            found = None if self.floated else self._float_fallback(self.history[-1]["quality"])
            if found:
                raise FloatLayers(found)
            h = self.history[-1]
            tried = (f" with {', '.join(la['node'] for la in self.floated['layers'])} in float" if self.floated else
                     f"; no {self.max_float} layers in float bring it within the tolerance" if self.max_float else "")
            raise GetaError(
                f"--max-accuracy-drop / --min-fidelity: before any pruning, the quantized model already scores "
                f"{h['quality']:.4f} {self.metric} on the guard's held-out batches, {h['drop']:.4f} below the "
                f"original's {self.baseline:.4f} (tolerance {self.tolerance:g}){tried}; allow a larger drop, "
                "train longer, or widen the bit ranges (--weight-bits, --act-bits)")
        last = self.history[-1]
        within = last["action"] == "kept"  # with a probe, a commit that missed goes on too
        if within:
            if self.good is None or self.good["step"] != step - 1:  # else: taken after the last check, one step ago
                self.good = {"state": self.opt.snapshot(), "step": step - 1, "period": last["period"]}
            self.snap = self.good["state"]  # the state the last check scored: within the tolerance
        else:
            self.snap = self.opt.snapshot()
        if self.probe_step is not None:
            self.starts.append({"period": info.period, "step": step - 1, "drop": last["drop"], "within": within,
                                "state": self.snap})

    def _check_start(self) -> str:
        """The check before the first removal of the quantized, unpruned model: "kept", "over"
        the tolerance, or "retry". A first miss gets a retry, as a commit's does: with the
        default schedule quantization-aware training is only 7 % in here, and the first
        period's removal waits `retry_steps` more steps of it."""
        retried = self.history[-1] if self.history else None
        over = self._check(-1, "start")
        h = self.history[-1]
        if retried is not None:
            self._retried(h, retried["drop"])
        elif over and self.retry_steps:
            self._retry(h)  # the first period's forgetting waits for the retry's steps
            return "retry"
        return "over" if over else "kept"

    def _float_fallback(self, quality: float, limit: int | None = None) -> dict | None:
        """The layers to keep in float, as NNCF's accuracy control picks them: each candidate
        scored with only its quantizers off, then turned off in the order of that score (best
        first), one more at a time, until the quality is within the tolerance (FloatLayers.found;
        `quality`: the quantized model's). None when `limit` (default `max_float`) layers do
        not get there. Rank 0's choice is everyone's."""
        limit = self.max_float if limit is None else limit
        if limit <= 0 or not self.layer_quantizers:
            return None
        start = time.perf_counter()
        try:
            return self._float_search(quality, limit)
        finally:
            self.cost["float_search_seconds"] += time.perf_counter() - start

    def _float_search(self, quality: float, limit: int) -> dict | None:
        # hopeless cases cost one check each, not a ranking (one score per layer) and `limit` checks:
        # every candidate in float, then the `limit` best ranked together (MiniLM: 281 s of a failed search)
        if not self._within_with_off(set(self.layer_quantizers)):
            return distributed.agree(None)
        alone = {}
        for node in self.layer_quantizers:
            with quantizers_off(self._gone_with({node})):
                alone[node] = self.rank_score()
        ranked = sorted(alone, key=lambda n: -alone[n])  # stable: ties keep the layers' graph order
        if len(ranked) > limit and not self._within_with_off(set(ranked[:limit])):
            return distributed.agree(None)
        chosen = []
        for node in ranked[:limit]:
            with quantizers_off(self._gone_with({c["node"] for c in chosen} | {node})):
                cumulative = self.score()
            chosen.append({"node": node, "rank_score": alone[node], "quality_cumulative": cumulative})
            if self.baseline - cumulative <= self.tolerance:
                return distributed.agree({"quality": quality, "layers": chosen})
        return distributed.agree(None)

    def _within_with_off(self, nodes: set[str]) -> bool:
        """Whether the quality meets the tolerance with `nodes` in float (one check; rank 0 decides)."""
        with quantizers_off(self._gone_with(nodes)):
            return bool(distributed.agree(self.baseline - self.score() <= self.tolerance))

    def _gone_with(self, nodes: set[str]) -> list:
        """The quantizers that a run with `nodes` in float would not have: those no other
        quantized layer uses. An activation quantizer shared with a layer that stays quantized
        stays (the float layer then reads the quantized tensor, as in the export), so the score
        is the restarted run's."""
        return [self._modules[name] for name, used_by in self._users.items() if used_by <= nodes]

    def after_step(self, step: int, loss) -> dict:
        info = self.schedule.stage(step)
        if info.name != "pruning" or info.step_in_period != info.period_steps - 1 or self.snap is None:
            return {}
        if self.retry_steps:
            self.opt.recovery_steps = 0  # a retry delays only the forgetting of the period after its miss
        if self.probe_step is not None:  # the commit is scored and recorded; the probe decides
            if not self._check(info.period, self._probe_action):
                self.good = {"state": self.opt.snapshot(), "step": step, "period": info.period}
            self.snap = None
            return {"drop": f"{self.history[-1]['drop']:+.3f}"}
        if self.opt.recovery_steps:  # scored once the structure has trained that long (before_step)
            self.pending = {"period": info.period, "check_at": step + 1 + self.opt.recovery_steps}
            return {}
        self._check_commit(info.period, step, may_retry=bool(self.retry_steps))
        return {"drop": f"{self.history[-1]['drop']:+.3f}"}

    def _check_commit(self, period: int, step: int, may_retry: bool = False) -> None:
        """Score the structure `period` committed (the state after `step`): over the tolerance,
        a retry when `may_retry` and the run's recoveries so far say one can get there (the next
        `retry_steps` train this structure, then it is scored again); else back to the period's
        snapshot (the cool-down's frozen bits frozen again from it) and no more removals. Within
        it, this state is the last one within the tolerance."""
        over = self._check(period, "rolled back; pruning stopped")
        h, retried = self.history[-1], (self.pending or {}).get("drop_at_commit")
        if over and may_retry and distributed.agree(self._worth_retry(h["drop"])):
            self._retry(h)
            self.pending = {"period": period, "check_at": step + 1 + self.retry_steps, "drop_at_commit": h["drop"]}
            return
        if retried is not None:
            self._retried(h, retried)
            self.recoveries.append({"period": period, "drop_at_commit": retried, "drop_after": h["drop"]})
        elif self.opt.recovery_steps:
            h["recovery_steps"] = self.opt.recovery_steps
        elif over and may_retry:
            h["predicted_after_retry"] = self._after_retry(h["drop"])
        if over:
            (self.opt.fall_back if self.opt.frozen else self.opt.rollback)(self.snap)
            h["removed_after"] = len(self.opt.zeroed)
        else:  # the next period (if any) starts from this state and takes this copy as its snapshot
            self.good = {"state": self.opt.snapshot(), "step": step, "period": period}
        self.snap = self.pending = None

    _probe_action = "missed; the cool-down probe decides"

    def _probe(self, step: int) -> None:
        """The cool-down probe, before `step`: score the budget's structure after the cool-down's
        first steps. Within the tolerance, it stays. Else the commits' drops, each scaled by the
        share of the last commit's drop still left at the probe (the recovery this run measured on
        its own cool-down), predict each earlier structure's drop after as many steps: the run goes
        back to the state after the last commit predicted within the tolerance (the unpruned state
        when none is), re-freezing the bits from it, and the rest of the cool-down trains that
        structure. docs/guard.md, "The cool-down probe"."""
        last = self.history[-1]["period"]  # the last commit's check
        over = self._check(last, "rolled back")
        h = self.history[-1]
        h.update(probe=True, step=step)
        if not over:
            self.good = {"state": self.opt.snapshot(), "step": step - 1, "period": last}
        else:
            left = self.history[-2]["drop"]
            h["recovery_left"] = h["drop"] / left if left > h["drop"] else 1.0
            # each start's drop: the check before it (its period's commit; period 0: the start check)
            fits = [st for st in self.starts if max(st["drop"], 0.0) * h["recovery_left"] <= self.tolerance]
            target = distributed.agree(fits[-1]["period"] if fits else self.starts[0]["period"])
            start = next(st for st in self.starts if st["period"] == target)
            h["predicted_drop"] = max(start["drop"], 0.0) * h["recovery_left"]
            how = ""
            if self.regrow:  # each removed group from the last start before its removal
                h["regrown"] = len(self.opt.regrow(start["state"], [st["state"] for st in self.starts
                                                                     if st["period"] >= target]))
                how = f" ({h['regrown']} groups regrown into the trained model)"
            else:
                self.opt.fall_back(start["state"])
            h.update(action=f"rolled back to {_after(target - 1)}{how}", back_to_period=target - 1,
                     removed_after=len(self.opt.zeroed))
            kept = [st for st in self.starts if st["within"] and st["period"] <= target]
            self.good = ({"state": kept[-1]["state"], "step": kept[-1]["step"], "period": kept[-1]["period"] - 1}
                         if kept else None)  # None: no check before the probe met the tolerance
        self.starts = []  # no more rollbacks: the snapshots' memory goes

    def _retry(self, h: dict) -> None:
        """Check `h` missed and gets a retry: the next `retry_steps` train its structure (QASSO's
        next forgetting waits for them), then it is scored again."""
        h["action"] = self._retry_action
        self.opt.recovery_steps = self.retry_steps

    @property
    def _retry_action(self) -> str:
        return f"retry after {self.retry_steps} recovery steps"

    def _retried(self, h: dict, first_drop: float) -> None:
        """Check `h` is a retry's second score; `first_drop`: the miss that started it."""
        h.update(recovery_steps=self.retry_steps, drop_at_commit=first_drop)

    def _after_retry(self, drop: float) -> float | None:
        """The drop a retry is expected to end at: `drop` less the largest share of a drop that
        the run's retries recovered so far (None before the first retry)."""
        shares = [(r["drop_at_commit"] - r["drop_after"]) / r["drop_at_commit"]
                  for r in self.recoveries if r["drop_at_commit"] > 0]
        return drop * (1 - max(shares)) if shares else None

    def _worth_retry(self, drop: float) -> bool:
        expected = self._after_retry(drop)
        return expected is None or expected <= self.tolerance

    def finish(self) -> None:
        """The end check, after the last step: score the final model; when it misses the
        tolerance, fall back to the last state a check found within it (its structure is the
        final one, since no group is removed after that state; the fallback gives up what
        training did since, the cool-down's included) and score that again."""
        if not self.history or self.end is not None:  # no pruning period ran, or finished (a resume)
            return
        if self.pending is not None:  # the run ended inside the last commit's recovery steps
            self._check_commit(self.pending["period"], self.opt.step_count - 1)
        quality = self._timed_score()
        drop = self.baseline - quality
        self.end = {"quality": quality, "drop": drop, "action": "kept"}
        if not distributed.agree(drop > self.tolerance):
            return
        if self.good is None:  # with a probe: no check found a state within the tolerance
            self.end["action"] = "missed; no state within the tolerance to fall back to"
        else:
            self._fall_back_to_good()
            quality = self._timed_score()
            self.end.update({"action": "fell back to the last state within the tolerance",
                             "fallback_period": self.good["period"],
                             "quality_after": quality, "drop_after": self.baseline - quality})
            if not distributed.agree(self.baseline - quality > self.tolerance):
                return
        self._float_after_training(quality)

    def _float_after_training(self, quality: float) -> None:
        """The end check still misses (`quality`, its last score): the layers whose quantization
        costs the most go to float in the trained model, as the first check's fallback picks
        them (at most `max_float` with those an earlier attempt put in float), without training
        again: their quantizers are turned off here, and the run's plan leaves them out
        (QuantPlan.with_float). This is the precision guard of a run whose first check could
        not decide (the cool-down probe's), and the last resort of one whose fallback missed."""
        limit = self.max_float - len((self.floated or {}).get("layers", []))
        found = self._float_fallback(quality, limit)
        if found is None:
            if limit > 0 and self.layer_quantizers:
                self.end["float_search"] = f"no {limit} layers in float bring it within the tolerance"
            return
        for q in self._gone_with({la["node"] for la in found["layers"]}):
            q.enabled = False
        after = found["layers"][-1]["quality_cumulative"]  # scored with every chosen layer in float
        self.end.update(float_layers=found["layers"], quality_float=after, drop_float=self.baseline - after,
                        action=self.end["action"] + f"; {len(found['layers'])} layer(s) to float after training")

    @property
    def floated_after_training(self) -> list[str]:
        """The layers the end check put in float (_float_after_training), in the order chosen."""
        return [la["node"] for la in (self.end or {}).get("float_layers", [])]

    # ---- the exported file: compress scores it on the whole eval split in onnxruntime ----------
    def measured_drop(self, quality: dict) -> float | None:
        """The drop in this guard's metric that compress measured on the exported file
        (evaluate_onnx's dict: accuracy against the original's on the same split, or agreement /
        cosine with the original); None when that metric was not measured."""
        if self.metric == "accuracy":
            if "accuracy" not in quality or "reference_accuracy" not in quality:
                return None
            return float(quality["reference_accuracy"] - quality["accuracy"])
        return float(self.baseline - quality[self.metric]) if self.metric in quality else None

    def export_fallback(self) -> dict | None:
        """When the exported final model misses the tolerance: back to the last state a check
        found within it, as the end check's fallback does. Returns a snapshot of the final state
        (QASSO.rollback to it ships the final model again), or None when no other state is
        kept: the end check fell back already, or the last check scored the final state."""
        if self.good is None or (self.end is not None and "quality_after" in self.end) or \
                self.good["step"] >= self.opt.step_count - 1:
            return None
        final = self.opt.snapshot()
        self._fall_back_to_good()
        return final

    def _fall_back_to_good(self) -> None:
        """Back to the last state a check found within the tolerance, for good (nothing trains
        after it), with the BatchNorm statistics that check scored it with: the checks score a
        copy re-estimated on the pinned refresh batches, while the snapshot holds the running
        statistics of its step, stale right after a commit (docs/guard.md, step 4)."""
        self.opt.fall_back(self.good["state"])
        if self.refresh is not None:
            self.refresh()

    # ---- checkpoint: a run interrupted mid-period resumes with its snapshot ----------------
    def state_dict(self) -> dict:
        return {"history": self.history, "snap": self.snap, "baseline": self.baseline, "good": self.good,
                "floated": self.floated, "pending": self.pending, "recoveries": self.recoveries, "cost": self.cost,
                "starts": self.starts}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.snap, self.baseline = list(state["history"]), state["snap"], float(state["baseline"])
        self.good, self.floated, self.pending = state.get("good"), state.get("floated"), state.get("pending")
        self.recoveries = list(state.get("recoveries", []))
        self.cost = {**self.cost, **state.get("cost", {})}
        self.starts = list(state.get("starts", []))

    def summary(self) -> dict:
        """The report's record: the metric, the tolerance, the original's score, every check."""
        stopped = next((h["period"] for h in self.history if h["action"].startswith("rolled back")), None)
        last = next((h for h in reversed(self.history) if h["action"].startswith("rolled back")), {})
        after = (f" after {last['recovery_steps']} recovery steps" if last.get("recovery_steps") else
                 " and its retry was not expected to recover it" if "predicted_after_retry" in last else "")
        probe = next((h for h in self.history if h.get("probe")), None)
        if probe is not None:
            stopped = None
            at = f"the cool-down probe (step {probe['step']})"
            if probe["action"] == "kept":
                why = f"{at} met the tolerance: the budget bounded the removal"
            elif probe["predicted_drop"] <= self.tolerance:
                why = (f"{at} missed it; with {probe['recovery_left']:.0%} of the last commit's drop left there, "
                       f"{_after(probe['back_to_period'])} was predicted within it ({probe['predicted_drop']:+.4f}): "
                       "rolled back to it")
            else:
                why = (f"{at} missed it, and no pruned structure was predicted within it: rolled back to "
                       f"{_after(probe['back_to_period'])}")
        elif stopped is not None:
            why = f"period {stopped + 1} dropped the quality past the tolerance{after}: rolled back"
        else:
            why = "every period met the tolerance: the budget bounded the removal"
        if self.end is not None and self.good is None and self.end["action"] != "kept":
            why += f"; the final model missed it too ({self.end['drop']:+.4f}), and no state was within it"
        if self.end is not None and "quality_after" in self.end:
            why += (f"; the final model missed it ({self.end['drop']:+.4f}), so the run fell back to the last state "
                    "within it, without the training since")
        if self.end is not None and "float_layers" in self.end:
            names = ", ".join(la["node"] for la in self.end["float_layers"])
            why += (f"; still over it, {len(self.end['float_layers'])} layer(s) went to float after training ({names}): "
                    f"{self.end['drop_float']:+.4f}")
        elif self.end is not None and "float_search" in self.end:
            why += f"; {self.end['float_search']}"
        return {"metric": self.metric, "tolerance": self.tolerance, "baseline": self.baseline,
                **({"samples": self.samples} if self.samples else {}), "held_out": self.held_out,
                **({"fitted": self.fitted} if self.fitted else {}),
                **({"retries": self.recoveries} if self.recoveries else {}),
                "stopped_at_period": stopped, "why": why, "checks": self.history,
                **({"end": self.end} if self.end is not None else {}),
                **({"exported": self.exported} if self.exported is not None else {}),
                **({"float_fallback": self.floated} if self.floated else {}), "cost": dict(self.cost)}


def _after(period: int) -> str:
    """The state a probe goes back to, in words: after commit `period` (-1: before pruning)."""
    return "the unpruned structure" if period < 0 else f"the structure after period {period + 1}"
