"""onnxruntime's dynamic quantization read back as the float model it computes.

`onnxruntime.quantization.quantize_dynamic` (and the `model_quantized.onnx` files hubs ship
made with it) keeps each weight as an int8 / uint8 initializer read by an integer op, with the
activation quantized per batch in the graph:

    x -> DynamicQuantizeLinear -> (x_q, x_scale, x_zp)
    MatMulInteger / ConvInteger(x_q, w_q, x_zp, w_zp) -> Cast(float) -> Mul(., x_scale * w_scale) -> y
    Gather(w_q, ids) -> DequantizeLinear(., scale, zp) -> y                  (an embedding table)
    Gather(w_q, ids) -> Cast(float) -> Mul(., scales) -> y               (geta-onnx's own tables)

(an early quantizer, producer "onnx.quantize 0.1.0", adds a conv's bias to the int32
accumulator before the Cast), com.microsoft DynamicQuantizeLSTM, and, in a file onnxruntime saved
after its own fusions, com.microsoft DynamicQuantizeMatMul(x, w_q, w_scale, w_zp, bias) or
MatMulIntegerToFloat(x_q, w_q, x_scale, w_scale, x_zp, w_zp, bias). No gradient passes an
integer weight, so none of it could train. `float_dynamic` rewrites each such pattern into the
float op it quantizes, reading the weight (w_q - w_zp) * w_scale as one float initializer:
`MatMul(x, w)` (+ `Add(., bias)` for a fused op's bias) / `Conv(x, w, bias)` / `LSTM(x, w, r,
...)` / `Gather(w, ids)`. What goes is only the activations' per-batch rounding (a dynamic grid always
spans the tensor's range, so nothing saturates: no clamp is left). A pattern that differs in
any part (a non-constant weight, a per-channel ConvInteger scale, a Cast to another type, an
output read elsewhere) is left as it is and the bridge refuses the file with its integer ops
named (errors.UnsupportedOpError). docs/realworld.md, "Models that are already quantized".

    proto, rewritten = float_dynamic(onnx.load("model_quantized.onnx"))
"""
from __future__ import annotations

import numpy as np
import onnx

from .editor import GraphEditor, Node, is_default_domain

INTEGER_WEIGHTS = (np.int8, np.uint8)
DYNAMIC_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM")
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def float_dynamic(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(`proto` with every dynamic-quantization pattern as its float op, how many were
    rewritten); (`proto` itself, 0) when it has none."""
    # rows of an integer table: Shape -> Gather -> Cast in any float transformer must not cost an editor round trip
    tables = {t.name for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    gathered = {o for n in proto.graph.node if n.op_type == "Gather" and n.input and n.input[0] in tables
                for o in n.output}
    if not any(n.op_type in DYNAMIC_OPS or (n.op_type in ("DequantizeLinear", "Cast") and n.input[0] in gathered)
               for n in proto.graph.node):
        return proto, 0  # a float or QDQ model: no editor round trip
    g = GraphEditor(proto)
    rewritten = 0
    for node in g.nodes:
        if node.op in ("MatMulInteger", "ConvInteger") and is_default_domain(node):
            rewritten += _integer_op(g, node)
        elif node.op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat") and node.domain == "com.microsoft":
            rewritten += _fused_op(g, node)
        elif node.op == "DynamicQuantizeLSTM" and node.domain == "com.microsoft":
            rewritten += _lstm(g, node)
        elif node.op == "Gather" and is_default_domain(node):
            rewritten += _embedding(g, node)
    if not rewritten:
        return proto, 0
    return g.finish(label="float model"), rewritten


def _input(node: Node, i: int):
    """Input i of `node`, None where absent or empty."""
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _sole_reader(g: GraphEditor, tensor, op: str) -> Node | None:
    """The one node reading `tensor` when it is an `op` of the default domain and the tensor
    is no graph output; None otherwise."""
    readers = g.consumers(tensor)
    if g.is_output(tensor) or len(readers) != 1 or readers[0].op != op or not is_default_domain(readers[0]):
        return None
    return readers[0]


def _weight(g: GraphEditor, w, zp, scale) -> np.ndarray | None:
    """(w_q - zp) * scale as float32, w_q an int8 / uint8 initializer, zp / scale constants
    that broadcast along its last axis (per tensor, or per column of a MatMul weight); None
    when any of them is not so."""
    if not g.is_const(w) or (zp is not None and not g.is_const(zp)) or scale is None or not g.is_const(scale):
        return None
    q = g.const(w)
    if q.dtype not in INTEGER_WEIGHTS or not q.ndim:
        return None
    s = g.const(scale).astype(np.float64)
    z = np.zeros_like(s) if zp is None else g.const(zp).astype(np.float64)
    if any(a.size not in (1, q.shape[-1]) for a in (s, z)):
        return None
    return ((q.astype(np.float64) - z.reshape(-1)) * s.reshape(-1)).astype(np.float32)


def _dynamic_source(g: GraphEditor, node: Node, zp_input: int):
    """(x, x_scale) of the DynamicQuantizeLinear whose x_q (and x_zp, when read) `node`
    reads as its input 0; None otherwise."""
    dq = g.producer(node.inputs[0])
    zp = _input(node, zp_input)
    if dq is None or dq.op != "DynamicQuantizeLinear" or dq.outputs[0] is not node.inputs[0]:
        return None
    if zp is not None and zp is not dq.outputs[2]:
        return None
    return dq.inputs[0], dq.outputs[1]


def _base(name: str, suffix: str) -> str:
    return name[:-len(suffix)] if name.endswith(suffix) else name


def _integer_op(g: GraphEditor, node: Node) -> int:
    """DynamicQuantizeLinear -> MatMulInteger / ConvInteger [-> Add(int32 bias)] -> Cast ->
    Mul(x_scale * w_scale) => MatMul / Conv of x and the float weight (and the float bias)."""
    source = _dynamic_source(g, node, 2)
    if source is None:
        return 0
    x, x_scale = source
    integer, bias, bias_add = node.outputs[0], None, _sole_reader(g, node.outputs[0], "Add")
    if bias_add is not None and node.op == "ConvInteger":  # an older quantizer's int32 bias (_integer_bias)
        bias = _integer_bias(g, bias_add, integer, x_scale)
        integer = bias_add.outputs[0]
    cast = _sole_reader(g, integer, "Cast")
    if (bias_add is not None and bias is None) or cast is None or cast.attrs.get("to") != onnx.TensorProto.FLOAT:
        return 0
    rescale = _sole_reader(g, cast.outputs[0], "Mul")
    if rescale is None:
        return 0
    other = rescale.inputs[1] if rescale.inputs[0] is cast.outputs[0] else rescale.inputs[0]
    w_scale = _scale_of(g, other, x_scale)
    w_q, w_zp = node.inputs[1], _input(node, 3)
    conv = node.op == "ConvInteger"
    if w_scale is None or (conv and any(g.const(t).size != 1 for t in (w_scale, w_zp) if t is not None and g.is_const(t))):
        return 0  # a ConvInteger's per-channel scale would need a reshape the pattern does not have
    w = _weight(g, w_q, w_zp, w_scale)
    if w is None:
        return 0
    y, name = rescale.outputs[0], _base(w_q.name, "_quantized")
    for n in (node, bias_add, cast, rescale):
        if n is not None:
            g.remove(n)  # the scales' Mul and the DynamicQuantizeLinear go with their last reader (finish)
    weight = g.add_const(name, w)
    if not conv:
        g.add_node("MatMul", [x, weight], _base(node.name, "_quant"), output=y)
        return 1
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    if bias is not None:
        inputs = [x, weight, g.add_const(f"{name}_bias", bias)]
    else:
        inputs, y = _conv_bias(g, y, w.shape[0], w.ndim, [x, weight])
    g.add_node("Conv", inputs, _base(node.name, "_quant"), output=y, **attrs)
    return 1


def _scale_of(g: GraphEditor, tensor, x_scale):
    """w_scale of `tensor` = Mul(x_scale, w_scale) (either order); None otherwise."""
    scales = g.producer(tensor)
    if scales is None or scales.op != "Mul" or not is_default_domain(scales) or len(scales.inputs) != 2:
        return None
    a, b = scales.inputs
    return b if a is x_scale else a if b is x_scale else None


def _integer_bias(g: GraphEditor, add: Node, integer, x_scale) -> np.ndarray | None:
    """An older onnxruntime quantizer (producer "onnx.quantize 0.1.0") adds the bias to the
    int32 accumulator: Add(acc, [Reshape](Cast(int32, Floor(Div(bias, Mul(x_scale, w_scale)))))).
    The float bias (shape [M]), or None when the Add's other input is not that."""
    t = add.inputs[1] if add.inputs[0] is integer else add.inputs[0]
    chain = []
    for op in ("Reshape", "Cast", "Floor", "Div"):
        producer = g.producer(t)
        if producer is None or producer.op != op or not is_default_domain(producer):
            if op == "Reshape":
                continue  # the Reshape is optional
            return None
        chain.append(producer)
        t = producer.inputs[0]
    div = chain[-1]
    if not g.is_const(div.inputs[0]) or _scale_of(g, div.inputs[1], x_scale) is None:
        return None
    return g.const(div.inputs[0]).astype(np.float32).reshape(-1)


def _conv_bias(g: GraphEditor, y, channels: int, rank: int, inputs: list) -> tuple[list, object]:
    """The quantizer moved a Conv's bias into Add(y, Reshape(bias, [1, -1, 1, 1])): as the
    Conv's own bias input again, so the channels stay one group with it (an Add of a constant
    that spans the channels has no channel rule). (inputs with the bias, the tensor the Conv
    writes: the Add's output); (inputs, y) unchanged when y is read otherwise. `rank`: the
    Conv output's (its weight's)."""
    add = _sole_reader(g, y, "Add")
    if add is None:
        return inputs, y
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    bias = _constant_reshape(g, other)
    axis = None if bias is None else bias.ndim - rank + 1  # the output's channel axis 1, right-aligned
    if bias is None or bias.size != channels or not 0 <= axis < bias.ndim or bias.shape[axis] != channels:
        return inputs, y  # not a per-channel constant: the Add stays
    out = add.outputs[0]
    g.remove(add)
    return [*inputs, g.add_const(f"{out.name}_bias", bias.reshape(-1).astype(np.float32))], out


def _constant_reshape(g: GraphEditor, tensor) -> np.ndarray | None:
    """The value of a constant, or of Reshape(constant, constant shape); None otherwise."""
    if g.is_const(tensor):
        return g.const(tensor)
    reshape = g.producer(tensor)
    if reshape is None or reshape.op != "Reshape" or not all(g.is_const(t) for t in reshape.inputs[:2]):
        return None
    value, shape = g.const(reshape.inputs[0]), g.const(reshape.inputs[1]).astype(np.int64).tolist()
    shape = [value.shape[i] if d == 0 and i < value.ndim else d for i, d in enumerate(shape)]  # 0: copy the dim
    try:
        return value.reshape(shape)
    except ValueError:
        return None


def _fused_op(g: GraphEditor, node: Node) -> int:
    """com.microsoft DynamicQuantizeMatMul(x, w_q, w_scale, w_zp, bias) and
    MatMulIntegerToFloat(x_q, w_q, x_scale, w_scale, x_zp, w_zp, bias), x_q from a
    DynamicQuantizeLinear => MatMul(x, w) (+ Add(., bias))."""
    if node.op == "DynamicQuantizeMatMul":
        x, w_scale, w_zp, bias = node.inputs[0], _input(node, 2), _input(node, 3), _input(node, 4)
    else:
        source = _dynamic_source(g, node, 4)
        if source is None or _input(node, 2) is not source[1]:
            return 0
        x, w_scale, w_zp, bias = source[0], _input(node, 3), _input(node, 5), _input(node, 6)
    w = _weight(g, node.inputs[1], w_zp, w_scale)
    if w is None:
        return 0
    y, base, name = node.outputs[0], _base(node.name, "_quant"), _base(node.inputs[1].name, "_quantized")
    g.remove(node)
    weight = g.add_const(name, w)
    if bias is None:
        g.add_node("MatMul", [x, weight], base, output=y)
    else:
        product = g.add_node("MatMul", [x, weight], base)
        g.add_node("Add", [product, bias], f"{base}_bias", output=y)
    return 1


def _lstm(g: GraphEditor, node: Node) -> int:
    """com.microsoft DynamicQuantizeLSTM(X, W_q, R_q, B, sequence_lens, initial_h, initial_c, P,
    W_scale, W_zp, R_scale, R_zp) => LSTM(X, W, R, B, ...). Its weights are [directions, in,
    4 hidden] with a scale per direction (or per direction and gate column); LSTM's are
    [directions, 4 hidden, in]."""
    weights = []
    for q, scale, zp in ((1, 8, 9), (2, 10, 11)):
        w_q, s, z = _input(node, q), _input(node, scale), _input(node, zp)
        if w_q is None or s is None or not all(t is None or g.is_const(t) for t in (w_q, s, z)):
            return 0
        values, s = g.const(w_q), g.const(s).astype(np.float64)
        z = np.zeros_like(s) if z is None else g.const(z).astype(np.float64)
        if values.dtype not in INTEGER_WEIGHTS or values.ndim != 3 or s.shape != z.shape \
                or s.shape not in ((values.shape[0],), (values.shape[0], values.shape[2])):
            return 0
        per = (values.shape[0], 1, -1 if s.ndim == 2 else 1)  # per direction (and gate column)
        w = (values.astype(np.float64) - z.reshape(per)) * s.reshape(per)
        weights.append((_base(w_q.name, "_quantized"), w.transpose(0, 2, 1).astype(np.float32)))
    rest, outputs, attrs, base = list(node.inputs[3:8]), list(node.outputs), dict(node.attrs), _base(node.name, "_quant")
    x = node.inputs[0]
    at = g.remove(node)
    consts = [g.add_const(name, w) for name, w in weights]
    g.place([Node("LSTM", g.unique(base), attrs=attrs, inputs=[x, *consts, *rest], outputs=outputs)], at)
    return 1


def _embedding(g: GraphEditor, node: Node) -> int:
    """An embedding table => Gather(w, ids): Gather(w_q, ids) -> DequantizeLinear(scale, zp) per
    tensor (onnxruntime's dynamic quantizer), or per column of a 2-D table gathered along axis 0
    (axis -1); Gather(w_q, ids) -> Cast(float) -> Mul(scales per column or one), geta-onnx's own
    export (quant/tables.py)."""
    dq = _sole_reader(g, node.outputs[0], "DequantizeLinear")
    if dq is None:
        return _cast_embedding(g, node)
    if dq.inputs[0] is not node.outputs[0]:
        return 0
    scale, zp = dq.inputs[1], _input(dq, 2)
    if not g.is_const(scale) or (zp is not None and not g.is_const(zp)):
        return 0
    sizes = {g.const(scale).size} | ({g.const(zp).size} if zp is not None else set())
    per_column = (dq.attrs.get("axis", 1) == -1 and _table_columns(g, node) in sizes and len(sizes) == 1)
    if sizes != {1} and not per_column:
        return 0
    return _float_table(g, node, dq, _weight(g, node.inputs[0], zp, scale))


def _cast_embedding(g: GraphEditor, node: Node) -> int:
    cast = _sole_reader(g, node.outputs[0], "Cast")
    if cast is None or cast.attrs.get("to") != onnx.TensorProto.FLOAT:
        return 0
    mul = _sole_reader(g, cast.outputs[0], "Mul")
    if mul is None:
        return 0
    scale = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    if not g.is_const(scale) or g.const(scale).ndim > 1 or g.const(scale).size not in (1, _table_columns(g, node)):
        return 0
    return _float_table(g, node, mul, _weight(g, node.inputs[0], None, scale))


def _table_columns(g: GraphEditor, node: Node) -> int | None:
    """The columns of a 2-D constant table gathered along axis 0; None otherwise."""
    if node.attrs.get("axis", 0) != 0 or not g.is_const(node.inputs[0]) or g.const(node.inputs[0]).ndim != 2:
        return None
    return g.const(node.inputs[0]).shape[1]


def _float_table(g: GraphEditor, node: Node, last: Node, w: np.ndarray | None) -> int:
    """Gather(w_q, ids) -> ... -> last -> y  =>  Gather(w, ids) -> y."""
    if w is None:
        return 0
    ids, y, name = node.inputs[1], last.outputs[0], _base(node.inputs[0].name, "_quantized")
    between = [node]
    while between[-1] is not last:
        between.append(g.consumers(between[-1].outputs[0])[0])
    for n in between:
        g.remove(n)
    weight = g.add_const(name, w)
    g.add_node("Gather", [weight, ids], node.name or "gather", output=y, **node.attrs)
    return 1
