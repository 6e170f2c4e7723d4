"""Recurrent weights in int8: an LSTM's input and recurrence weights W [D, 4H, I] and
R [D, 4H, H] on an int8 grid with one step per direction, exported as com.microsoft
DynamicQuantizeLSTM (export/recurrent.py), the LSTM kernel onnxruntime runs with int8 weights.

A recurrent layer can hold a large share of a model's weights (ddddocr's captcha models: a
bidirectional LSTM of 4.2 M weights) and stayed float, so a compressed file could be larger
than the user's `quantize_dynamic` one (docs/realworld.md). The deployable format fixes the grid:
DynamicQuantizeLSTM takes int8 weights with a scale per direction (what `quantize_dynamic`
writes); it also accepts a scale per direction and gate column, but onnxruntime's kernel with
those scales did not compute the LSTM of its own dequantized weights (docs/deployment.md,
"Recurrent layers"), so the step is per direction: step_d = max |W_d| / 127, fixed by the
weight itself, no bit width to learn, outside QASSO's bit projection. The kernel rounds its
activations (the input sequence, each hidden state) to uint8 on a dynamic grid per call; that
rounding is not trained (it spans each tensor's range: no clamp to learn). GRU stays float
(onnxruntime has no int8 GRU kernel), as do LSTMs with layout 1 (DynamicQuantizeLSTM has no
layout attribute) and the tensorrt profile.

Requires: a bridged module (bridge.to_torch) and its OnnxModel.
Ensures:
- find_lstms: every default-domain LSTM with layout 0 whose W and R are 3-D float trainable
  initializers read by that LSTM only;
- attach_lstms: one RecurrentQuantizer per weight (W and R), between the
  weight and the LSTM, in `module.quantizers.r_<initializer>`; with RecurrentQuantizer.enabled
  False (quantizers_off) the module computes the original function;
- recurrent_int8: the integers and steps the export writes, from the function training
  rounds with, so the exported weights are the fake-quant weights bitwise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase

import numpy as np
import torch
from torch import fx, nn

from ..graph.model import OnnxModel, attr
from .int8 import StraightThrough, int8_integers, int8_steps

WEIGHT_SLOTS = (1, 2)  # LSTM inputs W, R


@dataclass(frozen=True)
class QuantRecurrent:
    node: str  # the LSTM node
    weights: tuple[str, str]  # W, R initializers, [D, 4H, I] and [D, 4H, H]
    quantizers: tuple[str, str]  # qualified names, "quantizers.r_<initializer>"
    parameters: int  # weights in W and R (before pruning)

    def to_dict(self) -> dict:
        return asdict(self)


def find_lstms(model: OnnxModel, trainable: frozenset[str], exclude=()) -> list[tuple[str, tuple[str, str]]]:
    """(LSTM node, (W, R)) in graph order; `exclude`: fnmatch patterns of node names kept float."""
    found = []
    for node in model.nodes:
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx") or attr(node, "layout", 0) != 0 \
                or any(fnmatchcase(node.name, pattern) for pattern in exclude):
            continue
        weights = tuple(node.input[slot] if len(node.input) > slot else "" for slot in WEIGHT_SLOTS)
        if all(_own_weight(model, name, trainable) for name in weights):
            found.append((node.name, weights))
    return found


def _own_weight(model: OnnxModel, name: str, trainable: frozenset[str]) -> bool:
    if not name or name not in trainable or not model.is_initializer(name) or name in model.output_names:
        return False
    init = model.initializers[name]
    return len(init.dims) == 3 and init.data_type == 1 and len(model.consumers(name)) == 1


def recurrent_steps(w: torch.Tensor) -> torch.Tensor:
    """float32 steps, shape (D, 1, 1): max |W_d| / 127 per direction (1 where W_d is 0)."""
    return int8_steps(w, (1, 2))


class RecurrentQuantizer(nn.Module):
    """forward(w): W [D, 4H, K] on its int8 grid, one step per direction (recurrent_steps);
    the gradient passes straight through. No parameters: the steps follow the weight."""

    def __init__(self):
        super().__init__()
        self.enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        with torch.no_grad():
            steps = recurrent_steps(w)
            q = (int8_integers(w, steps) * steps).to(w.dtype)
        return StraightThrough.apply(w, q)

    def extra_repr(self) -> str:
        return f"int8 per direction, enabled={self.enabled}"


def attach_lstms(module, model: OnnxModel, trainable: frozenset[str], names, fx_of: dict,
                 exclude=()) -> list[QuantRecurrent]:
    """RecurrentQuantizers on W and R of each LSTM of find_lstms (module.quantizers must
    exist); `names`: quant.sites._Names; `fx_of`: qualified module name -> its fx node."""
    found = []
    for node, weights in find_lstms(model, trainable, exclude):
        call: fx.Node = fx_of[module.node_modules[node]]
        qualified = []
        for slot, weight in zip(WEIGHT_SLOTS, weights):
            name = names.get("r_", weight)
            module.quantizers.add_module(name, RecurrentQuantizer())
            source = call.args[slot]
            with module.graph.inserting_before(call):
                q = module.graph.call_module(f"quantizers.{name}", (source,))
            call.update_arg(slot, q)
            qualified.append(f"quantizers.{name}")
        size = sum(math.prod(model.initializers[w].dims) for w in weights)
        found.append(QuantRecurrent(node, weights, tuple(qualified), size))
    return found


def recurrent_int8(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight [D, 4H, K], float32 steps [D]) as the export writes them (pruned input
    columns gone: a pruned column was zero, so the steps are unchanged)."""
    w = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    steps = recurrent_steps(w)
    return int8_integers(w, steps).numpy().astype(np.int8), steps.reshape(-1).numpy().astype(np.float32)
