"""The quality guard of one run (`--max-accuracy-drop`, `--min-fidelity`): the held-out batches
its checks score, how many (sized to the tolerance), its score functions and its retry steps.
optim.guard.QualityGuard decides; geta.run_geta builds it here. docs/guard.md has the details."""
from __future__ import annotations

import math

from tqdm import tqdm

from .bridge import OnnxModule
from .config import DataConfig, PruneConfig, TrainConfig
from .errors import ConfigError
from .optim import QASSO
from .optim.guard import QualityGuard
from .quant.plan import QuantPlan
from .quant.quantizer import quantizers_off
from .train import Data, Schedule, distributed, split_batch
from .train.batching import FirstBatches


# a tolerance worth fewer held-out samples than this (accuracy, agreement) is said to be at the noise level
GUARD_MIN_SAMPLES = 5
# [prune] guard_batches = 0: the guard scores enough held-out samples that its tolerance is worth this many
# (a 0.5-point tolerance: 5000 samples), and at least GUARD_MIN_BATCHES batches; fewer make its checks
# decide on noise (docs/guard.md, "How many samples")
GUARD_SAMPLES_PER_TOLERANCE = 25
GUARD_MIN_BATCHES = 8


def guard_batches(data: Data, names: list[str], tolerance: float, held=None) -> int:
    """How many held-out batches (of `held`, default the eval split) the guard scores when
    [prune] guard_batches is 0: enough for GUARD_SAMPLES_PER_TOLERANCE samples within the
    tolerance, at least GUARD_MIN_BATCHES, at most the loader (a loader without a length: what
    islice finds)."""
    held = data.eval if held is None else held
    first = next(iter(held), None)
    if first is None:
        return GUARD_MIN_BATCHES
    per_batch = max(len(split_batch(first, names, f"data '{data.spec}'")[0][0]), 1)
    wanted = max(GUARD_MIN_BATCHES, math.ceil(GUARD_SAMPLES_PER_TOLERANCE / max(tolerance, 1e-6) / per_batch))
    try:
        return min(wanted, len(held))
    except TypeError:  # an iterable without a length (py: loaders)
        return wanted


def holdout_samples(prune: PruneConfig, data: DataConfig) -> int:
    """Training samples to hold out for the guard's checks (load_data's guard_samples): 0
    unless a guard scores on training data ([prune] guard_data = "train"); else as many as its
    checks score from an eval split (guard_batches, or sized to the tolerance as there)."""
    if prune.max_quality_drop is None or prune.guard_data != "train":
        return 0
    per_batch = data.eval_batch_size or data.batch_size
    if prune.guard_batches:
        return prune.guard_batches * per_batch
    sized = math.ceil(GUARD_SAMPLES_PER_TOLERANCE / max(prune.max_quality_drop, 1e-6))
    return max(GUARD_MIN_BATCHES * per_batch, sized)


def guard_data(setting: str, data: Data) -> str:
    """[prune] guard_data with "auto" decided: "val" where the data has a validation split
    (Data.val), else "eval"."""
    if setting != "auto":
        return setting
    return "val" if data.val is not None else "eval"


def guard_loader(data: Data, prune: PruneConfig):
    """The held-out batches the guard's checks score: the training samples held out for it
    (Data.guard) with [prune] guard_data = "train", the validation split with "val" (and
    "auto" where there is one), else the eval split; a ConfigError when the data has none."""
    where = guard_data(prune.guard_data, data)
    if where == "train":
        if data.guard is None:
            raise ConfigError("[prune] guard_data = \"train\": the data holds no training samples out for the guard; "
                              "load it with load_data(..., guard_samples=guarding.holdout_samples(prune, data_config))")
        return data.guard
    if where == "val":
        if data.val is None:
            raise ConfigError(f"[prune] guard_data = \"val\": data '{data.spec}' has no validation split; store "
                              "val_x / val_y arrays beside eval_x / eval_y in the npz file, or a val/ folder beside "
                              "test/, or use guard_data = \"eval\"")
        return data.val
    if data.eval is None:
        raise ConfigError("--max-accuracy-drop / --min-fidelity need held-out data to score on: give the data an "
                          "eval split, or [data] val_split > 0")
    return data.eval


def recovery_steps(prune: PruneConfig, sched: Schedule, share: float | None = None) -> int:
    """Steps of each pruning period that train the last commit's structure before the guard
    scores it ([prune] guard_recovery, or `share`, of the shortest period; never all of it:
    forgetting needs a step); 0 without a guard."""
    if prune.max_quality_drop is None or (share is None and prune.guard_probe):  # the probe scores commits at once
        return 0
    share = prune.guard_recovery if share is None else share
    return min(int(share * sched.shortest_pruning_period), max(sched.shortest_pruning_period - 1, 0))


def probe_step(prune: PruneConfig, sched: Schedule) -> int | None:
    """The step before which the guard's cool-down probe scores ([prune] guard_probe of the
    cool-down in), or None: no probe (guard_probe = 0, no pruning periods, or a cool-down too
    short to train the structure before it and after it)."""
    cooldown = sched.total_steps - sched.pruning_end
    if not prune.guard_probe or not sched.pruning_periods or cooldown < 2:
        return None
    return sched.pruning_end + min(max(int(prune.guard_probe * cooldown), 1), cooldown - 1)


def quality_guard(module: OnnxModule, data: Data, plan: QuantPlan, loss, opt: QASSO, sched: Schedule,
                   prune: PruneConfig, train_config: TrainConfig, floated: dict | None):
    """optim.guard.QualityGuard on the first `guard_batches` held-out batches (guard_loader: the
    training samples held out for it, else the eval split's): top-1 accuracy with
    labels, else the agreement (class logits) or cosine with the original's output. The
    baseline is the original's score there (quantizers off before training; 1 for fidelity).
    The candidates of its per-layer float fallback: every quantized layer, with its weight,
    input and output quantizers."""
    from .train.evaluate import evaluate
    from .train.loop import BN_REFRESH_BATCHES, refreshed_batchnorm

    held = guard_loader(data, prune)
    names = list(module.input_names)
    n_batches = prune.guard_batches or guard_batches(data, names, prune.max_quality_drop, held)
    batches = FirstBatches(held, n_batches)

    def metrics(scored, on=batches) -> dict:
        device = next(scored.parameters()).device
        was_training = module.training
        out = evaluate(scored, on, loss, device=device, input_names=names, output=train_config.output)
        module.train(was_training)
        return out

    refresh = FirstBatches(data.train, BN_REFRESH_BATCHES, pinned=True)

    def score(on=batches, key=None) -> float:
        device = next(module.parameters()).device
        return metrics(refreshed_batchnorm(module, refresh, names, device), on)[key or metric]

    def refresh_module() -> None:
        """The statistics score() re-estimates on its copy, into the module itself."""
        fresh = refreshed_batchnorm(module, refresh, names, next(module.parameters()).device)
        if fresh is not module:
            module.load_state_dict(fresh.state_dict())

    # the float fallback ranks every quantized layer by its held-out loss on at most GUARD_MIN_BATCHES
    # batches: a full check per layer costs one check per quantized layer, and accuracy on a few
    # batches ties (docs/guard.md, "What it does")
    few = FirstBatches(held, min(n_batches, GUARD_MIN_BATCHES))

    with quantizers_off(plan.every_quantizer()):  # the fp32 original: the weights before any step
        original = metrics(module)
    metric = next((k for k in ("accuracy", "agreement", "cosine") if k in original), None)
    if metric is None:
        raise ConfigError("--max-accuracy-drop / --min-fidelity: no quality metric for this model and data (labels "
                          "for accuracy, or distillation of class scores / float outputs for fidelity)")
    baseline = original[metric] if metric == "accuracy" else 1.0
    samples = sum(len(split_batch(b, names, f"data '{data.spec}'")[0][0]) for b in batches)
    if metric != "cosine" and prune.max_quality_drop * samples < GUARD_MIN_SAMPLES and distributed.info().is_main:
        where = " (training samples held out for it: at most a quarter of them)" if prune.guard_data == "train" else ""
        tqdm.write(f"note: the quality guard scores {samples} held-out samples{where}, so a tolerance of "
                   f"{prune.max_quality_drop:g} is {prune.max_quality_drop * samples:.1f} sample(s): its checks are "
                   f"at the noise level; more [prune] guard_batches make them firmer")
    fitted = None
    if prune.guard_data == "train" and metric == "accuracy" and data.eval is not None:
        with quantizers_off(plan.every_quantizer()):  # the original on as many eval samples
            fitted = fitted_original(baseline, metrics(module, FirstBatches(data.eval, n_batches))[metric],
                                     prune.max_quality_drop)
        if fitted is not None and distributed.info().is_main:
            tqdm.write(f"warning: {fitted['note']}")
    candidates = {la.node: {site.quantizer: plan.quantizer(site.quantizer) for site in plan.sites_of(la.node)}
                  for la in plan.layers if la.weight_quantizer is not None}
    return QualityGuard(opt, sched, score, baseline=baseline, tolerance=prune.max_quality_drop, metric=metric,
                        layer_quantizers=candidates, max_float=prune.guard_float_layers, floated=floated,
                        samples=samples, held_out=guard_data(prune.guard_data, data),
                        rank_score=lambda: -score(few, "loss"),
                        retry_steps=0 if prune.guard_recovery else recovery_steps(prune, sched, prune.guard_retry),
                        probe_step=probe_step(prune, sched), regrow=prune.guard_regrow, refresh=refresh_module,
                        fitted=fitted)


def fitted_original(on_held_out: float, on_eval: float, tolerance: float) -> dict | None:
    """With guard_data = "train": when the original scores more than the tolerance higher on
    the held-out training samples than on the eval split, it has fitted them (it was trained on
    that split), and a drop there is not one on new data: compressing loses some of that fit, so
    the checks see larger drops than the eval split shows, or smaller ones where the fit is at
    the ceiling (docs/guard.md, "Where the checks score, measured"). {"baseline_eval", "note"}
    or None."""
    if on_held_out - on_eval <= tolerance:
        return None
    return {"baseline_eval": on_eval,
            "note": f"the original scores {on_held_out:.4f} on the training samples held out for the quality guard "
                    f"and {on_eval:.4f} on the eval split: it has fitted them, so the guard's drops there are not "
                    "those of new data; [prune] guard_data = \"eval\" scores the eval split instead"}
