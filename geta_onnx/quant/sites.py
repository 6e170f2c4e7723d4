"""attach_quantizers: put GETA quantizers into a bridged module (an fx graph rewrite).

Requires: `module` is `bridge.to_torch(model)` and has no quantizers yet.
Ensures:
- every LAYER (Conv / ConvTranspose / Gemm / MatMul whose weight is a trainable
  initializer, directly or behind one Transpose) not kept in float reads its weight
  through a weight quantizer, and its activation input through an activation quantizer;
- one activation quantizer per activation TENSOR (q, k, v projections reading one
  tensor share it) and one weight quantizer per weight tensor;
- with `quantize_outputs`, one more activation quantizer on each quantized conv's output
  (followed through a BatchNormalization reading the conv, which the export folds, then Relu / Clip,
  which onnxruntime absorbs before a Q)
  when no layer quantizes that tensor: a residual Add input, a global pooling input.
  onnxruntime turns DQ -> Conv -> Q into QLinearConv only with that Q; likewise one on the
  output of an Add of two quantized tensors (through Relu / Clip) that nothing quantizes,
  for QLinearAdd (a ResNet's last residual Add before the global pooling);
- with `quantize_tables`, the embedding tables in int8 (quant/tables.py: a TableQuantizer
  after each Gather of a large trainable table, "t_<initializer>", in QuantPlan.tables);
- with `quantize_recurrent`, each LSTM's W and R in int8 (quant/recurrent.py: a
  RecurrentQuantizer between each weight and the LSTM, "r_<initializer>", in
  QuantPlan.recurrent; an LSTM matching an `exclude` pattern stays float);
- quantizers live in `module.quantizers.<name>` ("w_<initializer>", "a_<tensor>", "o_<tensor>");
- EVERY reader of a quantized activation tensor (a residual Add too) reads the quantized
  value, as in the exported QDQ graph where all consumers read the DQ output; a graph
  output keeps the float value. With every quantizer disabled the module computes exactly
  (bitwise) the original function.

The rewrite: each ONNX node is one `call_module` fx node (module.node_modules), whose
positional args are the node's inputs; for an input to quantize, a call_module of the
quantizer is inserted right after the fx node producing it (a get_attr of the weight, the
Transpose, or the activation's producer) and the layer's arg is pointed at it.
"""
from __future__ import annotations

import re
from dataclasses import replace
from fnmatch import fnmatchcase

import onnx
import torch
from torch import fx, nn

from ..bridge.builder import OnnxModule
from ..config import QuantConfig
from ..errors import GetaError
from ..graph.model import OnnxModel, attr, weight_chain
from ..graph.stats import op_cost
from .nonneg import nonnegative_tensors
from .plan import QuantLayer, QuantPlan, QuantSite
from .quantizer import Quantizer
from .recurrent import attach_lstms
from .tables import attach_tables
from .weight_range import weight_bits

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def find_layers(model: OnnxModel, trainable: frozenset[str]) -> list[QuantLayer]:
    """Quantization candidates in topological order, no quantizer attached yet."""
    layers = []
    for node in model.nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in LAYER_OPS:
            continue
        slots = (1,) if node.op_type in ("Conv", "ConvTranspose") else (1, 0)  # prefer x @ W over W @ x
        for w_slot in slots:
            found = _weight_source(model, node, w_slot, trainable)
            if found is None:
                continue
            weight, transpose = found
            act_slot = 0 if node.op_type in ("Conv", "ConvTranspose") else 1 - w_slot
            if act_slot >= len(node.input) or not node.input[act_slot] or model.is_initializer(node.input[act_slot]):
                act_slot = None
            shape = tuple(int(d) for d in model.initializers[weight].dims)
            perm = None
            if transpose is not None:
                perm = tuple(int(p) for p in attr(transpose, "perm", None) or reversed(range(len(shape))))
            axis = _channel_axis(node, w_slot, len(shape))
            # output dim i of a Transpose is its input dim perm[i]
            out_axis = axis if axis is None or perm is None else perm[axis]
            layers.append(QuantLayer(node.name, node.op_type, weight, shape, w_slot, act_slot, axis, out_axis,
                                     transpose.name if transpose is not None else None, perm,
                                     op_cost(model, node).macs))
            break
    return layers


def _weight_source(model: OnnxModel, node, slot: int, trainable) -> tuple[str, onnx.NodeProto | None] | None:
    """(trainable initializer, the Transpose between it and the layer or None) of input `slot`:
    the bridge trains a weight read directly or behind one Transpose (the legacy exporter's W^T)."""
    if slot >= len(node.input) or not node.input[slot]:
        return None
    chain = weight_chain(model, node.input[slot], through=("Transpose",))
    if chain is None or len(chain) > 1:
        return None
    source = chain[0].input[0] if chain else node.input[slot]
    return (source, chain[0] if chain else None) if source in trainable else None


def _channel_axis(node: onnx.NodeProto, w_slot: int, rank: int) -> int | None:
    """The output channels' axis on the node's weight input. Conv W (M, C/g, k...) 0;
    ConvTranspose W (C, M/g, k...) 1; Gemm B 1 (transB=0) or 0; Gemm A 0 (transA=0) or 1;
    MatMul B (..., K, N) the last; MatMul A (..., M, K) the second last; a 1-D MatMul None."""
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return (0 if attr(node, "transB", 0) else 1) if w_slot == 1 else (1 if attr(node, "transA", 0) else 0)
    return None if rank < 2 else (rank - 1 if w_slot == 1 else rank - 2)


def attach_quantizers(module: OnnxModule, model: OnnxModel, config: QuantConfig,
                      keep_float: dict[str, str] | None = None) -> QuantPlan:
    """Insert quantizers into `module` (in place) following `config`; returns the plan.
    `keep_float`: node name -> reason, more layers kept in float (e.g. "latency": the
    latency model times their int8 kernel slower, latency.chain)."""
    if "quantizers" in module._modules:
        raise GetaError("the module already has quantizers; attach them to a fresh bridge.to_torch(model)")
    trainable = frozenset(n for q, n in module.initializer_of.items() if q.startswith("params."))
    layers = find_layers(model, trainable)
    skipped = {**(keep_float or {}), **_skip_reasons(model, layers, config)}
    nonneg = nonnegative_tensors(model, trainable)
    fx_of = {n.target: n for n in module.graph.nodes if n.op == "call_module"}
    module.add_module("quantizers", nn.Module())
    names = _Names()
    made: dict[tuple, fx.Node] = {}  # weights: (source fx node, axis) -> quantizer fx node (sharing)
    sites, records = [], []
    for layer in layers:
        reason = skipped.get(layer.node, "")
        w_name = a_name = None
        if not reason:
            call = fx_of[module.node_modules[layer.node]]
            w_name = _quantize_weight(module, layer, call, config, names, made)
            sites.append(QuantSite(layer.node, "weight", layer.weight, layer.w_slot, w_name, True,
                                   config.per_channel and layer.axis is not None))
            if config.quantize_activations and layer.act_slot is not None:
                tensor = model.node_by_name[layer.node].input[layer.act_slot]
                signed = tensor not in nonneg
                a_name = _quantize_act(module, layer, call, tensor, signed, config, names)
                sites.append(QuantSite(layer.node, "act", tensor, layer.act_slot, a_name, signed))
        records.append(replace(layer, weight_quantizer=w_name, act_quantizer=a_name, skipped=reason))
    if config.quantize_activations and config.quantize_outputs:
        quantized = {s.tensor for s in sites if s.kind == "act"}
        outputs = [(layer.node, tensor) for layer, tensor in fusion_outputs(model, layers, skipped, quantized)]
        quantized |= {tensor for _, tensor in outputs}
        outputs += residual_outputs(model, quantized)
        for node, tensor in outputs:  # node: the conv, or the residual Add
            signed = tensor not in nonneg
            name = _quantize_output(module, model, tensor, signed, config, names, fx_of)
            sites.append(QuantSite(node, "output", tensor, -1, name, signed))
    tables = attach_tables(module, model, trainable, names, fx_of) if config.quantize_tables else []
    lstms = attach_lstms(module, model, trainable, names, fx_of, config.exclude) if config.quantize_recurrent else []
    module.graph.lint()
    module.recompile()
    return QuantPlan(sites, records, tables=tables, recurrent=lstms, module=module)


# A plain Conv (group 1) reading fewer than THIN_CHANNELS input channels over a reduction depth
# (channels x kernel area) below THIN_DEPTH is slower as onnxruntime's QLinearConv than as its
# float Conv, while deeper convs run 1.3-6x faster in int8. A SINGLE input channel stays float
# at any depth: onnxruntime's float Conv has a direct kernel for it while QLinearConv pays an
# im2col. The measurements (tools/bench_conv_int8.py): docs/measurements.md, "Thin stems stay float".
THIN_CHANNELS, THIN_DEPTH = 8, 256


def is_thin_conv(model: OnnxModel, layer: QuantLayer) -> bool:
    """A group-1 Conv with few input channels and a shallow reduction (a network's stem),
    or with a single input channel (an audio front end)."""
    if layer.op_type != "Conv" or attr(model.node_by_name[layer.node], "group", 1) != 1 or layer.transpose is not None:
        return False
    dims = layer.weight_shape  # (M, C, k...)
    if len(dims) < 3:
        return False
    area = 1
    for k in dims[2:]:
        area *= k
    return dims[1] == 1 or (dims[1] < THIN_CHANNELS and dims[1] * area < THIN_DEPTH)


def _skip_reasons(model: OnnxModel, layers: list[QuantLayer], config: QuantConfig) -> dict[str, str]:
    reasons = {}
    for layer in layers:
        if any(fnmatchcase(layer.node, p) for p in config.exclude):
            reasons[layer.node] = "exclude"
        elif config.float_thin_convs and is_thin_conv(model, layer):
            reasons[layer.node] = "thin"
    if layers and config.skip_first:
        reasons.setdefault(layers[0].node, "skip_first")
    if layers and config.skip_last:
        reasons.setdefault(layers[-1].node, "skip_last")
    return reasons


def _quantize_weight(module, layer: QuantLayer, call: fx.Node, config: QuantConfig, names, made) -> str:
    """Weight quantizer between the weight (get_attr or Transpose) and the layer; q_m = max|W|
    per tensor or per output channel, d = d(weight_bits_start)."""
    src = call.args[layer.w_slot]
    per_channel = config.per_channel and layer.axis is not None
    key = (src, layer.axis if per_channel else None)
    if key not in made:
        w = module.parameter(layer.weight).detach()  # initializer layout
        if per_channel:
            q_m = w.abs().amax(dim=[i for i in range(w.dim()) if i != layer.out_axis])  # (C,)
            q = Quantizer("weight", channels=q_m.numel(), axis=layer.axis, bit_range=weight_bits(config),
                          learn_t=config.learn_t, grad_scale=config.grad_scale)
        else:
            q_m = w.abs().max()
            q = Quantizer("weight", bit_range=weight_bits(config), learn_t=config.learn_t,
                          grad_scale=config.grad_scale)
        q.to(w.device).set_range(q_m, config.weight_bits_start)
        made[key] = _insert(module, src, names.get("w_", layer.weight), q)
    call.update_arg(layer.w_slot, made[key])
    return made[key].target


def _quantize_act(module, layer: QuantLayer, call: fx.Node, tensor: str, signed: bool, config: QuantConfig,
                  names) -> str:
    """Activation quantizer on the layer's activation input, shared per tensor. Its range is a
    placeholder (q_m = 1) until calibrate() sets it from data."""
    src = call.args[layer.act_slot]
    if src.op == "call_module" and src.target.startswith("quantizers."):
        return src.target  # another layer quantized this tensor already: every reader reads it
    q = Quantizer("act", signed=signed, bit_range=config.act_bits, learn_t=config.learn_t,
                  grad_scale=config.grad_scale)
    q.set_range(1.0, config.act_bits_start)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return _insert(module, src, names.get("a_", tensor), q.to(device)).target


# After a conv: the export folds a BatchNormalization that reads the conv output directly
# (export.bnfold), and onnxruntime absorbs a Relu / Clip followed by Q. A BatchNormalization
# after the activation (CREPE: Conv -> Relu -> BN) folds nowhere: quantizing its output would
# leave Conv -> Relu -> BN -> Q, which onnxruntime runs as a float Conv.
FOLDED_FIRST = ("BatchNormalization",)
ABSORBED = ("Relu", "Clip")


def fusion_outputs(model: OnnxModel, layers: list[QuantLayer], skipped: dict[str, str],
                   quantized: set[str]) -> list[tuple[QuantLayer, str]]:
    """(conv layer, tensor) pairs needing an output quantizer: the output of a quantized Conv /
    ConvTranspose, followed through a single-reader chain of ops the export folds or onnxruntime
    absorbs (a FOLDED_FIRST op only as the conv's own reader, then ABSORBED ops), when it is
    read by some op, is no graph output and no layer quantizes it already."""
    found, seen = [], set()
    for layer in layers:
        if layer.op_type not in ("Conv", "ConvTranspose") or layer.node in skipped or layer.act_slot is None:
            continue
        tensor = _chain_end(model, model.node_by_name[layer.node].output[0], FOLDED_FIRST + ABSORBED)
        if _unquantized_read(model, tensor, quantized | seen):
            seen.add(tensor)
            found.append((layer, tensor))
    return found


def residual_outputs(model: OnnxModel, quantized: set[str]) -> list[tuple[str, str]]:
    """(Add node, tensor) pairs needing an output quantizer: the output of an Add whose every
    input is a quantized activation, followed through a single-reader chain of ABSORBED ops,
    when it is read by some op, is no graph output and nothing quantizes it already (those
    picked are added to `quantized`, so an Add reading one counts it as quantized). With
    that Q onnxruntime runs DQ, DQ -> Add -> Q as one QLinearAdd in the int8 (NHWC) chain;
    without it a ResNet's last residual Add, whose Relu feeds the global pooling, ran in float
    behind two DequantizeLinear and two layout Transposes (docs/measurements.md, "The last
    residual Add in int8")."""
    found = []
    for node in model.nodes:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        if not all(x in quantized for x in node.input):
            continue
        tensor = _chain_end(model, node.output[0], ABSORBED)
        if _unquantized_read(model, tensor, quantized):
            quantized.add(tensor)
            found.append((node.name, tensor))
    return found


def _chain_end(model: OnnxModel, tensor: str, first: tuple[str, ...]) -> str:
    """The tensor at the end of the single-reader chain from `tensor` whose first op is one of
    `first` and later ones ABSORBED; it stops at a graph output."""
    ops = first
    while tensor not in model.output_names:
        readers = model.consumers(tensor)
        if len(readers) != 1 or readers[0][0].op_type not in ops:
            break
        tensor, ops = readers[0][0].output[0], ABSORBED
    return tensor


def _unquantized_read(model: OnnxModel, tensor: str, quantized: set[str]) -> bool:
    """`tensor` is read by some op, is no graph output and nothing quantizes it yet."""
    return tensor not in quantized and tensor not in model.output_names and bool(model.consumers(tensor))


def _quantize_output(module, model: OnnxModel, tensor: str, signed: bool, config: QuantConfig, names,
                     fx_of: dict) -> str:
    """Activation quantizer on `tensor` for all its readers; calibrated like the others."""
    reader, slot = model.consumers(tensor)[0]
    src = fx_of[module.node_modules[reader.name]].args[slot]  # the fx node that is `tensor`
    q = Quantizer("act", signed=signed, bit_range=config.act_bits, learn_t=config.learn_t,
                  grad_scale=config.grad_scale)
    q.set_range(1.0, config.act_bits_start)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return _insert(module, src, names.get("o_", tensor), q.to(device)).target


def _insert(module, src: fx.Node, name: str, quantizer: Quantizer) -> fx.Node:
    """The quantizer right after `src`. An activation quantizer is read by every reader of
    `src` except graph outputs (as the export's DQ); a weight quantizer only by the layer
    the caller points at it (a shared weight gets one quantizer per reading layout)."""
    module.quantizers.add_module(name, quantizer)
    with module.graph.inserting_after(src):
        node = module.graph.call_module(f"quantizers.{name}", (src,))
    if quantizer.kind == "act":
        src.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node and user.op != "output")
    return node


class _Names:
    """Unique Python identifiers for quantizer names."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def get(self, prefix: str, name: str) -> str:
        base = prefix + re.sub(r"\W", "_", name).strip("_")
        safe, k = base, 1
        while safe in self._used:
            safe, k = f"{base}_{k}", k + 1
        self._used.add(safe)
        return safe
