"""Training losses: the task loss with labels, distillation from the original model, or both.

Every loss is called as loss(outputs, target, inputs) -> scalar tensor, where `outputs` is what
the student module returned (a tensor or a tuple of them), `target` the batch's labels (or
None) and `inputs` the tuple fed to the student (the teacher reads the same inputs).

The teacher is the original fp32 model, frozen (teacher.py: run in onnxruntime on a CPU run,
else the bridged module in eval mode, requires_grad False, under torch.no_grad()), so
compressing the student never moves it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from .teacher import teacher_for
from .teacher_memo import TeacherMemo, teacher_outputs


def pick(outputs, index: int) -> torch.Tensor:
    """Output `index` of a module that returns one tensor or a tuple."""
    if isinstance(outputs, torch.Tensor):
        if index != 0:
            raise ConfigError(f"option 'output': the model has 1 output, index {index} does not exist")
        return outputs
    if index >= len(outputs):
        raise ConfigError(f"option 'output': the model has {len(outputs)} outputs, index {index} does not exist")
    return outputs[index]


def _class_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) or (N, C, d1, ...) -> (N * d1 * ..., C): one row of class scores per position."""
    return logits if logits.dim() == 2 else logits.movedim(1, -1).reshape(-1, logits.shape[1])


def check_labels(output: torch.Tensor, target: torch.Tensor) -> None:
    """Integer labels must index the output's classes (axis 1); else a DataError, not torch's
    device-side assert. Costs a sync, so Loss runs it on its first batch only."""
    if target.is_floating_point() or output.dim() < 2 or target.numel() == 0:
        return
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= output.shape[1]:
        raise DataError(f"labels run from {lo} to {hi} but the model output has {output.shape[1]} classes "
                        f"(shape {tuple(output.shape)}); check the data or choose another output with 'output'")


def task_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer labels ((N,) or (N, d1, ...) with logits (N, C, d1, ...)),
    MSE for float targets (regression)."""
    if target.is_floating_point():
        return F.mse_loss(output, target.to(output.dtype).reshape(output.shape))
    if output.dim() < 2:
        raise DataError(f"integer labels need class logits of shape (N, C, ...); the model output has shape "
                        f"{tuple(output.shape)}; use float targets or loss = kd")
    return F.cross_entropy(output, target.long())


def kl_distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation: KL(softmax(t / T) || softmax(s / T)) * T^2, averaged over rows
    (the T^2 keeps gradient magnitudes comparable across temperatures)."""
    s = F.log_softmax(_class_rows(student).float() / temperature, dim=-1)
    t = F.log_softmax(_class_rows(teacher).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def looks_like_logits(output: torch.Tensor) -> bool:
    """Class scores: (N, C) with C >= 2, unless the rows are unit vectors (a normalised
    sentence / image embedding) or independent probabilities in [0, 1] that do not sum to 1
    (sigmoid outputs, e.g. CREPE's pitch bins): those, embeddings (N, T, D) and scalars are
    regressed (MSE). A softmax output (rows summing to 1) counts as class scores."""
    if not (output.is_floating_point() and output.dim() == 2 and output.shape[1] >= 2):
        return False
    rows = output.detach().float()
    if torch.allclose(rows.norm(dim=1), rows.new_ones(()), atol=1e-3):
        return False
    in_unit = bool(((rows >= 0) & (rows <= 1)).all())
    return not in_unit or torch.allclose(rows.sum(1), rows.new_ones(()), atol=1e-3)


def looks_like_sigmoid(output: torch.Tensor) -> bool:
    """Independent probabilities: (N, C) with C >= 2, every value in [0, 1], rows that neither
    sum to 1 (softmax) nor have unit norm (embeddings): a multi-label sigmoid head such as
    CREPE's 360 pitch bins. Distilled with binary cross-entropy, their training loss."""
    if not (output.is_floating_point() and output.dim() == 2 and output.shape[1] >= 2):
        return False
    rows = output.detach().float()
    one = rows.new_ones(())
    return (bool(((rows >= 0) & (rows <= 1)).all()) and not torch.allclose(rows.sum(1), one, atol=1e-3)
            and not torch.allclose(rows.norm(dim=1), one, atol=1e-3))


def bce_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's probabilities against the teacher's as soft
    targets, per element (the student clamped away from 0 and 1, where the log diverges)."""
    eps = 1e-7
    return F.binary_cross_entropy(student.float().clamp(eps, 1 - eps), teacher.float())


def is_probabilities(output: torch.Tensor) -> bool:
    """A model that ends in Softmax: rows >= 0 that sum to 1 (their log is then a logit vector)."""
    rows = _class_rows(output)
    return bool((rows >= 0).all()) and torch.allclose(rows.sum(-1), rows.new_ones(()), atol=1e-3)


class Loss:
    """mode: "task" (labels), "kd" (teacher), "task+kd" (alpha * task + (1 - alpha) * kd).
    kd: "kl" | "bce" | "mse" | "auto" (decided once, on the first teacher output: KL for class
    logits, BCE for independent sigmoid probabilities, MSE otherwise). output: which model
    output both losses read. every_output (mode "kd"): distill every float output of a
    multi-output model (a detector's score and box heads), the mean of the per-output losses,
    each with its own kd kind, MSE ones relative to the teacher's mean square so heads of
    different scales weigh alike; otherwise the heads no loss reads would be pruned untrained."""

    def __init__(self, mode: str = "task", *, teacher: nn.Module | None = None, kd: str = "auto",
                 temperature: float = 2.0, alpha: float = 0.5, output: int = 0, every_output: bool = True):
        if mode not in ("task", "kd", "task+kd"):
            raise ConfigError(f"option 'loss': expected task, kd or task+kd, got '{mode}'")
        if mode != "task" and teacher is None:
            raise ConfigError(f"option 'loss': '{mode}' needs a teacher model")
        self.mode, self.temperature, self.alpha, self.output = mode, temperature, alpha, output
        self._kd, self.every_output = kd, every_output
        self.teacher = teacher
        self._kinds: dict[int, str] = {}  # output index -> kl | bce | mse (kd "auto": decided once each)
        self._probs: dict[int, bool] = {}  # output index -> its values are softmax probabilities
        self._labels_checked = False
        self.memo: TeacherMemo | None = None  # the teacher's outputs per sample (teacher_memo.py), set by make_loss
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    @property
    def kd(self) -> str:
        """The kd kind of the loss's output: as configured, or what "auto" decided."""
        return self._kinds.get(self.output, self._kd)

    @property
    def uses_teacher(self) -> bool:
        return self.mode != "task"

    def to(self, device) -> Loss:
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def teacher_outputs(self, inputs):
        """Every output of the teacher on `inputs` (a tensor or a tuple, as the model returns),
        remembered per sample when the loss has a memo."""
        with torch.no_grad():
            return teacher_outputs(self.teacher, inputs, self.memo)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, index: int | None = None) -> torch.Tensor:
        """The kd loss of output `index` (default: the loss's output)."""
        index = self.output if index is None else index
        kind = self._kinds.get(index, self._kd)
        if kind == "auto":
            kind = "kl" if looks_like_logits(teacher) else "bce" if looks_like_sigmoid(teacher) else "mse"
        self._kinds[index] = kind
        if kind == "kl":
            if index not in self._probs:
                self._probs[index] = is_probabilities(teacher)
            if self._probs[index]:
                student, teacher = student.clamp_min(1e-12).log(), teacher.clamp_min(1e-12).log()
            return kl_distill(student, teacher, self.temperature)
        if kind == "bce":
            return bce_distill(student, teacher)
        return F.mse_loss(student, teacher)

    def distill_every_output(self, outputs, teachers) -> torch.Tensor | None:
        """The mean kd loss over the float outputs (MSE ones divided by the teacher's mean
        square); None when fewer than two outputs are float (then `output` alone is read)."""
        floats = [i for i, s in enumerate(outputs) if s.is_floating_point()]  # not index / shape outputs
        if len(floats) < 2:
            return None
        losses = []
        for i in floats:
            loss = self.distill(outputs[i], teachers[i], i).float()
            if self._kinds[i] == "mse":
                loss = loss / (teachers[i].float().pow(2).mean() + 1e-12)
            losses.append(loss)
        return torch.stack(losses).mean()

    def __call__(self, outputs, target, inputs, teacher_outs=None) -> torch.Tensor:
        """teacher_outs: the teacher's outputs for `inputs` (teacher_outputs) when the caller
        has them already; the teacher runs once per call otherwise."""
        if self.uses_teacher and teacher_outs is None:
            teacher_outs = self.teacher_outputs(inputs)
        if self.mode == "kd" and self.every_output and isinstance(outputs, (tuple, list)):
            every = self.distill_every_output(outputs, teacher_outs)
            if every is not None:
                return every
        out = pick(outputs, self.output)
        teacher_out = pick(teacher_outs, self.output) if self.uses_teacher else None
        if self.mode == "kd":
            return self.distill(out, teacher_out)
        if target is None:
            raise DataError("loss 'task' needs labels but the batch has none; use loss = kd (distillation)")
        if not self._labels_checked:
            check_labels(out, target)
            self._labels_checked = True
        task = task_loss(out, target)
        if self.mode == "task":
            return task
        return self.alpha * task + (1 - self.alpha) * self.distill(out, teacher_out)


def make_loss(mode: str = "auto", *, has_labels: bool, module: nn.Module | None = None,
              teacher: nn.Module | None = None, model=None, device="cpu", memo_samples: int | None = None,
              **kw) -> Loss:
    """mode "auto": task loss + distillation when the data has labels, distillation alone
    otherwise (the original is a trained model; config.TrainConfig.loss). The teacher defaults
    to the original as it is now, before any training step: `model` (the OnnxModel `module`
    was bridged from) run in onnxruntime on a CPU run, else a frozen deep copy of `module`
    (teacher.teacher_for). memo_samples: the distinct samples the data holds (training +
    held-out); on a CPU run the teacher's outputs are then remembered per sample
    (teacher_memo.py), None: the teacher runs on every batch."""
    if mode == "auto":
        mode = "task+kd" if has_labels else "kd"
    if mode != "task" and teacher is None:
        if module is None:
            raise ConfigError(f"option 'loss': '{mode}' needs the original model as teacher")
        teacher = teacher_for(module, model, device)
    if mode != "kd" and not has_labels:
        raise ConfigError(f"option 'loss': '{mode}' needs labels and the data has none; use loss = kd")
    loss = Loss(mode, teacher=teacher, **kw)
    if loss.uses_teacher and memo_samples and torch.device(device).type == "cpu":
        loss.memo = TeacherMemo(memo_samples)
    return loss
