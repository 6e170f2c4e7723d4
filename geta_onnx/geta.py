"""One GETA training run on an ONNX model: bridge, quantizers, calibration, QADG groups,
QASSO, the training loop. What `compress` builds on; the export to QDQ ONNX comes after.

    result = run_geta(load_model("model.onnx"), load_data("idx:DIR", model=...), prune=PruneConfig(0.5))
    result.removed_groups, result.bits, result.relative_bops
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .bridge import OnnxModule, to_torch
from .config import OptimConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig
from .errors import GetaError
from .export.params import pruning_cuts
from .graph.model import OnnxModel
from .optim import QASSO, ImportanceWeights, quant_targets
from .guarding import quality_guard, recovery_steps
from .optim.guard import FloatLayers, QualityGuard
from .optim.targets import deployable_bits
from .qadg import QADG, analyze
from .quant.bops import kept_from_groups, relative_bops
from .quant.calibrate import calibrate
from .quant.plan import QuantPlan
from .quant.sites import attach_quantizers
from .quant.weight_range import resolve as resolve_weight_range
from .train import (CHECKPOINT, Data, Schedule, TrainResult, distributed, load_checkpoint, lr_scheduler, make_loss,
                    split_batch, train)
from .train.batching import FirstBatches


@dataclass
class GetaResult:
    module: OnnxModule  # trained, quantizers attached, removed groups exactly zero
    plan: QuantPlan
    qadg: QADG
    optimizer: QASSO
    train: TrainResult
    metrics: dict = field(default_factory=dict)
    guard: QualityGuard | None = None  # the quality guard of a guarded run (compress asks it about the file)
    teacher: str | None = None  # what ran the distillation teacher: "onnxruntime", "torch" (teacher.py) or None
    teacher_memo: dict | None = None  # TeacherMemo.summary(): samples served from the memo and by the teacher

    @property
    def removed_groups(self) -> set[int]:
        return set(self.optimizer.zeroed)

    @property
    def bits(self) -> dict[str, float]:
        """Frozen (or current) bit width per quantizer (mean over channels)."""
        return {name: float(q.bits().float().mean()) for name, q in self.plan.quantizers().items()}

    @property
    def relative_bops(self) -> float:
        return relative_bops(self.plan, kept=self._kept(), rounded=True)

    def layers(self) -> list[dict]:
        """Per weighted layer: kept / total output channels and the deployed (rounded) bit
        widths, weight bits averaged over the kept channels, each inside its quantizer's bounds
        (weight_bit_range, act_bit_range); None = kept in float (float_reason: skip_first,
        skip_last, exclude, thin, latency or quality, as QuantLayer.skipped)."""
        kept = self._kept()
        rows = []
        for layer in self.plan.layers:
            keep = kept[layer.node]
            total = layer.weight_shape[layer.out_axis] if layer.out_axis is not None else 1
            channels = len(keep.out_channels) if keep.out_channels is not None else total
            rows.append({"name": layer.node, "op_type": layer.op_type, "kept": channels, "total": total,
                         "weight_bits": self._deployed_bits(layer.weight_quantizer, keep.out_channels),
                         "act_bits": self._deployed_bits(layer.act_quantizer, None),
                         "weight_bit_range": self.plan.bit_range(layer.weight_quantizer),
                         "act_bit_range": self.plan.bit_range(layer.act_quantizer),
                         "macs": layer.macs or 0, "kept_macs": round((layer.macs or 0) * keep.kept_in * keep.kept_out),
                         "float_reason": layer.skipped or None})  # why a float layer stays float
        return rows

    def tables(self) -> list[dict]:
        """Per embedding table exported in int8 (quant/tables.py): its name, rows and kept /
        total columns."""
        cuts = pruning_cuts(self.qadg, self.optimizer.zeroed) if self.plan.tables else {}
        return [{"name": t.weight, "rows": t.shape[0], "total": t.shape[1],
                 "kept": t.shape[1] - len(cuts.get(t.weight, {}).get(1, ())), "bits": 8} for t in self.plan.tables]

    def recurrent(self) -> list[dict]:
        """Per LSTM exported with int8 weights (quant/recurrent.py): its node, W and R, and
        their weights before pruning."""
        return [{"node": r.node, "weights": list(r.weights), "parameters": r.parameters, "bits": 8,
                 "format": "DynamicQuantizeLSTM"} for r in self.plan.recurrent]

    def _kept(self):
        return kept_from_groups(self.plan, [self.qadg.group(g) for g in self.optimizer.zeroed])

    def _deployed_bits(self, name: str | None, channels) -> float | None:
        if name is None or not self.plan.quantizer(name).enabled:
            return None
        bits = self.plan.quantizer(name).bits().detach().round().reshape(-1)
        if channels is not None and bits.numel() > 1:
            bits = bits[list(channels)]
        return float(bits.float().mean())


class _Progress:
    """Progress-bar fields: stage, group sparsity, mean weight / activation bits."""

    def __init__(self, optimizer: QASSO):
        self.opt = optimizer

    def after_step(self, step: int, loss) -> dict:
        if step % 10:
            return {}
        return {"sparsity": f"{self.opt.group_sparsity():.0%}",
                "wbits": f"{self.opt.mean_bits('weight', bounded=True):.1f}",
                "abits": f"{self.opt.mean_bits('act', bounded=True):.1f}"}


def _calibration_batches(module: OnnxModule, data: Data, n: int):
    """The first `n` training batches of epoch 0's order: the same whatever iterated the loader
    before (the preflight checks, a restarted attempt's training)."""
    for batch in FirstBatches(data.train, n, pinned=True):
        inputs, _ = split_batch(batch, module.input_names, f"data '{data.spec}'")
        yield tuple(inputs)


# ops through which no gradient flows (piecewise constant or integer-valued outputs)
NON_DIFFERENTIABLE = {"ArgMax", "ArgMin", "Hardmax", "Round", "Floor", "Ceil", "Sign", "Equal", "Greater", "Less",
                      "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "IsNaN", "IsInf",
                      "BitShift", "Mod"}


def _check_gradient_path(module: OnnxModule, model: OnnxModel, data: Data, output: int) -> None:
    """GetaError when the trained output does not depend on any weight through
    differentiable ops (e.g. a Hardmax at the end): training would take no step."""
    batch = next(iter(data.train), None)
    if batch is None:
        return
    inputs, _ = split_batch(batch, module.input_names, f"data '{data.spec}'")
    was_training = module.training
    module.eval()  # running statistics untouched; a batch of one is fine
    try:
        with torch.enable_grad():
            outs = module(*(x[:2] for x in inputs))  # per_sample modules take 2 as 2 x 1
    finally:
        module.train(was_training)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    if output < len(outs) and not outs[output].requires_grad:
        blockers = sorted({f"{n.op_type} (node '{n.name or n.output[0]}')" for n in model.proto.graph.node
                           if n.op_type in NON_DIFFERENTIABLE})
        why = f"; it passes through {', '.join(blockers[:4])}" if blockers else ""
        raise GetaError(f"{model.label}: output {output} does not depend on any weight through differentiable "
                        f"ops{why}, so training cannot change it; export the model without that op (train on the "
                        "scores before it) or choose another output with [train] output = N")


def run_geta(model: OnnxModel, data: Data, *, quant: QuantConfig = QuantConfig(), prune: PruneConfig = PruneConfig(),
             optim: OptimConfig = OptimConfig(), schedule: ScheduleConfig = ScheduleConfig(),
             train_config: TrainConfig = TrainConfig(), checkpoint_dir=None, resume: bool = False,
             config: dict | None = None, per_sample: bool = False,
             latency_at: tuple[int, int] = (2, 32), profile: str = "ort") -> GetaResult:
    """Train `model` once with QASSO under the pruning budget and bit ranges. `config` (plain
    JSON values: runs.fingerprint) is recorded in the checkpoint for resume checks.
    `per_sample`: a graph that takes one sample per forward (bridge.OnnxModule.per_sample).
    `latency_at`: (onnxruntime threads, batch) of a latency budget's target (Settings.latency_at).
    `profile`: the export profile, whose runtime's widths the frozen bits snap to (QuantConfig.deployable_bits)."""
    quant = resolve_weight_range(quant, profile, prune.latency_table)  # reduce_range "auto" decided for the target
    if profile != "ort":  # int8 tables and LSTMs are built and measured for onnxruntime; tensorrt keeps them float
        quant = replace(quant, quantize_tables=False, quantize_recurrent=False)
    torch.manual_seed(train_config.seed)
    module = to_torch(model)
    module.per_sample = per_sample
    _check_gradient_path(module, model, data, train_config.output)
    # the teacher (distillation) is the fp32 original, taken before any quantizer exists
    loss = make_loss(train_config.loss, has_labels=data.has_labels, module=module, model=model,
                     device=train_config.device, kd=train_config.kd,
                     temperature=train_config.temperature, alpha=train_config.alpha, output=train_config.output,
                     every_output=train_config.kd_outputs == "all",
                     memo_samples=data.samples if train_config.teacher_memo else None)
    qadg = analyze(model)
    sched = Schedule.from_config(len(data.train), schedule)
    kind, value = prune.budget
    saved = _saved_state(checkpoint_dir) if resume else None
    floated = _floated(saved)  # what the guard put in float before the checkpoint (a restarted run)
    keep_float = {la["node"]: "quality" for la in (floated or {}).get("layers", [])}
    while True:
        module, plan, latency, budget_ms = _quantized_and_timed(model, data, module, qadg, keep_float, quant, prune,
                                                                train_config, per_sample, latency_at, profile, saved)
        bops_fn = None
        if kind == "target_bops":
            bops_fn = lambda removed, plan=plan: relative_bops(  # noqa: E731
                plan, kept=kept_from_groups(plan, [qadg.group(g) for g in removed]))
        deployable = quant.deployable_bits and kind != "target_bops"  # a BOPs budget counts the free widths
        int8_only = _int8_only(latency, plan, quant, prune, profile)
        targets = quant_targets(plan, quant, profile if deployable else None, int8_only=int8_only)
        opt = QASSO(module, qadg, targets, sched, lr=optim.lr,
                    lr_quant=optim.lr_quant, base=optim.optimizer, momentum=optim.momentum,
                    weight_decay=optim.weight_decay, target_sparsity=value if kind == "target_sparsity" else None,
                    target_bops=value if kind == "target_bops" else None, bops_fn=bops_fn,
                    bit_reduction=optim.bit_reduction or None,
                    group_divisible=prune.group_divisible, importance=ImportanceWeights(*prune.importance),
                    forget=optim.forget, target_latency_ms=budget_ms, latency=latency,
                    latency_selection=prune.latency_selection, recovery_steps=recovery_steps(prune, sched))
        lrs = lr_scheduler(opt, optim.lr_schedule, sched.total_steps)
        guard = (quality_guard(module, data, plan, loss, opt, sched, prune, train_config, floated)
                 if prune.max_quality_drop is not None else None)
        started = time.perf_counter()
        try:
            result = train(module, data, opt, loss_fn=loss, schedule=sched, lr_scheduler=lrs,
                           device=train_config.device, checkpoint_dir=checkpoint_dir, resume=resume,
                           hooks=[_Progress(opt)] + ([guard] if guard is not None else []),
                           progress=train_config.progress, seed=train_config.seed, grad_clip=train_config.grad_clip,
                           output=train_config.output, config=config, sync_batchnorm=train_config.sync_batchnorm,
                           amp=train_config.amp)
            break
        except FloatLayers as chosen:  # the guard's first check: start over with these layers in float
            # what the attempt cost (the report's guard cost): its training until the check, the float search
            floated = {**chosen.found, "attempt_seconds": time.perf_counter() - started,
                       "search_seconds": guard.cost["float_search_seconds"]}
            keep_float.update({node: "quality" for node in chosen.nodes})
            module, resume, saved = None, False, None
            if distributed.info().is_main:
                tqdm.write(f"quality guard: the quantized model misses the tolerance before pruning; "
                           f"{len(chosen.nodes)} layer(s) back to float ({chosen}), training starts over")
    if guard is not None:
        guard.finish()  # the end check: a final model past the tolerance falls back to the last one within it
        late = guard.floated_after_training  # still past it: these layers went to float in the trained model
        if late:
            plan = plan.with_float(late, "quality")
            if latency is not None:
                latency.set_float(late)
            if distributed.info().is_main:
                tqdm.write(f"quality guard: the final model misses the tolerance; {len(late)} layer(s) to float "
                           f"after training ({', '.join(late)}): drop {guard.end['drop_float']:+.4f}")
    out = GetaResult(module, plan, qadg, opt, result, guard=guard,
                     teacher=getattr(loss.teacher, "kind", "torch") if loss.uses_teacher else None,
                     teacher_memo=loss.memo.summary() if loss.memo is not None else None)
    out.metrics = {
        "group_sparsity": opt.group_sparsity(), "removed_groups": len(opt.zeroed), "planned_groups": opt.planned,
        "target_groups": opt.target_groups, "prunable_groups": len(opt.views),
        "relative_bops": out.relative_bops, "target_bops": prune.target_bops, **result.metrics,
    }
    if guard is not None:
        out.metrics["guard"] = guard.summary()
    if latency is not None:
        latency.set_int4(_int4_layers(plan, profile))  # the prediction of the form each layer is exported in
        out.metrics["latency"] = {"int8_only": sorted(int8_only), "float_check": latency.float_check,
                                  "target_ms": opt.target_latency_ms, "original_ms": latency.reference_ms,
                                  "predicted_ms": opt.predicted_ms(), "threads": latency_at[0], "batch": latency_at[1],
                                  "table": latency.table.target.__dict__, "fit": latency.fit_summary()}
    return out


def _quantized_and_timed(model: OnnxModel, data: Data, module: OnnxModule | None, qadg: QADG,
                         keep_float: dict[str, str], quant: QuantConfig, prune: PruneConfig,
                         train_config: TrainConfig, per_sample: bool, latency_at: tuple[int, int], profile: str,
                         saved: dict | None):
    """(module, plan, latency model, budget ms): `module` (a fresh bridge when None) with its
    quantizers attached and calibrated, `keep_float`'s layers in float, and under a latency
    budget the latency model. There, with the ort profile, the layers one-layer times call
    slower in int8 (thin stems, LatencyModel.slower_in_int8) stay in float only when the whole
    model runs no slower so (latency.chain; added to keep_float with their reason), and then
    everything is built again without their quantizers."""
    chain = bool(prune.latency_budget) and quant.float_by_latency and profile == "ort"
    first = _chain_decides_thin(quant) if chain else quant
    module, plan = _quantized(model, data, module, keep_float, first, per_sample)
    if not prune.latency_budget:
        return module, plan, None, None
    latency, budget_ms = _latency_model(module, model, data, plan, qadg, prune, latency_at, train_config.progress)
    if not chain:
        return module, plan, latency, budget_ms
    check = _float_check(model, data, module, plan, qadg, latency, keep_float, quant, per_sample, latency_at, saved)
    if check is not None and check["kept"] == "float":  # again from a fresh bridge, timed again
        keep_float.update(check["layers"])
        module, plan = _quantized(model, data, None, keep_float, first, per_sample)
        latency, budget_ms = _latency_model(module, model, data, plan, qadg, prune, latency_at,
                                            train_config.progress)
        snap = _saved_latency(saved)
        if latency is not None and snap:  # a resumed run plans with the numbers it saved
            latency.restore(snap)
    if latency is not None:
        latency.float_check = check
    return module, plan, latency, budget_ms


def _chain_decides_thin(quant: QuantConfig) -> QuantConfig:
    """`quant` with thin stems quantized: their float choice is then the whole model's
    timing (_float_check), not the rule's."""
    return replace(quant, float_thin_convs=False)


def _quantized(model: OnnxModel, data: Data, module: OnnxModule | None, keep_float: dict[str, str],
               quant: QuantConfig, per_sample: bool) -> tuple[OnnxModule, QuantPlan]:
    if module is None:
        module = to_torch(model)
        module.per_sample = per_sample
    plan = attach_quantizers(module, model, quant, keep_float=dict(keep_float))
    calibrate(module, plan, _calibration_batches(module, data, quant.calibration_batches), quant)
    return module, plan


def _saved_state(resume_dir) -> dict | None:
    """The run folder's checkpoint (for what a resumed run rebuilds its module from), or None."""
    ckpt = Path(resume_dir) / CHECKPOINT if resume_dir is not None else None
    return load_checkpoint(ckpt) if ckpt is not None and ckpt.is_file() else None


def _floated(saved: dict | None) -> dict | None:
    """What the quality guard put in float in the checkpointed run (its hook state:
    FloatLayers.found), or None."""
    for hook in (saved or {}).get("hooks") or []:
        if isinstance(hook, dict) and hook.get("floated"):
            return hook["floated"]
    return None


def _float_check(model: OnnxModel, data: Data, module: OnnxModule, plan: QuantPlan, qadg: QADG, latency,
                 keep_float: dict[str, str], quant: QuantConfig, per_sample: bool, at: tuple[int, int],
                 saved: dict | None) -> dict | None:
    """Which of the layers one-layer times call slower in int8 stay in float (latency.chain),
    decided on rank 0 and agreed; None when there are none. A resumed run takes the decision
    and the table entries its checkpoint holds, so it rebuilds the module it saved (a
    checkpoint from before the whole-model check: all of them in float, as then)."""
    from .latency import Target
    from .latency.chain import float_candidates, timed_check, untimed_check
    from .latency.reference import int8_export
    from .preflight import first_samples

    snap = _saved_latency(saved)
    if snap and latency is not None:
        latency.restore(snap)
    if snap and "float_check" in snap:
        return snap["float_check"]
    check = None  # also when nothing is a candidate
    candidates = (float_candidates(model, plan, latency, exclude=keep_float, thin=quant.float_thin_convs)
                  if distributed.info().is_main else None)
    if candidates:
        target = latency.table.target
        if snap:
            check = untimed_check(candidates, "resumed from a checkpoint that kept them in float")
        elif target != Target.here(*at):
            check = untimed_check(candidates, f"the latency table is of another target ({target.cpu}); "
                                              "its one-layer times decide")
        else:
            alt_module, alt_plan = _quantized(model, data, None, {**keep_float, **candidates},
                                              _chain_decides_thin(quant), per_sample)
            feeds = {k: v.repeat(target.batch, axis=0) for k, v in first_samples(model, data, 1).items()}
            check = timed_check(candidates, int8_export(module, plan, qadg, model),
                                int8_export(alt_module, alt_plan, qadg, model), feeds, target.threads)
    return distributed.agree(check)


def _saved_latency(saved: dict | None) -> dict | None:
    """The latency model's snapshot in a checkpoint (LatencyModel.snapshot), or None."""
    return ((saved or {}).get("optimizer") or {}).get("qasso", {}).get("latency")


def _int8_only(latency, plan: QuantPlan, quant: QuantConfig, prune: PruneConfig, profile: str) -> frozenset[str]:
    """The layers kept from the int4 width their profile runs ([quant] int4_matmul): "auto"
    under a latency budget, those whose MatMulNBits the table times slower than their int8
    kernel (LatencyModel.int4_slower, decided on rank 0 and agreed; the latency entries are
    the checkpoint's on resume, restored by _float_check, so a resumed run decides the same);
    "auto" without one and "off", all of them; "on", none."""
    if quant.int4_matmul == "on":
        return frozenset()
    if quant.int4_matmul == "auto" and prune.latency_budget:
        return frozenset(distributed.agree(latency.int4_slower() if latency is not None else None) or [])
    return frozenset(la.node for la in _int4_capable(plan, profile))


def _int4_capable(plan: QuantPlan, profile: str) -> list:
    """The quantized layers whose weight the profile runs at 4 bits (optim.targets.deployable_bits:
    ort, a 2-D MatMul weight)."""
    return [la for la in plan.layers
            if la.weight_quantizer is not None and 4 in deployable_bits(profile, la.op_type, True, len(la.weight_shape))]


def _int4_layers(plan: QuantPlan, profile: str) -> list[str]:
    """The layers the export writes with an INT4 weight: the profile runs their weight at 4
    bits (optim.targets.deployable_bits: ort, a 2-D MatMul weight) and every channel learned
    <= 4 bits (export.params.LayerQ.int4_candidate)."""
    nodes = []
    for la in _int4_capable(plan, profile):
        q = plan.quantizer(la.weight_quantizer)
        if q.enabled and float(q.bits().round().max()) <= 4:
            nodes.append(la.node)
    return nodes


def _latency_model(module: OnnxModule, model: OnnxModel, data: Data, plan: QuantPlan, qadg: QADG,
                   prune: PruneConfig, at: tuple[int, int], progress: bool):
    """(latency.LatencyModel, budget in ms) on rank 0; (None, budget agreed from rank 0) on the
    others: one process measures, so that no two compete for the cores being timed."""
    from .latency import Target, build_latency_model
    from .latency.reference import int8_export
    from .preflight import first_samples

    latency, budget = None, None
    if distributed.info().is_main:
        sample = first_samples(model, data, 1)
        latency = build_latency_model(model, plan, qadg.prunable, sample, Target.here(*at), unit=prune.group_divisible,
                                      table_path=prune.latency_table or None, progress=progress,
                                      int8_export_of=lambda removed: int8_export(module, plan, qadg, model, removed))
        kind, value = prune.budget
        budget = value if kind == "target_latency_ms" else latency.reference_ms / value
    return latency, distributed.agree(budget)
