"""Pass 3: QuantizeLinear / DequantizeLinear with the learned steps, per profile.

Requires: the float proto after write_back / fold_batchnorm, its LayerQ list (weights in
the layer's input layout, per-channel scales on `axis`), the profile.
Ensures:
- one Q -> DQ pair per quantized activation tensor, and EVERY consumer of the tensor
  (also a residual Add, not only the layer the quantizer belongs to) reads the DQ output:
  onnxruntime fuses `DQ -> op -> Q` only when all consumers of the op output are Q nodes;
  a graph output stays the float tensor (its producer then cannot fuse);
- each quantized layer reads its weight as DQ(integer initializer, scale, zero point 0),
  the integers being exactly the fake-quant integers (a b-bit layer uses [-(2^(b-1)-1),
  2^(b-1)-1] inside the container); a Transpose between initializer and layer is folded
  into the stored integers (the Transpose node then dies);
- profile "ort": activations uint8, zero point 0 for unsigned quantizers (levels
  [0, 2^b - 1]) and 128 for signed ones (levels [-(2^(b-1)-1), 2^(b-1)-1] + 128 stay in
  [1, 255]); weights int8, or INT4 with a blocked DQ (opset 21) for MatMul weights of 4 bits
  or fewer when `int4` is on (onnxruntime turns DQ(int4) -> MatMul into MatMulNBits, but
  only when the activation input is NOT a DQ: those layers read the float activation, so
  they differ from the fake-quant model by the activation rounding, <= d_a / 2 per element);
  Conv / Gemm bias as int32 with scale = input scale * weight scale (per channel when the
  weight is), zero point 0;
- profile "tensorrt": every zero point 0, activations and weights int8; an unsigned 8-bit
  activation (levels up to 255) is re-gridded to step q_m / 127 (TensorRT has no uint8:
  one bit of resolution is lost there); biases stay float (TensorRT quantizes them itself).
- an int8 embedding table becomes Gather(int8) -> Cast -> Mul (_int8_tables) and an LSTM
  trained with int8 weights a DynamicQuantizeLSTM (export/recurrent.py); profile tensorrt
  keeps both float with their fake-quant values;
Activations whose quantizer does not fit the 8-bit container (learned bits > 8) stay float;
those below 8 bits get a Clip at their fake-quant clamp before the Q (act_clip).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx

from ..errors import GetaError
from ..graph.editor import GraphEditor, Node, Tensor, is_default_domain
from ..quant.recurrent import QuantRecurrent
from ..quant.tables import QuantTable, table_int8
from .params import ActQ, LayerQ, WeightQ
from .recurrent import int8_lstms, with_contrib_domain

PROFILES = ("ort", "tensorrt")
INT4_BLOCK = 32  # block size of the int4 DQ (MatMulNBits wants a power of two >= 16)
INT4_OPSET = 21  # the first opset with INT4 and a blocked DequantizeLinear


def act_params(a: ActQ, profile: str) -> tuple[np.float32, np.ndarray] | None:
    """(scale, zero point scalar of the container dtype), or None when it stays float."""
    if not a.fits:
        return None
    if profile == "ort":
        return np.float32(a.scale), np.array(128 if a.signed else 0, dtype=np.uint8)
    step = a.scale if a.levels <= 127 else a.scale * a.levels / 127
    return np.float32(step), np.array(0, dtype=np.int8)


def insert_qdq(proto: onnx.ModelProto, layers: list[LayerQ], profile: str, int4: bool = False,
               outputs: list[ActQ] = (), tables: list[QuantTable] = (),
               recurrent: list[QuantRecurrent] = ()) -> onnx.ModelProto:
    """`outputs`: the output quantizers (conv outputs no layer reads directly); `tables`: the
    embedding tables trained on their int8 grid (quant/tables.py); `recurrent`: the LSTMs
    trained with int8 weights (quant/recurrent.py, export/recurrent.py)."""
    if profile not in PROFILES:
        raise GetaError(f"unknown export profile '{profile}'; expected one of {', '.join(PROFILES)}")
    g = GraphEditor(proto)
    _int8_tables(g, tables, dequantized=profile != "ort")
    int8_lstms(g, recurrent, dequantized=profile != "ort")
    act_scale: dict[str, np.float32] = {}
    unclipped = []  # (tensor, scale, zero point) of the Qs without a Clip before them
    for a in [la.act for la in layers if la.act is not None] + list(outputs):
        if a.tensor in act_scale:
            continue
        params = act_params(a, profile)
        if params is not None:
            act_scale[a.tensor] = params[0]
            clip = act_clip(a, profile)
            _quantize_tensor(g, a.tensor, *params, clip=clip)
            if clip is None:
                _drop_clip_before_q(g, a.tensor, *params)
                unclipped.append((a.tensor, *params))
    for tensor, scale, zp in unclipped:  # once every activation has its DQ (a pool reads one)
        _quantize_pool_before_reshape(g, tensor, scale, zp)
    nodes = g.nodes_by_name()
    weights: dict[tuple, Tensor] = {}  # (initializer, transpose, slot kind) -> DQ output (shared weights)
    for la in layers:
        layer = la.layer
        node = nodes[layer.node]
        use_int4 = int4 and profile == "ort" and la.int4_candidate
        key = (layer.weight, layer.transpose, layer.node if la.bias is not None else "", use_int4)
        if key not in weights:
            weights[key] = (_int4_weight if use_int4 else _int8_weight)(g, la.wq, f"{layer.node}_weight")
        g.set_input(node, layer.w_slot, weights[key])
        if use_int4 and la.act is not None:
            # DQ(x) -> MatMul blocks onnxruntime's MatMulNBits fusion (measured): the int4 layer
            # reads the float activation (weight-only quantization; MatMulNBits quantizes A itself)
            g.set_input(node, layer.act_slot, la.act.tensor)
        x_scale = act_scale.get(la.act.tensor) if la.act is not None else None
        if profile == "ort" and x_scale is not None and not use_int4:
            _matmul_add_as_gemm(g, node, la)
            _int32_bias(g, node, la, x_scale)
    return with_contrib_domain(g.finish())


def act_clip(a: ActQ, profile: str) -> tuple[np.float32, np.float32] | None:
    """The fake quantizer's clamp [lo, hi] when the container's Q would not reproduce it: a
    b < 8-bit activation saturates at (2^b - 1) d unsigned / (2^(b-1) - 1) d signed, the
    uint8 / int8 Q only at 255 / 127 steps. None at 8 bits (the Q's own saturation; a
    signed uint8 one differs by one level at -128, within the export's one-step tolerance)."""
    container = 255 if profile == "ort" and not a.signed else 127
    if a.levels >= container:
        return None
    hi = np.float32(a.levels * a.scale)
    return (np.float32(0.0) if not a.signed else -hi), hi


def _quantize_tensor(g: GraphEditor, tensor: str, scale: np.float32, zp: np.ndarray,
                     clip: tuple[np.float32, np.float32] | None = None) -> None:
    """tensor -> [Clip(lo, hi) ->] Q -> DQ, read by every former consumer of tensor. The Clip
    (sub-8-bit quantizers only) keeps the export equal to the fake quantizer; onnxruntime
    then runs it in float and cannot fuse the producer into the Q (the consumers still fuse)."""
    consumers = g.consumers(tensor)
    s = g.add_const(f"{tensor}_scale", np.asarray(scale, dtype=np.float32))
    z = g.add_const(f"{tensor}_zero_point", zp)
    source = g.tensor(tensor)
    if clip is not None:
        lo, hi = (g.add_const(f"{tensor}_clip_{k}", np.asarray(v, dtype=np.float32)) for k, v in zip(("min", "max"), clip))
        source = g.add_node("Clip", [tensor, lo, hi], f"{tensor}_Clip")
    q = g.add_node("QuantizeLinear", [source, s, z], f"{tensor}_QuantizeLinear")
    dq = g.add_node("DequantizeLinear", [q, s, z], f"{tensor}_DequantizeLinear")
    g.reroute(tensor, dq, consumers)


def _drop_clip_before_q(g: GraphEditor, tensor: str, scale: np.float32, zp: np.ndarray) -> None:
    """Clip(lo, hi) / Relu -> tensor -> Q: when the Q's own grid [s (qmin - zp), s (qmax - zp)]
    lies inside [lo - s/2, hi + s/2], Q(clip(x)) == Q(x) for every x (the Q saturates where
    the clip would bind), so the Q reads the Clip's input and the Clip dies (unless something
    else reads it). Exact, and it matters: onnxruntime's ClipQuantFusion only drops a Clip
    whose range holds the grid strictly, and onnxruntime 1.30 rejects the graph it makes of
    the rest (Conv -> Clip -> Q with the grid top a hair above 6: "two nodes with same node
    name", docs/measurements.md); a Clip that binds stays."""
    clip = g.producer(tensor)
    if clip is None or clip.op not in ("Clip", "Relu") or not is_default_domain(clip):
        return
    if g.is_output(tensor) or len(g.consumers(tensor)) != 1:
        return
    lo, hi = (0.0, np.inf) if clip.op == "Relu" else clip_range(g, clip)
    if lo is None:
        return
    info = np.iinfo(zp.dtype)
    s, z = float(scale), int(zp)
    if s * (info.min - z) > lo - 0.49 * s and s * (info.max - z) < hi + 0.49 * s:
        q = g.consumers(tensor)[0]
        q.inputs[0] = clip.inputs[0]


# ops that only move values: Q(op(x)) == op(Q(x)) with the same scale and zero point
VALUE_MOVES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")
# ops onnxruntime runs in uint8 between a DQ and a Q (QLinearGlobalAveragePool, QLinearAveragePool,
# uint8 MaxPool), which it only does when their own output is quantized
INT8_POOLS = ("GlobalAveragePool", "AveragePool", "MaxPool")


def _quantize_pool_before_reshape(g: GraphEditor, tensor: str, scale: np.float32, zp: np.ndarray) -> None:
    """pool -> Flatten / Reshape -> tensor -> Q: the pool's output gets a Q -> DQ with the same
    scale and zero point. Exact (the values are only moved, so the second Q finds them on its
    grid), and onnxruntime then runs the pool in uint8 and drops DQ -> Flatten -> Q, where it
    ran the pool in float behind a DequantizeLinear and layout Transposes (the Fashion-MNIST
    ResNet's head: docs/measurements.md, "The pooled head in int8"). onnxruntime's own static
    quantization writes the same pair. Only where the pool reads a quantized tensor (a DQ)
    and nothing else reads its output."""
    move = g.producer(tensor)
    if move is None or move.op not in VALUE_MOVES or not is_default_domain(move) or g.is_output(tensor):
        return
    pooled = move.inputs[0].name
    pool = g.producer(pooled)
    if pool is None or pool.op not in INT8_POOLS or not is_default_domain(pool) or g.is_output(pooled):
        return
    if len(g.consumers(pooled)) != 1 or len(pool.outputs) != 1:
        return
    source = g.producer(pool.inputs[0].name)
    if source is not None and source.op == "DequantizeLinear":
        _quantize_tensor(g, pooled, scale, zp)


def clip_range(g: GraphEditor, clip: Node) -> tuple[float | None, float | None]:
    """(lo, hi) of a Clip with constant bounds (inputs at opset >= 11, attributes before);
    (None, None) when a bound is computed."""
    if len(clip.inputs) == 1 and ("min" in clip.attrs or "max" in clip.attrs):
        return float(clip.attrs.get("min", -np.inf)), float(clip.attrs.get("max", np.inf))
    bounds = []
    for k, default in ((1, -np.inf), (2, np.inf)):
        t = clip.inputs[k] if len(clip.inputs) > k else None
        if t is None or not t.name:
            bounds.append(default)
        elif g.is_const(t) and g.const(t).size == 1:
            bounds.append(float(g.const(t).reshape(())))
        else:
            return None, None
    return bounds[0], bounds[1]


def _int8_weight(g: GraphEditor, wq: WeightQ, base: str) -> Tensor:
    if np.abs(wq.ints).max(initial=0) > 127:
        raise GetaError(f"{base}: integers outside [-127, 127]; this is a bug in the export")
    w = g.add_const(f"{base}_quantized", wq.ints.astype(np.int8))
    s = g.add_const(f"{base}_scale", wq.scale.astype(np.float32))
    z = g.add_const(f"{base}_zero_point", np.zeros(wq.scale.shape, dtype=np.int8))
    attrs = {"axis": int(wq.axis)} if wq.scale.ndim and wq.axis is not None else {}
    return g.add_node("DequantizeLinear", [w, s, z], f"{base}_DequantizeLinear", **attrs)


def _int8_tables(g: GraphEditor, tables: list[QuantTable], dequantized: bool = False) -> None:
    """Gather(table, ids) -> y  =>  Gather(int8 table, ids) -> Cast(float) -> Mul(steps) -> y: the
    integers and per-column steps of quant.tables.table_int8 (the function training rounded
    with), so y is the fake-quant rows bitwise; onnxruntime gathers the int8 rows and scales
    only them (a DequantizeLinear with axis -1 computes the same, slower: docs/deployment.md,
    "Embedding tables"). `dequantized` (a profile without int8 tables, tensorrt): the table
    becomes its fake-quant values in float, so that export too computes what was trained."""
    nodes = g.nodes_by_name()
    made: dict[str, tuple[Tensor, Tensor] | None] = {}  # table tensor -> (int8 table, steps); None: done in float
    for table in tables:
        for name in table.gathers:
            gather = nodes[name]
            source = gather.inputs[0]
            if source.name not in made:
                ints, steps = table_int8(g.const(source))
                if dequantized:
                    g.set_const(source, ints.astype(np.float32) * steps)
                    made[source.name] = None
                else:
                    made[source.name] = (g.add_const(f"{source.name}_quantized", ints),
                                         g.add_const(f"{source.name}_scale", steps))
            if made[source.name] is None:
                continue
            ints, steps = made[source.name]
            y = gather.outputs[0]
            rows = g.variable(f"{name}_quantized_rows")
            gather.inputs[0], gather.outputs[0] = ints, rows
            wide = g.add_node("Cast", [rows], f"{name}_Cast", to=onnx.TensorProto.FLOAT)
            g.add_node("Mul", [wide, steps], f"{name}_scale", output=y)


def _int4_weight(g: GraphEditor, wq: WeightQ, base: str) -> Tensor:
    """B [K, N] as INT4 with a blocked DQ along K (axis 0, block INT4_BLOCK): the per-tensor or
    per-column scale repeated over the ceil(K / block) blocks, shape [ceil(K/block), N]."""
    k, n = wq.ints.shape
    blocks = -(-k // INT4_BLOCK)
    scale = np.broadcast_to(wq.scale.astype(np.float32).reshape(1, -1) if wq.scale.ndim else wq.scale,
                            (blocks, n)).astype(np.float32)
    w = g.add_const(f"{base}_int4", wq.ints.astype(np.int8).astype(ml_dtypes.int4))
    s = g.add_const(f"{base}_scale", scale)
    z = g.add_const(f"{base}_zero_point", np.zeros(scale.shape, dtype=ml_dtypes.int4))
    return g.add_node("DequantizeLinear", [w, s, z], f"{base}_DequantizeLinear", axis=0, block_size=INT4_BLOCK)


def _matmul_add_as_gemm(g: GraphEditor, node: Node, la: LayerQ) -> None:
    """MatMul(DQ(x), DQ(w)) whose output only an Add of a constant bias [N] reads, written so
    that onnxruntime keeps the layer in its integer kernels. Its MatMulAddFusion turns such a
    pair into a Gemm with a float C before the QDQ fusions (a 2-D x; an N-D x of static shape,
    through Reshapes), and they take that Gemm only when a Q reads its output: a layer whose
    output stays float ran in float with its weight dequantized (every projection of a
    static-shape transformer export, keras / tf2onnx Dense layers, skl2onnx MLPs; measured in
    docs/deployment.md, "onnxruntime on x86 CPU"). Now a 2-D layer becomes
    Gemm(DQ(x), DQ(w), bias), its bias int32 next (_int32_bias): QGemm; an N-D one keeps
    MatMul with the bias as [1, .., 1, N] (no Gemm C shape: no fusion), which onnxruntime runs
    as MatMulIntegerToFloat. export/dequantize.py gives the float twin its [N] bias back."""
    if node.op != "MatMul" or la.wq.ints.ndim != 2 or la.act is None:
        return
    shape = g.tensor(la.act.tensor).shape
    readers = g.consumers(node.outputs[0])
    if shape is None or len(shape) < 2 or g.is_output(node.outputs[0]) or len(readers) != 1:
        return
    add = readers[0]
    if add.op != "Add" or not is_default_domain(add) or len(add.inputs) != 2:
        return
    slot = 1 if add.inputs[0] is node.outputs[0] else 0
    value, width = g.const_or_none(add.inputs[slot]), la.wq.ints.shape[1]
    if value is None or value.size != width or value.ndim > len(shape) or value.shape[-1] != width:
        return
    if len(shape) > 2:
        if not _read_by_q(g, add.outputs[0]):  # a Q'd output: onnxruntime makes QGemm of it already
            add.inputs[slot] = g.add_const(f"{node.name}_bias", value.reshape([1] * (len(shape) - 1) + [width]))
        return
    y = add.outputs[0]
    g.remove(add)
    node.op = "Gemm"
    node.outputs[0] = y
    g.set_input(node, 2, g.add_const(f"{node.name}_bias", value.reshape(-1).astype(np.float32)))


def _read_by_q(g: GraphEditor, tensor: Tensor) -> bool:
    """Every reader of `tensor` (through one Relu, which onnxruntime folds into the Q) is a
    QuantizeLinear."""
    live = lambda t: [r for r in g.consumers(t)  # noqa: E731 (a Relu the Q made redundant is dead)
                      if any(g.consumers(o) or g.is_output(o) for o in r.outputs)]
    readers = live(tensor)
    if len(readers) == 1 and readers[0].op == "Relu" and not g.is_output(readers[0].outputs[0]):
        readers = live(readers[0].outputs[0])
    return bool(readers) and not g.is_output(tensor) and all(r.op == "QuantizeLinear" for r in readers)


def _int32_bias(g: GraphEditor, node: Node, la: LayerQ, x_scale: np.float32) -> None:
    """Conv input 2 / Gemm C (beta = 1, 1-D of the output width) as DQ(int32)."""
    if node.op not in ("Conv", "Gemm") or len(node.inputs) < 3 or not node.inputs[2].name:
        return
    if node.op == "Gemm" and (node.attrs.get("beta", 1.0) != 1.0 or node.attrs.get("alpha", 1.0) != 1.0):
        return
    bias = la.bias if la.bias is not None else g.input_const(node, 2)
    out_axis = 0 if node.op == "Conv" or node.attrs.get("transB", 0) else 1  # W (M, ...), B (N, K) / (K, N)
    width = la.wq.ints.shape[out_axis]
    if bias is None or bias.ndim != 1 or bias.shape[0] != width:
        return
    w_scale = la.wq.scale.astype(np.float32)
    b_scale = (np.float32(x_scale) * w_scale).astype(np.float32)  # () or (width,)
    q = np.round(bias.astype(np.float64) / b_scale.astype(np.float64))
    if np.abs(q).max(initial=0) >= 2 ** 31 - 1:
        return  # the bias does not fit int32 at this scale: keep it float
    b = g.add_const(f"{node.name}_bias_quantized", q.astype(np.int32))
    s = g.add_const(f"{node.name}_bias_scale", b_scale)
    z = g.add_const(f"{node.name}_bias_zero_point", np.zeros(b_scale.shape, dtype=np.int32))
    attrs = {"axis": 0} if b_scale.ndim else {}
    node.inputs[2] = g.add_node("DequantizeLinear", [b, s, z], f"{node.name}_bias_DequantizeLinear", **attrs)
