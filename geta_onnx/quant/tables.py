"""Embedding tables in int8: a Gather of a trainable 2-D table exported as
Gather(int8 table, ids) -> Cast(float) -> Mul(steps per column): the int8 rows are gathered,
then only they are scaled.

A transformer's tables are a large share of its weights (MiniLM: 11.7 M of 22.6 M) and were
exported in float, so a compressed model could be larger than the user's `quantize_dynamic`
file (docs/realworld.md). There is no bit width to learn here: no kernel computes in the
table's precision, int8 is the only deployable width, and its step per column is fixed by the
table itself, step_j = max_i |W_ij| / 127 (a column of zeros, a pruned channel, gets step 1
and stays zero). Per column, not per tensor: a table's columns can have very different ranges
(MiniLM's position table; the errors of both choices: docs/deployment.md, "Embedding tables").
Cast -> Mul, not a DequantizeLinear with axis -1: onnxruntime's per-axis DequantizeLinear on
the last axis runs element by element, several times slower than the float Gather it replaces
(same section, tools/bench_embedding_table.py). Training reads the fake-quant values with a
straight-through gradient (TableQuantizer, inserted after the Gather: only the gathered rows
are rounded; the column maxima are one pass over the table per step), and the export computes
the same integers with the same functions (quant/int8.py), so the exported model equals the
fake-quant one bitwise on the table.

Requires: a bridged module (bridge.to_torch) and its OnnxModel.
Ensures:
- find_tables: every 2-D float table of at least TABLE_MIN_ELEMENTS weights that is a
  trainable initializer read ONLY by Gathers along axis 0 whose indices are computed (a
  table also read as a layer's weight, a tied LM head, stays float: its two readers would
  need two grids; a Gather that is a graph output keeps its table float too);
- attach_tables: one TableQuantizer per table after each of its Gathers, in
  `module.quantizers.t_<table>`; with TableQuantizer.enabled False (quantizers_off) the
  module computes the original function.
The ort profile only: TensorRT keeps tables float (the export writes the fake-quant values).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import fx, nn

from ..graph.model import OnnxModel, attr
from .int8 import StraightThrough, int8_integers, int8_steps

TABLE_MIN_ELEMENTS = 4096  # smaller ones stay float: a Cast and a Mul per run would save a few KB


@dataclass(frozen=True)
class QuantTable:
    weight: str  # the table initializer, shape (rows, columns)
    gathers: tuple[str, ...]  # the Gather nodes reading it
    shape: tuple[int, int]
    quantizer: str  # qualified name, "quantizers.t_<table>"

    def to_dict(self) -> dict:
        return asdict(self)


def find_tables(model: OnnxModel, trainable: frozenset[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(table initializer, its Gather nodes) in graph order."""
    found = []
    for name in dict.fromkeys(n.input[0] for n in model.nodes if n.op_type == "Gather" and n.input):
        if name not in trainable or not model.is_initializer(name):
            continue
        init = model.initializers[name]
        if len(init.dims) != 2 or init.dims[0] * init.dims[1] < TABLE_MIN_ELEMENTS or init.data_type != 1:
            continue
        readers = model.consumers(name)
        if name in model.output_names or not all(_embedding_gather(model, node, slot) for node, slot in readers):
            continue
        found.append((name, tuple(node.name for node, _ in readers)))
    return found


def _embedding_gather(model: OnnxModel, node, slot: int) -> bool:
    return (node.op_type == "Gather" and node.domain in ("", "ai.onnx") and slot == 0
            and attr(node, "axis", 0) == 0 and len(node.input) > 1 and not model.is_initializer(node.input[1])
            and node.output[0] not in model.output_names)


def table_steps(table: torch.Tensor) -> torch.Tensor:
    """float32 steps, shape (columns,): max_i |W_ij| / 127 (1 where the maximum is 0)."""
    return int8_steps(table, 0)[0]


def table_integers(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers in [-127, 127] as float32, steps): the values TableQuantizer gives the table."""
    steps = table_steps(table)
    return int8_integers(table, steps), steps


class TableQuantizer(nn.Module):
    """forward(rows, table): the gathered `rows` (..., columns) on the table's int8 grid;
    the gradient passes straight through to the rows (and so to the table). No parameters:
    the steps follow the table (table_steps)."""

    def __init__(self):
        super().__init__()
        self.enabled = True

    def forward(self, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return rows
        with torch.no_grad():
            steps = table_steps(table)
            q = (int8_integers(rows, steps) * steps).to(rows.dtype)
        return StraightThrough.apply(rows, q)

    def extra_repr(self) -> str:
        return f"int8 per column, enabled={self.enabled}"


def attach_tables(module, model: OnnxModel, trainable: frozenset[str], names, fx_of: dict) -> list[QuantTable]:
    """TableQuantizers after the Gathers of each table of find_tables (module.quantizers must
    exist); `names`: quant.sites._Names; `fx_of`: qualified module name -> its fx node."""
    tables = []
    for weight, gathers in find_tables(model, trainable):
        name = names.get("t_", weight)
        module.quantizers.add_module(name, TableQuantizer())
        for gather in gathers:
            call: fx.Node = fx_of[module.node_modules[gather]]
            with module.graph.inserting_after(call):
                q = module.graph.call_module(f"quantizers.{name}", (call, call.args[0]))
            call.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
        shape = tuple(int(d) for d in model.initializers[weight].dims)
        tables.append(QuantTable(weight, gathers, shape, f"quantizers.{name}"))
    return tables


def table_int8(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 table, float32 steps per column) of a table as the export writes it (pruned
    columns gone: the other columns' steps are unchanged)."""
    ints, steps = table_integers(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
    return ints.numpy().astype(np.int8), steps.numpy().astype(np.float32)
