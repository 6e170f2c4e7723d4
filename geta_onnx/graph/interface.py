"""Inputs the data cannot feed as they are: adapted for training, restored in the export.

The data gives every input one entry per sample along axis 0. Three kinds of inputs do not
fit (Silero VAD has the first two):
- a value fixed for the whole run, given with `--input-value NAME=VALUE` (a scalar sample
  rate `sr`, a flag). It becomes a constant, and the model is normalised again: an If on
  its value is then a constant condition and is inlined (graph/branches.py);
- an input that carries the batch on another axis (a recurrent state [layers, batch,
  hidden]; the batch is the symbolic name of the other inputs' leading dim). It is fed
  batch-first ([batch, layers, hidden]: the data's arrays hold one entry per sample) and a
  Transpose puts it back in the model's layout. An output with the batch on another axis is
  transposed batch-first the same way, so per-sample losses and scores see samples on axis 0;
- an input or output in float16 / bfloat16: the whole model trains as the float32 model it
  computes (graph/half.py), so they are declared float32.

The adapted model is written to a temporary file: every onnxruntime comparison (the original
on the data, validation, latency) runs the adapted original, which computes what the user's
file computes for the fixed values. `Interface.restore` gives the compressed file the
user's signature back: the adapter Transposes become Identity (onnxruntime removes them), the
input layouts are the original ones, each half input and output is declared as before with a
Cast to and from float32 inside, and each fixed input is a graph input again, fed as before but
ignored: the file was compressed for the fixed value, and the report says so.
"""
from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import ConfigError, GetaError
from .editor import GraphEditor, Node
from .half import float32_graph, float32_info, half_io
from .model import OnnxModel
from .roundtrip import replace_field

ADAPTER = "geta_interface"  # name prefix of the adapter's Transpose nodes and the export's half Casts


@dataclass
class Interface:
    fixed: dict[str, np.ndarray] = field(default_factory=dict)  # input -> its fixed value
    moved_inputs: dict[str, int] = field(default_factory=dict)  # input -> batch axis in the original
    moved_outputs: dict[str, int] = field(default_factory=dict)  # output -> batch axis in the original
    original: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)  # the user's graph inputs / outputs
    half_inputs: list[str] = field(default_factory=list)  # declared float16 / bfloat16 in the user's file
    half_outputs: list[str] = field(default_factory=list)
    halved: int = 0  # half tensors, attributes and types the model was read with as float32 (graph/half.py)

    @property
    def changed(self) -> bool:
        return bool(self.fixed or self.moved_inputs or self.moved_outputs or self.halved)

    def describe(self) -> list[str]:
        """One line per adaptation, for the log and the report."""
        lines = [f"input '{k}' fixed at {_show(v)} (--input-value): the compressed model keeps the input but "
                 "computes for this value only" for k, v in self.fixed.items()]
        lines += [f"input '{k}' carries the batch on axis {a}: fed batch-first from the data, transposed back in the "
                  "model" for k, a in self.moved_inputs.items()]
        lines += [f"output '{k}' carries the batch on axis {a}: scored batch-first" for k, a in self.moved_outputs.items()]
        if self.halved:
            half = self.half_inputs + self.half_outputs
            kept = f"; its half inputs / outputs ({', '.join(half)}) stay so behind a Cast to and from float32" if half else ""
            lines.append(f"the model computes in float16 / bfloat16: it trains, and is compared with, as the float32 "
                         f"model it computes{kept}")
        return lines

    def restore(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """`proto` (exported from the adapted model) with the user's inputs and outputs."""
        if not self.changed:
            return proto
        ed = GraphEditor(proto)
        adapters = {f"{ADAPTER}/in/{k}" for k in self.moved_inputs} | {f"{ADAPTER}/out/{k}" for k in self.moved_outputs}
        for node in ed.nodes:
            if node.op == "Transpose" and node.name in adapters:
                node.op = "Identity"
                node.attrs.clear()
                adapters.discard(node.name)
        if adapters:  # the export must keep them: without, the layouts below would be wrong
            raise GetaError(f"the export lost the interface Transpose node(s) {', '.join(sorted(adapters))}; "
                            "cannot restore the model's input layout (please report this)")
        for name in self.moved_inputs:
            ed.declare(self.original[name], replace=name)
        for name in self.moved_outputs:
            ed.declare(self.original[name], output=True, replace=name)
        # a fixed input is declared again but read by nothing: the value the model computes for
        # stays a constant under another name (an initializer that is also a graph input would be
        # a default the caller overrides, and onnxruntime would not fold it)
        for name in self.fixed:
            if ed.is_const(name):
                ed.rename(name, ed.unique(f"{name}_fixed"))
            ed.declare(self.original[name])
        for name in self.half_inputs:
            if name not in self.fixed:  # a fixed input is read by nothing
                _cast(ed, self.original[name])
        for name in self.half_outputs:
            _cast(ed, self.original[name], output=True)
        out = ed.finish(cleanup=False, infer=False)
        order = {vi.name: i for i, vi in enumerate(self.original.values())}
        inputs = sorted(out.graph.input, key=lambda vi: order.get(vi.name, len(order)))
        replace_field(out.graph.input, inputs)
        del out.graph.value_info[:]
        return onnx.shape_inference.infer_shapes(out, check_type=False, strict_mode=False)


def adapt_interface(model: OnnxModel, values: dict[str, str] | None = None, *,
                    move_batch: bool = True) -> tuple[OnnxModel, Interface]:
    """(the model to train, what was adapted). `values`: input name -> value text
    (`--input-value`). `move_batch` False: fixed values only (inspect shows the user's
    layouts). Unchanged (the same object) when nothing needs adapting."""
    from .feeds import batch_names, check_input_names
    from .normalize import normalize_model

    values = dict(values or {})
    names = [vi.name for vi in model.inputs]
    check_input_names(model, values, "--input-value")
    g = model.proto.graph
    original = {vi.name: copy.deepcopy(vi) for vi in list(g.input) + list(g.output)}  # before float32
    half = {vi.name for vi in half_io(model.proto)}
    proto, halved = float32_graph(model.proto)
    model = model.with_proto(proto) if halved else model
    iface = Interface(fixed={name: input_value(model, name, text) for name, text in values.items()},
                      half_inputs=[n for n in names if n in half], halved=halved,
                      half_outputs=[vi.name for vi in model.outputs if vi.name in half])
    if move_batch:
        lead = batch_names(model)
        iface.moved_inputs = {n: a for n in names if n not in iface.fixed and (a := _batch_axis(model, n, lead))}
        iface.moved_outputs = {vi.name: a for vi in model.outputs if (a := _batch_axis(model, vi.name, lead))}
    if not iface.changed:
        return model, iface
    iface.original = original
    ed = GraphEditor(model.proto)
    for name, value in iface.fixed.items():
        ed.set_value(name, value)
        ed.undeclare_input(name)
    adapters = [_move(ed, iface.original[name], axis) for name, axis in iface.moved_inputs.items()]
    ed.place(adapters, at=-1.0)  # first: they read graph inputs only
    for name, axis in iface.moved_outputs.items():
        _move(ed, iface.original[name], axis, output=True)
    adapted = normalize_model(model.with_proto(ed.finish(model.label, cleanup=False, infer=False)))
    return OnnxModel(adapted.proto, model.path, runs_as=_write_temporary(adapted.proto, model.label),
                     quantized_file=model.quantized_file), iface


def _batch_axis(model: OnnxModel, name: str, lead: set[str]) -> int | None:
    """The axis > 0 of `name` that carries the batch (a dim named like the inputs' leading
    ones) when its own leading dim does not; else None."""
    shape = (model.info(name).shape or ()) if model.info(name) else ()
    if not shape or shape[0] in lead:
        return None
    return next((i for i, d in enumerate(shape) if d in lead), None)


def input_value(model: OnnxModel, name: str, text: str) -> np.ndarray:
    """The array `--input-value NAME=TEXT` feeds: TEXT in every entry of the input's fixed
    dims and dtype."""
    info = model.info(name)
    shape = info.shape if info is not None else None
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise ConfigError(f"option '--input-value {name}={text}': input '{name}' of {model.label} has dims "
                          f"{list(shape or [])}; only an input of fixed dims (a scalar, [1]) can take one value")
    dtype = info.np_dtype
    try:
        value = float(text) if dtype.kind == "f" else (text.lower() in ("1", "true") if dtype.kind == "b" else int(text))
    except ValueError:
        raise ConfigError(f"option '--input-value {name}={text}': input '{name}' is {dtype.name}; give a number") from None
    return np.full(shape, value, dtype=dtype)


def _move(ed: GraphEditor, declared: onnx.ValueInfoProto, axis: int, *, output: bool = False) -> Node:
    """Input `name` [.., batch (axis a), ..] is declared [batch, ..] (float32 where the user's
    file says half) and a Transpose makes the tensor the model reads, renamed
    `<name>_model_layout` (its readers follow); an output the same way round: the model's
    tensor is renamed and a Transpose writes `name` batch-first. Returns the Transpose."""
    vi = float32_info(declared)
    order = _batch_first(vi, axis)  # new axis i is old axis order[i]
    perm = order if output else [order.index(i) for i in range(len(order))]  # batch-first -> the model's layout
    return _adapter(ed, vi, "Transpose", "model_layout", output=output, perm=perm)


def _cast(ed: GraphEditor, declared: onnx.ValueInfoProto, *, output: bool = False) -> Node:
    """A half input declared as the user's file declares it, cast to the float32 tensor the
    model reads (renamed `<name>_float32`); a half output cast back from it."""
    to = declared.type.tensor_type.elem_type if output else onnx.TensorProto.FLOAT
    return _adapter(ed, declared, "Cast", "float32", output=output, to=to, prefix=f"{ADAPTER}/cast")


def _adapter(ed: GraphEditor, vi: onnx.ValueInfoProto, op: str, role: str, *, output: bool,
             prefix: str = ADAPTER, **attrs) -> Node:
    """`vi` declared as the graph's input (output) `name`, and a node `op` between it and the
    tensor the model reads (writes), which is renamed `<name>_<role>`. Returns the node."""
    name = vi.name
    inner = ed.rename(name, ed.unique(f"{name}_{role}"))
    outer = ed.declare(vi, output=output, replace=inner.name)
    if output:
        ed.add_node(op, [inner], f"{prefix}/out/{name}", output=outer, **attrs)
        return outer.inputs[0]
    ed.add_node(op, [outer], f"{prefix}/in/{name}", output=inner, **attrs)
    return inner.inputs[0]


def _batch_first(vi: onnx.ValueInfoProto, axis: int) -> list[int]:
    """Set `vi`'s dims batch-first; returns the order (new axis i is old axis order[i])."""
    dims = list(vi.type.tensor_type.shape.dim)
    order = [axis] + [i for i in range(len(dims)) if i != axis]
    _set_dims(vi, [dims[i] for i in order])
    return order


def _set_dims(vi: onnx.ValueInfoProto, dims) -> None:
    """Set `vi`'s dims to copies of `dims` (they may be `vi`'s own, cleared here)."""
    copies = [copy.deepcopy(d) for d in dims]
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    shape.dim.extend(copies)


def _show(v: np.ndarray) -> str:
    """A fixed value as the report gives it: np.full's value, and its dims when not a scalar."""
    return str(v.item()) if v.size == 1 else f"{v.flat[0].item()} (every entry of {'x'.join(map(str, v.shape))})"


_TMP: list[str] = []


def _write_temporary(proto: onnx.ModelProto, label: str) -> Path:
    """The adapted model as a file (onnxruntime sessions and the latency benchmark read files);
    removed when the process exits."""
    if not _TMP:
        _TMP.append(tempfile.mkdtemp(prefix="geta-interface-"))
        atexit.register(shutil.rmtree, _TMP[0], True)
    path = Path(_TMP[0]) / f"{Path(label).stem}.adapted.{os.getpid()}.{len(os.listdir(_TMP[0]))}.onnx"
    onnx.save(proto, str(path))
    return path
