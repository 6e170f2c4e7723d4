"""The alternatives geta-onnx is compared with, as small library functions.

    ptq_int8(model, calibration_batches, out)   onnxruntime static int8 PTQ (QDQ, per-channel,
                                                uint8 activations / int8 weights)
    l1_prune(model, target_macs, out, unit=16)  structured L1-magnitude pruning (Li et al. 2017:
                                                the same fraction of every layer, lowest L1
                                                first) on geta-onnx's own pruning groups
    finetune(model, data, epochs, lr, out)      Adam + cosine LR through the ONNX -> PyTorch
                                                bridge, trained values written back into the ONNX

Together they make the classic multi-stage pipeline: prune, fine-tune, then quantize.
Every function writes its output atomically and returns a dict of what it did (with
"seconds", the wall time of the step itself).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from geta_onnx.errors import ConfigError, GetaError
from geta_onnx.graph import OnnxModel, from_proto, load_model
from geta_onnx.graph.stats import model_stats
from geta_onnx.io import write_bytes_atomic
from geta_onnx.optim.selection import allowed_removals
from geta_onnx.prune import prune_model
from geta_onnx.qadg import QADG, PruneGroup, analyze
from geta_onnx.quant import weight_range

Feeds = Mapping[str, np.ndarray]  # one calibration batch: input name -> (N, ...) array


# --------------------------------------------------------------------------- int8 PTQ
class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def ptq_int8(model_path: str | os.PathLike, calibration_batches: Iterable[Feeds], out_path: str | os.PathLike,
             *, preprocess: bool = True, op_types: list[str] | None = None, reduce_range: bool | None = None) -> dict:
    """onnxruntime static int8 post-training quantization of `model_path` into `out_path`.

    QDQ format, per-channel int8 symmetric weights, uint8 activations (the only activation
    type onnxruntime's x86 integer kernels fuse everywhere, deployment.md), MinMax
    calibration over `calibration_batches` (feed dicts of training inputs; a few hundred
    samples is the usual amount). `preprocess` runs onnxruntime's quant_pre_process first:
    shape inference plus graph optimisation, which folds BatchNorm into Conv so the
    quantized convs fuse into QLinearConv; when symbolic shape inference fails (some
    transformer graphs) it is retried without it, and without pre-processing at last.
    `op_types` restricts the quantized op types (None: every type onnxruntime can quantize;
    transformers want ["MatMul", "Gemm"]: a quantized attention-mask Add or LayerNorm input
    loses the -inf mask and the outliers, which destroys the output).
    `reduce_range`: 7-bit weights, as compress's `[quant] reduce_range` (None: where this CPU's
    int8 kernels saturate full-range weights, the probe compress's "auto" uses), so the
    pipeline's file computes its own model wherever geta-onnx's does (docs/deployment.md).
    Returns {"seconds", "preprocess": "full" | "no-symbolic" | "none", "calibration_samples",
    "op_types", "reduce_range"}.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    batches = [{k: np.ascontiguousarray(v) for k, v in b.items()} for b in calibration_batches]
    if not batches:
        raise ConfigError("ptq_int8: give at least one calibration batch")
    samples = sum(int(next(iter(b.values())).shape[0]) for b in batches)
    reduce_range = weight_range.int8_saturates() if reduce_range is None else reduce_range
    reader = type("Reader", (_CalibrationReader, CalibrationDataReader), {})(batches)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geta-ptq-") as tmp:
        src, how = Path(model_path), "none"
        if preprocess:
            src, how = _preprocess(Path(model_path), Path(tmp) / "pre.onnx")
        out = Path(tmp) / "int8.onnx"
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
        try:
            quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
                            reduce_range=reduce_range)
        finally:
            logging.getLogger().setLevel(level)
        write_bytes_atomic(out_path, out.read_bytes())
    return {"seconds": time.perf_counter() - start, "preprocess": how, "calibration_samples": samples,
            "op_types": op_types or "all", "reduce_range": reduce_range}


def _preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for how, kw in (("full", {}), ("no-symbolic", {"skip_symbolic_shape": True})):
        cwd = os.getcwd()
        try:
            os.chdir(dst.parent)  # symbolic shape inference drops temp files into the working directory
            quant_pre_process(str(src.resolve()), str(dst), **kw)
            return dst, how
        except Exception as e:  # symbolic shape inference raises assorted errors on exotic graphs
            logging.getLogger(__name__).info("quant_pre_process (%s) failed on %s: %s", how, src, e)
        finally:
            os.chdir(cwd)
    return src, "none"


# --------------------------------------------------------------------------- L1 pruning
def clusters(qadg: QADG) -> dict[tuple[str, ...], list[PruneGroup]]:
    """Prunable groups by their source layers: one conv's channels, one residual stream,
    one attention layer's heads (the clusters geta-onnx's own selection rounds per unit)."""
    out: dict[tuple[str, ...], list[PruneGroup]] = {}
    for g in qadg.prunable:
        out.setdefault(tuple(g.sources), []).append(g)
    return out


def _source_weights(model: OnnxModel, g: PruneGroup) -> set[str]:
    """Weight initializers of the group's source layers (input 1 of Conv / Gemm / MatMul)."""
    nodes = model.node_by_name
    names = set()
    for s in g.sources:
        node = nodes.get(s)
        if node is not None and len(node.input) > 1 and model.is_initializer(node.input[1]):
            names.add(node.input[1])
    return names


def l1_scores(model: OnnxModel, qadg: QADG) -> dict[int, float]:
    """Per prunable group: the L1 norm of its source weight slices (filters of a conv,
    rows of a head's projections), each divided by the mean slice norm of that weight
    tensor over the cluster, averaged over the group's source tensors. The per-tensor
    normalisation makes the sources of a residual-tied group count alike; it does not
    change the order inside a single-source cluster (plain Li et al. filter L1)."""
    raw: dict[int, dict[str, float]] = {}
    for g in qadg.prunable:
        weights = _source_weights(model, g)
        members = [m for m in g.members if m.role == "out" and m.tensor in weights]
        if not members:  # e.g. a source that is not a weighted op: every trainable out slice
            members = [m for m in g.members if m.role == "out" and model.is_initializer(m.tensor)]
        per = raw.setdefault(g.id, {})
        for m in members:
            per[m.tensor] = per.get(m.tensor, 0.0) + float(np.abs(np.take(model.array(m.tensor), m.indices, axis=m.axis)).sum())
    scores = {}
    for groups in clusters(qadg).values():
        tensors = {t for g in groups for t in raw[g.id]}
        mean = {t: np.mean([raw[g.id].get(t, 0.0) for g in groups]) for t in tensors}
        for g in groups:
            parts = [v / mean[t] if mean[t] > 0 else 0.0 for t, v in raw[g.id].items()]
            scores[g.id] = float(np.mean(parts)) if parts else 0.0
    return scores


class _UniformPlan:
    """Remove the same fraction of every cluster, lowest score first, each cluster's kept
    count on the allowed widths (multiples of `unit` or untouched; heads: any count >= 1).
    A plan is a tuple of per-cluster option indices into `options` (removal counts)."""

    def __init__(self, qadg: QADG, scores: dict[int, float], unit: int):
        self.order = {key: [g.id for g in sorted(gs, key=lambda g: (scores[g.id], g.id))]
                      for key, gs in clusters(qadg).items()}
        self.options = {key: allowed_removals(len(gs), 1 if gs[0].kind == "head" else unit)
                        for key, gs in clusters(qadg).items()}

    def uniform(self, ratio: float) -> tuple[int, ...]:
        """Per cluster, the allowed removal nearest to ratio x its size (ties: fewer)."""
        out = []
        for k, opts in self.options.items():
            n = len(self.order[k])
            out.append(min(range(len(opts)), key=lambda i: (abs(opts[i] - ratio * n), opts[i])))
        return tuple(out)

    def counts(self, plan: tuple[int, ...]) -> list[int]:
        return [opts[i] for opts, i in zip(self.options.values(), plan)]

    def fractions(self, plan: tuple[int, ...]) -> list[float]:
        return [c / len(self.order[k]) for c, k in zip(self.counts(plan), self.options)]

    def removed(self, plan: tuple[int, ...]) -> list[int]:
        return [gid for k, c in zip(self.options, self.counts(plan)) for gid in self.order[k][:c]]

    def widths(self, plan: tuple[int, ...]) -> dict[str, list[int]]:
        """Cluster (its sources joined by '+') -> [kept, total] groups."""
        return {"+".join(k): [len(self.order[k]) - c, len(self.order[k])]
                for k, c in zip(self.options, self.counts(plan))}


def l1_prune(model_path: str | os.PathLike, target_macs: int, out_path: str | os.PathLike, unit: int = 16,
             *, iterations: int = 24, refine_evals: int = 60) -> dict:
    """Structured L1 pruning of `model_path` to at most `target_macs` MACs per sample.

    Uses geta-onnx's pruning groups (qadg.analyze), scores them with l1_scores and removes
    the same fraction of every cluster, lowest score first (Li et al. 2017), keeping every
    channel count a multiple of `unit`. The fraction is found by bisection: the smallest
    one whose physically pruned graph (prune.prune_model, MACs by graph.stats) meets the
    target. Rounding to units makes the MACs a coarse step function of the fraction, so
    the budget left is then filled back greedily: one unit at a time is restored to the
    cluster with the largest removed fraction whose restoration still fits (at most
    `refine_evals` tries), which keeps the ratios near-uniform and the baseline as close
    to the target MACs as the units allow.
    Raises ConfigError when even the narrowest allowed widths exceed the target.
    Returns {"seconds", "ratio", "macs", "original_macs", "target_macs", "removed_groups",
    "prunable_groups", "unit", "widths"}."""
    start = time.perf_counter()
    model = load_model(model_path)
    qadg = analyze(model)
    plan = _UniformPlan(qadg, l1_scores(model, qadg), unit)
    original = model_stats(model).macs
    cache: dict[tuple[int, ...], tuple[int, onnx.ModelProto]] = {}

    def macs(p: tuple[int, ...]) -> int:
        if p not in cache:
            proto = prune_model(qadg, plan.removed(p)) if any(p) else model.proto
            cache[p] = (model_stats(from_proto(proto, check=False)).macs, proto)
        return cache[p][0]

    lo, hi = 0.0, 1.0
    if macs(plan.uniform(lo)) <= target_macs:
        hi = 0.0
    elif macs(plan.uniform(hi)) > target_macs:
        raise ConfigError(f"l1_prune: {model_path} cannot get below {macs(plan.uniform(hi)):,} MACs with kept "
                          f"widths in multiples of {unit} (target {target_macs:,}); lower the unit or raise the target")
    for _ in range(iterations if hi > 0 else 0):  # invariant: macs(lo) > target >= macs(hi)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(plan.uniform(mid)) <= target_macs else (mid, hi)
    best, tries = plan.uniform(hi), 0
    while tries < refine_evals:
        fractions = plan.fractions(best)
        candidates = sorted((i for i, level in enumerate(best) if level > 0), key=lambda i: (-fractions[i], i))
        for i in candidates:
            restored = best[:i] + (best[i] - 1,) + best[i + 1:]
            tries += 1
            if macs(restored) <= target_macs:
                best = restored
                break
            if tries >= refine_evals:
                break
        else:
            break  # no single restoration fits any more
    write_bytes_atomic(out_path, cache[best][1].SerializeToString() if best in cache else model.proto.SerializeToString())
    return {"seconds": time.perf_counter() - start, "ratio": hi, "macs": int(macs(best)),
            "original_macs": int(original), "target_macs": int(target_macs),
            "removed_groups": len(plan.removed(best)), "prunable_groups": len(qadg.prunable), "unit": unit,
            "widths": plan.widths(best)}


# --------------------------------------------------------------------------- fine-tuning
LOSSES = ("task", "task+kd", "kd-mse", "kd-cosine", "kd-bce", "kd-kl", "kd-all-mse", "kd-all-bce", "kd-all-kl")


class Distill:
    """Distillation from a frozen teacher (the original fp32 model: train/teacher.py) on output
    `output`: mse, cosine (1 - cos along the last axis: embeddings), bce (sigmoid
    probabilities as soft targets: CREPE's pitch bins) or kl (class logits, T = 1)."""

    def __init__(self, kind: str, teacher: torch.nn.Module, output: int = 0):
        self.kind, self.output = kind, output
        self.teacher = teacher.eval().requires_grad_(False)
        self.memo = None  # a TeacherMemo: each sample through the teacher once, as compress does

    def to(self, device):
        self.teacher.to(device)
        return self

    def __call__(self, outputs, target, inputs) -> torch.Tensor:
        from geta_onnx.train.losses import bce_distill, pick
        from geta_onnx.train.teacher_memo import teacher_outputs

        student = pick(outputs, self.output)
        with torch.no_grad():
            teacher = pick(teacher_outputs(self.teacher, inputs, self.memo), self.output)
        if self.kind == "mse":
            return F.mse_loss(student, teacher)
        if self.kind == "cosine":
            return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        if self.kind == "bce":
            return bce_distill(student, teacher)
        return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")


def make_finetune_loss(loss: str, *, teacher_path: str | os.PathLike | None = None, output: int = 0,
                       memo_samples: int | None = None):
    """A loss(outputs, target, inputs) for the repo's training loop: "task" (cross-entropy
    with labels), "task+kd" (geta-onnx's default loss with labels, the same weights: half
    cross-entropy, half KL at T = 2 from the teacher), "kd-<mse|cosine|bce|kl>" from the
    teacher model at `teacher_path` on output `output`, or "kd-all-<mse|bce|kl>": compress's
    label-free loss with its default kd_outputs = "all" (every float output of a multi-output
    model distilled, MSE ones relative to the teacher's mean square; train/losses.py), so a
    pipeline gets the training signal compress gets. memo_samples: the distinct samples of the data; the
    teacher's outputs are then remembered per sample, as compress remembers them
    (geta_onnx/train/teacher_memo.py), so the pipeline's fine-tuning pays what compress pays."""
    from geta_onnx.bridge import to_torch
    from geta_onnx.train import Loss
    from geta_onnx.train.teacher import teacher_for
    from geta_onnx.train.teacher_memo import TeacherMemo

    if loss not in LOSSES:
        raise ConfigError(f"finetune: loss must be one of {', '.join(LOSSES)}, got '{loss}'")
    if loss == "task":
        return Loss("task", output=output)
    if teacher_path is None:
        raise ConfigError(f"finetune: loss '{loss}' needs teacher_path (the original fp32 model)")
    original = load_model(teacher_path)
    teacher = teacher_for(to_torch(original), original)  # as compress runs its teacher (onnxruntime on CPU)
    if loss == "task+kd":
        made = Loss("task+kd", teacher=teacher, output=output)
    elif loss.startswith("kd-all-"):
        made = Loss("kd", teacher=teacher, kd=loss[len("kd-all-"):], output=output, every_output=True)
    else:
        made = Distill(loss[3:], teacher, output)
    made.memo = TeacherMemo(memo_samples) if memo_samples else None
    return made


@torch.no_grad()
def mean_loss(module: torch.nn.Module, data, loss_fn, batches: int = 4) -> float:
    """The loss in eval mode over the first `batches` training batches (a fixed probe:
    the train loader is reshuffled per epoch, so it is re-seeded by the caller's data)."""
    from geta_onnx.train import split_batch

    module.eval()
    names = list(module.input_names)
    total, n = 0.0, 0
    for i, batch in enumerate(data.train):
        if i >= batches:
            break
        inputs, target = split_batch(batch, names, f"data '{data.spec}'")
        total, n = total + float(loss_fn(module(*inputs), target, inputs)), n + 1
    return total / max(n, 1)


def finetune(model_path: str | os.PathLike, data, epochs: int, lr: float, out_path: str | os.PathLike,
             loss: str = "task", *, teacher_path: str | os.PathLike | None = None, output: int = 0,
             weight_decay: float = 0.0, seed: int = 0, probe_batches: int = 4, progress: bool = False) -> dict:
    """Fine-tune `model_path` (typically the L1-pruned model) on `data` (geta_onnx.train.Data)
    for `epochs` with Adam and a per-step cosine LR decay, through the ONNX -> PyTorch
    bridge and the repo's training loop, then write the trained initializers (weights and
    BatchNorm running statistics) back into the ONNX graph at `out_path`.

    loss: "task" (labels), "task+kd" (labels and distillation, as geta-onnx's default) or
    "kd-mse" / "kd-cosine" / "kd-bce" / "kd-kl" (label-free: distillation from
    `teacher_path`, the original model, on output `output`) or "kd-all-mse" / "kd-all-bce" /
    "kd-all-kl" (every float output, as compress distils: make_finetune_loss).
    Returns {"seconds", "epochs", "steps", "loss_before", "loss_after", "history"}, the
    losses measured in eval mode on the first `probe_batches` training batches."""
    from geta_onnx.bridge import to_torch
    from geta_onnx.train import lr_scheduler, train

    if epochs < 1 or lr <= 0:
        raise ConfigError(f"finetune: epochs must be >= 1 and lr > 0, got {epochs} and {lr}")
    start = time.perf_counter()
    model = load_model(model_path)
    module = to_torch(model)
    loss_fn = make_finetune_loss(loss, teacher_path=teacher_path, output=output, memo_samples=data.samples)
    torch.manual_seed(seed)
    before = mean_loss(module, data, loss_fn, probe_batches)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = lr_scheduler(opt, "cosine", epochs * len(data.train))
    result = train(module, data, opt, loss_fn=loss_fn, epochs=epochs, lr_scheduler=sched,
                   eval_fn=lambda m: {}, progress=progress, seed=seed, output=output)
    after = mean_loss(module, data, loss_fn, probe_batches)
    write_bytes_atomic(out_path, with_values(model, module.initializer_values()).SerializeToString())
    return {"seconds": time.perf_counter() - start, "epochs": epochs, "steps": result.steps, "lr": lr,
            "loss": loss, "loss_before": before, "loss_after": after,
            "history": [{"epoch": h["epoch"], "train_loss": h["train_loss"]} for h in result.history]}


def with_values(model: OnnxModel, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the model with the initializers in `values` replaced (same names, shapes
    and dtypes; a shape change is a bug in the caller and raises)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for i, t in enumerate(proto.graph.initializer):
        if t.name not in values:
            continue
        old = model.array(t.name)
        new = np.asarray(values[t.name])
        if new.shape != old.shape:
            raise GetaError(f"initializer '{t.name}': trained shape {new.shape} != graph shape {old.shape}")
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), t.name))
    onnx.checker.check_model(proto)
    return proto
