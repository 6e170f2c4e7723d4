"""The distillation teacher: the original fp32 model, frozen, run for its outputs only.

On CPU the teacher is the ONNX graph the bridge was built from, run in onnxruntime. It needs no
gradient and no training-mode bookkeeping, and onnxruntime's fused inference kernels run it in
a fraction of the time of the bridged module's eager forward, a sizeable part of each step
(docs/measurements.md, "An onnxruntime teacher"). Its outputs agree with the bridged module's
within float rounding (tests/train/test_teacher.py).

The bridged module, deep-copied before any quantizer exists, stays the teacher where
onnxruntime cannot stand in: a CUDA run (our onnxruntime is the CPU build), a graph that takes
one sample per forward (bridge.OnnxModule.per_sample), a graph onnxruntime cannot open, and
GETA_ONNX_TEACHER=torch (for comparisons). An original that is already a QDQ model with
full-range int8 weights runs with onnxruntime's basic optimizations on a CPU whose fused int8
kernels saturate them (docs/deployment.md): its own math, as the bridged module computes it.
"""
from __future__ import annotations

import copy
import logging
import os

import numpy as np
import torch
from torch import nn

from ..graph import OnnxModel

log = logging.getLogger(__name__)


class OrtTeacher:
    """Callable like the bridged module: teacher(*inputs) -> one tensor, or a tuple for a graph
    with several outputs. Inputs are the tensors fed to the student (graph input order).

    The session has torch's intra-op thread count (under torchrun, each rank's); its threads do
    not spin between calls, so they leave the cores to the training step that follows. Outputs
    are CPU tensors sharing memory with onnxruntime's arrays (nothing copies them)."""

    kind = "onnxruntime"

    def __init__(self, model: OnnxModel, input_names: list[str], output_names: list[str]):
        import onnxruntime as ort

        from ..bench.session import session_options
        from ..quant.weight_range import saturated_here

        self.input_names, self.output_names = list(input_names), list(output_names)
        self._dtypes = [model.info(n).np_dtype if model.info(n) is not None else None for n in input_names]
        # an already-quantized original whose full-range int8 weights this CPU's fused kernels saturate runs as
        # its own QDQ math, which the bridged module computes (quant.weight_range.saturated_here)
        self.unfused = saturated_here(model.proto)
        if self.unfused:
            log.info("%s: the onnxruntime teacher runs unfused: this CPU's int8 kernels saturate its int8 weights",
                     model.label)
        opts = session_options(torch.get_num_threads(), unfused=self.unfused)  # as every measurement runs, plus:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    # the nn.Module calls Loss makes on its teacher
    def eval(self) -> OrtTeacher:
        return self

    def requires_grad_(self, flag: bool = True) -> OrtTeacher:
        return self

    def to(self, device) -> OrtTeacher:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the onnxruntime teacher runs on the CPU, not {device}")  # teacher_for decides
        return self

    def __call__(self, *inputs: torch.Tensor):
        feeds = {}
        for name, x, dtype in zip(self.input_names, inputs, self._dtypes):
            a = x.detach().cpu().numpy()
            feeds[name] = np.ascontiguousarray(a if dtype is None or a.dtype == dtype else a.astype(dtype))
        outs = [torch.from_numpy(o) for o in self.session.run(self.output_names, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def teacher_for(module: nn.Module, model: OnnxModel | None = None, device: str | torch.device = "cpu"):
    """The teacher of a run whose student is `module`, bridged from `model`: an OrtTeacher of
    `model` where it can stand in (see the module docstring), else a frozen deep copy of
    `module` taken now. Either way nothing the student learns reaches it."""
    reason = None
    if model is None:
        reason = "no ONNX graph given"
    elif torch.device(device).type != "cpu":
        reason = f"device {device}"
    elif getattr(module, "per_sample", False):
        reason = "the graph takes one sample per forward"
    elif os.environ.get("GETA_ONNX_TEACHER", "").lower() == "torch":
        reason = "GETA_ONNX_TEACHER=torch"
    if reason is None:
        try:
            return OrtTeacher(model, module.input_names, module.output_names)
        except Exception as e:  # onnxruntime raises its own types; a > 2 GB proto cannot serialise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"onnxruntime cannot run {model.label} ({first})"
    log.debug("distillation teacher: the bridged module (%s)", reason)
    teacher = copy.deepcopy(module)
    teacher.kind = "torch"
    return teacher
