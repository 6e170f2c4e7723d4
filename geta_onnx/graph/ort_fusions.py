"""Files saved after onnxruntime's transformer optimizer (`onnxruntime.transformers.optimizer`,
Olive, Optimum's `ORTOptimizer`) hold com.microsoft ops that fuse standard ones. `standard_ops`
writes each back as the standard ops it fuses, so the bridge trains it and the QADG sees its
channels; onnxruntime fuses them again when it loads the compressed file.

    SkipLayerNormalization(x, skip, gamma, beta, bias)   => LayerNorm(x + skip [+ bias]) (output 3: the sum)
    SkipSimplifiedLayerNormalization(x, skip, gamma, bias) => RMSNorm(x + skip [+ bias])
    EmbedLayerNormalization(ids, segment_ids, word, position, segment, gamma, beta, mask, position_ids)
        => LayerNorm(Gather(word, ids) + Gather(position, position_ids or 0..S-1) [+ Gather(segment, segment_ids)])
    BiasGelu(x, bias) / Gelu(x) / FastGelu(x, bias) / QuickGelu(x)  => their formulas
    FusedMatMul(A, B, alpha, transA, transB)           => [Transpose] MatMul [* alpha]
    Attention(x, W, bias, mask_index)                  => q / k / v MatMul + Add, heads, softmax(q k^T s + mask) v

LayerNorm is LayerNormalization (axis -1) from opset 17 and its formula before. Left as they
are, and refused by the bridge with their names: an op reading an output this does not write
(SkipLayerNormalization's mean / inv_std_var, an Attention's present state), FusedMatMul with
transBatchA / transBatchB, an Attention with a past state, causal (unidirectional), rotary or
a mask of another form, and MultiHeadAttention / GroupQueryAttention. docs/realworld.md,
"Files of onnxruntime's transformer optimizer".

    proto, rewritten = standard_ops(onnx.load("model_optimized.onnx"))
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from .editor import GraphEditor, Node, Tensor

CONTRIB = "com.microsoft"
FUSED = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "Gelu",
         "FastGelu", "QuickGelu", "FusedMatMul", "Attention")
LAYER_NORM_OPSET = 17
# prefixes of the constants onnxruntime's fusions create (ConstantSharing, the reduce axes of a mask
# index, MatMulAddFusion's Reshape shapes): a file it saved holds them already
ORT_MADE = ("ort_const_", "ort_shared_", "gemm_input_shape", "gemm_output_shape")


def standard_ops(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(`proto` with its fused com.microsoft ops written as standard ops, how many); (`proto`
    itself, 0) when it has none."""
    if not any(n.domain == CONTRIB and n.op_type in FUSED for n in proto.graph.node):
        return proto, 0
    try:  # the ranks of the masks Attention reads (the file of the optimizer keeps no value_info)
        g = GraphEditor(onnx.shape_inference.infer_shapes(proto, strict_mode=False))
    except Exception:  # noqa: BLE001 - inference is best effort: an Attention without a known mask rank stays
        g = GraphEditor(proto)
    rewritten = 0
    for node in list(g.nodes):
        if node.domain == CONTRIB and node.op in FUSED:
            rewritten += REWRITES[node.op](g, node)
    if not rewritten:
        return proto, 0
    for name in g.const_names():  # onnxruntime names the constants its fusions make so, and would
        if name.startswith(ORT_MADE):  # make them again under the same name: it refuses to load then
            g.rename(name, g.unique(f"given_{name}"))
    return g.finish(label="standard ops"), rewritten


def _input(node: Node, i: int) -> Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _used(g: GraphEditor, node: Node, i: int) -> bool:
    """Output i of `node` exists and something reads it (a node or the graph's outputs)."""
    return len(node.outputs) > i and bool(node.outputs[i].name) and (
        bool(g.consumers(node.outputs[i])) or g.is_output(node.outputs[i]))


def _const(g: GraphEditor, base: str, value: float) -> Tensor:
    return g.add_const(base, np.asarray(value, dtype=np.float32))


def _layer_norm(g: GraphEditor, x, gamma, beta, eps: float, base: str, output: Tensor, rms: bool = False) -> None:
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis (rms: x / sqrt(mean(x^2)
    + eps) * gamma); LayerNormalization from opset 17 (not for rms), the formula before."""
    if not rms and g.opset() >= LAYER_NORM_OPSET:
        g.add_node("LayerNormalization", [x, gamma, *([beta] if beta is not None else [])], base, output=output,
                   axis=-1, epsilon=float(eps))
        return
    reduce = _reduce_mean(g)
    centred = x if rms else g.add_node("Sub", [x, reduce(x, f"{base}_mean")], f"{base}_centre")
    var = reduce(g.add_node("Mul", [centred, centred], f"{base}_square"), f"{base}_var")
    std = g.add_node("Sqrt", [g.add_node("Add", [var, _const(g, f"{base}_epsilon", eps)], f"{base}_var_eps")],
                     f"{base}_std")
    scaled = g.add_node("Mul", [g.add_node("Div", [centred, std], f"{base}_normed"), gamma], f"{base}_gamma",
                        **({} if beta is not None else {"output": output}))
    if beta is not None:
        g.add_node("Add", [scaled, beta], f"{base}_beta", output=output)


def _reduce_mean(g: GraphEditor):
    """ReduceMean over the last axis, keepdims, in the form of the graph's opset (axes as an
    input from 18)."""
    if g.opset() >= 18:
        axes = g.add_const("last_axis", np.array([-1], np.int64))
        return lambda x, base: g.add_node("ReduceMean", [x, axes], base, keepdims=1)
    return lambda x, base: g.add_node("ReduceMean", [x], base, axes=[-1], keepdims=1)


def _skip_layer_norm(g: GraphEditor, node: Node, rms: bool = False) -> int:
    if _used(g, node, 1) or _used(g, node, 2):
        return 0  # mean / inv_std_var: no standard op writes them
    x, skip, gamma = node.inputs[:3]
    beta, bias = (None, _input(node, 3)) if rms else (_input(node, 3), _input(node, 4))
    outputs, eps, base = list(node.outputs), float(node.attrs.get("epsilon", 1e-12)), node.name
    g.remove(node)
    total = g.add_node("Add", [x, skip], f"{base}_skip", **({} if bias is not None or not _wanted(outputs, 3)
                                                                   else {"output": outputs[3]}))
    if bias is not None:
        total = g.add_node("Add", [total, bias], f"{base}_bias", **({"output": outputs[3]} if _wanted(outputs, 3) else {}))
    _layer_norm(g, total, gamma, beta, eps, f"{base}_norm", outputs[0], rms=rms)
    return 1


def _wanted(outputs: list, i: int) -> bool:
    return len(outputs) > i and bool(outputs[i].name)


def _embed_layer_norm(g: GraphEditor, node: Node) -> int:
    ids, segment_ids, word, position, segment, gamma, beta, mask, position_ids = (_input(node, i) for i in range(9))
    lengths = _used(g, node, 1)  # mask_index: the ones per row of the mask (key lengths, right padding)
    if lengths and mask is None:
        return 0
    outputs, eps, base = list(node.outputs), float(node.attrs.get("epsilon", 1e-12)), node.name
    g.remove(node)
    if lengths:
        ones = g.add_node("Cast", [mask], f"{base}_mask_int", to=TensorProto.INT32)
        if g.opset() >= 13:
            g.add_node("ReduceSum", [ones, g.add_const(f"{base}_seq_axes", np.array([1], np.int64))],
                       f"{base}_mask_index", output=outputs[1], keepdims=0)
        else:
            g.add_node("ReduceSum", [ones], f"{base}_mask_index", output=outputs[1], axes=[1], keepdims=0)
        outputs[1].shape = outputs[1].shape or ["batch"]  # [B]: the rank the Attention reading it needs
    total = g.add_node("Add", [g.add_node("Gather", [word, ids], f"{base}_word"), _positions(g, ids, position,
                                                                                              position_ids, base)],
                       f"{base}_word_position")
    if segment is not None and segment_ids is not None:
        total = g.add_node("Add", [total, g.add_node("Gather", [segment, segment_ids], f"{base}_segment")],
                           f"{base}_sum", **({"output": outputs[2]} if _wanted(outputs, 2) else {}))
    elif _wanted(outputs, 2):
        g.add_node("Identity", [total], f"{base}_sum", output=outputs[2])
    _layer_norm(g, total, gamma, beta, eps, f"{base}_norm", outputs[0])
    return 1


def _positions(g: GraphEditor, ids, table, position_ids, base: str) -> Tensor:
    """The position rows: Gather(table, position_ids), or rows 0..S-1 of the table ([S, H],
    broadcast over the batch), S = ids' second dimension."""
    if position_ids is not None:
        return g.add_node("Gather", [table, position_ids], f"{base}_position")
    shape = g.add_node("Shape", [ids], f"{base}_shape")
    length = g.add_node("Gather", [shape, g.add_const(f"{base}_seq_axis", np.array(1, np.int64))], f"{base}_length")
    start, step = (g.add_const(f"{base}_{k}", np.array(v, np.int64)) for k, v in (("start", 0), ("step", 1)))
    rows = g.add_node("Range", [start, length, step], f"{base}_rows")
    return g.add_node("Gather", [table, rows], f"{base}_position")


def _gelu(g: GraphEditor, x, base: str, output: Tensor) -> None:
    """0.5 x (1 + erf(x / sqrt 2)): the exact Gelu, in the form torch exports it."""
    scaled = g.add_node("Div", [x, _const(g, f"{base}_sqrt2", math.sqrt(2.0))], f"{base}_div")
    one_plus = g.add_node("Add", [g.add_node("Erf", [scaled], f"{base}_erf"), _const(g, f"{base}_one", 1.0)],
                          f"{base}_add")
    g.add_node("Mul", [g.add_node("Mul", [x, one_plus], f"{base}_mul"), _const(g, f"{base}_half", 0.5)], f"{base}_half",
               output=output)


def _bias_gelu(g: GraphEditor, node: Node) -> int:
    x, bias, y, base = node.inputs[0], _input(node, 1), node.outputs[0], node.name
    g.remove(node)
    _gelu(g, x if bias is None else g.add_node("Add", [x, bias], f"{base}_bias"), base, y)
    return 1


def _fast_gelu(g: GraphEditor, node: Node) -> int:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), x with the bias added."""
    x, bias, y, base = node.inputs[0], _input(node, 1), node.outputs[0], node.name
    g.remove(node)
    if bias is not None:
        x = g.add_node("Add", [x, bias], f"{base}_bias")
    cube = g.add_node("Mul", [g.add_node("Mul", [x, x], f"{base}_sq"), x], f"{base}_cube")
    inner = g.add_node("Add", [x, g.add_node("Mul", [cube, _const(g, f"{base}_c", 0.044715)], f"{base}_cubic")],
                       f"{base}_inner")
    t = g.add_node("Tanh", [g.add_node("Mul", [inner, _const(g, f"{base}_k", math.sqrt(2 / math.pi))], f"{base}_arg")],
                   f"{base}_tanh")
    one_plus = g.add_node("Add", [t, _const(g, f"{base}_one", 1.0)], f"{base}_add")
    g.add_node("Mul", [g.add_node("Mul", [x, one_plus], f"{base}_mul"), _const(g, f"{base}_half", 0.5)], f"{base}_half",
               output=y)
    return 1


def _quick_gelu(g: GraphEditor, node: Node) -> int:
    """x sigmoid(alpha x)."""
    x, y, base, alpha = node.inputs[0], node.outputs[0], node.name, float(node.attrs.get("alpha", 1.702))
    g.remove(node)
    gate = g.add_node("Sigmoid", [g.add_node("Mul", [x, _const(g, f"{base}_alpha", alpha)], f"{base}_scaled")],
                      f"{base}_gate")
    g.add_node("Mul", [x, gate], base, output=y)
    return 1


def _fused_matmul(g: GraphEditor, node: Node) -> int:
    if node.attrs.get("transBatchA", 0) or node.attrs.get("transBatchB", 0):
        return 0
    a, b, y, base = node.inputs[0], node.inputs[1], node.outputs[0], node.name
    alpha = float(node.attrs.get("alpha", 1.0))
    ranks = [len(t.shape) if t.shape is not None else None for t in (a, b)]
    flips = [node.attrs.get("transA", 0), node.attrs.get("transB", 0)]
    if any(flip and rank is None for flip, rank in zip(flips, ranks)):
        return 0  # a Transpose of the last two axes needs the rank
    g.remove(node)
    a, b = (g.add_node("Transpose", [t], f"{base}_t{k}", perm=[*range(rank - 2), rank - 1, rank - 2]) if flip else t
            for k, (t, flip, rank) in enumerate(zip((a, b), flips, ranks)))
    if alpha == 1.0:
        g.add_node("MatMul", [a, b], base, output=y)
    else:
        g.add_node("Mul", [g.add_node("MatMul", [a, b], base), _const(g, f"{base}_alpha", alpha)], f"{base}_scale", output=y)
    return 1


def _attention(g: GraphEditor, node: Node) -> int:
    """Attention(x, W [in, q + k + v], bias, mask_index, past, attention_bias) => three MatMul +
    Add projections (W and bias split into their own initializers, as an exporter writes them),
    heads by Reshape [0, 0, N, d] -> Transpose, softmax(q k^T * scale + mask) v, heads merged.
    mask_index: [B] key lengths (right padding; what EmbedLayerNormalization writes), [B, T] a
    0 / 1 mask, [B, S, T] one per query; masked keys get mask_filter_value. Left as it is (0):
    a past / present state, unidirectional, rotary, other mask forms, non-constant weights."""
    x, w, bias, mask = (_input(node, i) for i in range(4))
    if any(_input(node, i) is not None for i in (4, 6)) or _used(g, node, 1) or node.attrs.get("unidirectional", 0) \
            or node.attrs.get("do_rotary", 0) or not g.is_const(w) or (bias is not None and not g.is_const(bias)):
        return 0
    heads = int(node.attrs["num_heads"])
    weight = g.const(w)
    sizes = [int(v) for v in node.attrs.get("qkv_hidden_sizes", [weight.shape[1] // 3] * 3)]
    if sum(sizes) != weight.shape[1] or any(size % heads for size in sizes) or sizes[0] != sizes[1]:
        return 0
    mask_rank = None if mask is None else (len(mask.shape) if mask.shape is not None else -1)
    if mask_rank not in (None, 1, 2, 3):
        return 0
    attention_bias, y, base = _input(node, 5), node.outputs[0], f"{node.name}_standard"
    scale = float(node.attrs.get("scale", 1.0 / math.sqrt(sizes[0] // heads)))
    filler = float(node.attrs.get("mask_filter_value", -10000.0))
    values = g.const(bias) if bias is not None else None
    g.remove(node)
    cuts = np.cumsum([0, *sizes])
    q, k, v = (_projection(g, x, weight[:, lo:hi], None if values is None else values[lo:hi], heads, perm,
                           f"{base}_{name}")
               for name, lo, hi, perm in zip("qkv", cuts[:-1], cuts[1:], ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3])))
    scores = g.add_node("Mul", [g.add_node("MatMul", [q, k], f"{base}_scores"), _const(g, f"{base}_scale", scale)],
                        f"{base}_scaled")
    if mask is not None:
        scores = g.add_node("Add", [scores, _additive_mask(g, mask, mask_rank, x, filler, base)], f"{base}_masked")
    if attention_bias is not None:
        scores = g.add_node("Add", [scores, attention_bias], f"{base}_biased")
    probs = g.add_node("Softmax", [scores], f"{base}_softmax", axis=-1)
    context = g.add_node("Transpose", [g.add_node("MatMul", [probs, v], f"{base}_context")], f"{base}_merge",
                         perm=[0, 2, 1, 3])
    g.add_node("Reshape", [context, g.add_const(f"{base}_merged_shape", np.array([0, 0, sizes[2]], np.int64))], base,
               output=y)
    return 1


def _projection(g: GraphEditor, x, weight: np.ndarray, bias, heads: int, perm: list[int], base: str) -> Tensor:
    """x @ W (+ bias) as [B, S, N, d], transposed by `perm`."""
    out = g.add_node("MatMul", [x, g.add_const(f"{base}_weight", np.ascontiguousarray(weight))], f"{base}_proj")
    if bias is not None:
        out = g.add_node("Add", [out, g.add_const(f"{base}_bias", np.ascontiguousarray(bias))], f"{base}_bias")
    split = g.add_const(f"{base}_heads_shape", np.array([0, 0, heads, weight.shape[1] // heads], np.int64))
    return g.add_node("Transpose", [g.add_node("Reshape", [out, split], f"{base}_heads")], f"{base}_t", perm=perm)


def _additive_mask(g: GraphEditor, mask, rank: int, x, filler: float, base: str) -> Tensor:
    """mask_index as the scores' additive mask: 0 where a key is attended, `filler` elsewhere,
    shaped to broadcast over [B, N, S, T]."""
    if rank == 1:  # key lengths: key j is attended when j < length
        shape = g.add_node("Shape", [x], f"{base}_shape")
        length = g.add_node("Gather", [shape, g.add_const(f"{base}_seq_axis", np.array(1, np.int64))], f"{base}_keys")
        keys = g.add_node("Range", [g.add_const(f"{base}_start", np.array(0, np.int64)), length,
                                    g.add_const(f"{base}_step", np.array(1, np.int64))], f"{base}_key_positions")
        lengths = g.add_node("Unsqueeze", [g.add_node("Cast", [mask], f"{base}_lengths", to=TensorProto.INT64),
                                           g.add_const(f"{base}_last", np.array([1], np.int64))], f"{base}_column")
        attended = g.add_node("Less", [keys, lengths], f"{base}_attended")  # [B, T]
    else:
        attended = g.add_node("Cast", [mask], f"{base}_attended", to=TensorProto.BOOL)
    zero, fill = _const(g, f"{base}_zero", 0.0), _const(g, f"{base}_filler", filler)
    additive = g.add_node("Where", [attended, zero, fill], f"{base}_additive")
    axes = [1, 2] if rank in (1, 2) else [1]  # [B, T] -> [B, 1, 1, T]; [B, S, T] -> [B, 1, S, T]
    return g.add_node("Unsqueeze", [additive, g.add_const(f"{base}_mask_axes", np.array(axes, np.int64))],
                      f"{base}_mask")


REWRITES = {"SkipLayerNormalization": _skip_layer_norm,
            "SkipSimplifiedLayerNormalization": lambda g, n: _skip_layer_norm(g, n, rms=True),
            "EmbedLayerNormalization": _embed_layer_norm, "BiasGelu": _bias_gelu, "Gelu": _bias_gelu,
            "FastGelu": _fast_gelu, "QuickGelu": _quick_gelu, "FusedMatMul": _fused_matmul, "Attention": _attention}
