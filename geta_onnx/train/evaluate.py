"""The loop's default evaluation: mean loss, plus accuracy with labels or top-1 agreement with
the teacher without them. Sums are all-reduced, so a sharded eval set gives the same numbers
as one process would."""
from __future__ import annotations

import torch

from .batching import split_batch
from .distributed import all_reduce_sum
from .losses import Loss, looks_like_logits, pick
from .scores import predicted_classes, score_threshold


def _to(x, device):
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


@torch.no_grad()
def evaluate(module: torch.nn.Module, loader, loss_fn, *, device: torch.device, input_names: list[str],
             output: int = 0) -> dict[str, float]:
    """{"loss": mean loss per sample, "accuracy": fraction of correct labels (integer labels),
    "agreement": fraction of top-1 matches with the teacher (distillation of class logits),
    "cosine": mean per-sample cosine with the teacher's output (distillation of anything else:
    embeddings, regression heads)}. Leaves the module in eval mode."""
    module.eval()
    ours = isinstance(loss_fn, Loss)
    teacher = ours and loss_fn.uses_teacher
    needs_labels = ours and loss_fn.mode != "kd"
    loss_sum = samples = correct = labelled = agree = compared = cos_sum = cos_n = 0.0
    for batch in loader:
        inputs, target = split_batch(batch, input_names, "eval data")
        inputs, target = tuple(_to(x, device) for x in inputs), _to(target, device)
        outputs = module(*inputs)
        out = pick(outputs, output)
        n = inputs[0].shape[0]
        t_all = loss_fn.teacher_outputs(inputs) if teacher else None  # once: the loss and the agreement read it
        t_out = pick(t_all, loss_fn.output) if teacher else None
        if target is not None or not needs_labels:  # eval data without labels: no task loss
            loss = loss_fn(outputs, target, inputs, teacher_outs=t_all) if ours else loss_fn(outputs, target, inputs)
            loss_sum, samples = loss_sum + float(loss) * n, samples + n
        if target is not None and not target.is_floating_point() and out.dim() >= 2:
            pred = predicted_classes(out)
            hits = pred == target.reshape(pred.shape)  # (N, ...) per position
            correct, labelled = correct + float(hits.sum()), labelled + hits.numel()
        if t_out is not None and (looks_like_logits(t_out) or _one_score(t_out, out)):
            threshold = score_threshold(t_out) if t_out.shape[1] == 1 else None  # the teacher's kind of score
            same = predicted_classes(out, threshold) == predicted_classes(t_out, threshold)
            agree, compared = agree + float(same.sum()), compared + same.numel()
        elif t_out is not None and t_out.is_floating_point() and t_out.shape == out.shape:
            cos = torch.nn.functional.cosine_similarity(out.reshape(n, -1).float(), t_out.reshape(n, -1).float(), dim=1)
            cos_sum, cos_n = cos_sum + float(cos.sum()), cos_n + n
    loss_sum, samples, correct, labelled, agree, compared, cos_sum, cos_n = all_reduce_sum(
        [loss_sum, samples, correct, labelled, agree, compared, cos_sum, cos_n], device)
    metrics = {}
    if samples:
        metrics["loss"] = loss_sum / samples
    if labelled:
        metrics["accuracy"] = correct / labelled
    if compared:
        metrics["agreement"] = agree / compared
    if cos_n:
        metrics["cosine"] = cos_sum / cos_n
    return metrics


def _one_score(t_out: torch.Tensor, out: torch.Tensor) -> bool:
    """One score per row (or position) on axis 1: a sigmoid probability or its logit."""
    return t_out.is_floating_point() and t_out.dim() >= 2 and t_out.shape[1] == 1 and t_out.shape == out.shape
