"""One-layer graphs in the form a layer is deployed as, for onnxruntime micro-benchmarks.

    proto, feeds = layer_graph(spec, cin=48, cout=64, batch=32, form="int8")

Forms (what the export writes, export/qdq.py, and what onnxruntime fuses it into):
- "int8": a 2-D Conv is onnxruntime's channels-last QLinearConv (com.microsoft, uint8 NHWC in
  and out): the kernel its layout transformer gives every QDQ conv of a model, where the
  NCHW <-> NHWC transposes happen once per chain, not per layer (a one-layer QDQ graph pays
  two; docs/latency.md). Other layers: a uint8 input,
  DQ -> layer (its weight as DQ(int8), its bias as DQ(int32)) and, for a ConvTranspose / 1-D /
  3-D conv, Q -> uint8 output. A Gemm / MatMul keeps its float output (a classifier's logits,
  a projection feeding a bias Add): QGemm / MatMulIntegerToFloat.
- "float": float input, float weight and bias: Conv / Gemm / MatMul (MLAS sgemm).
- "int4" (a MatMul only, `forms`): float input, the weight as INT4 behind a blocked
  DequantizeLinear (axis 0, block INT4_BLOCK), float output: what the ort export writes for a
  MatMul weight of <= 4 bits, and onnxruntime runs as MatMulNBits (weight-only: it quantizes
  the activation itself).
The input quantization is not part of the layer: inside a QDQ model the previous layer's
kernel writes the uint8 tensor. Weights are random: time does not depend on the values.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..export.qdq import INT4_BLOCK, INT4_OPSET  # the int4 form as the export writes it
from .spec import LayerSpec

FORMS = ("int8", "float", "int4")
OPSET = 13  # per-axis DequantizeLinear
X_SCALE, W_SCALE, Y_SCALE = np.float32(0.02), np.float32(0.01), np.float32(0.05)  # any: time does not depend on them


def _quant_params() -> list[onnx.TensorProto]:
    """Scales and zero points of the int8 graphs: uint8 input / output, int8 weight."""
    return [numpy_helper.from_array(np.array(X_SCALE), "xs"), numpy_helper.from_array(np.uint8(0), "xz"),
            numpy_helper.from_array(np.array(W_SCALE), "ws"), numpy_helper.from_array(np.int8(0), "wz"),
            numpy_helper.from_array(np.array(Y_SCALE), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]


def _model(nodes, x: onnx.ValueInfoProto, y_type: int, inits, domains=("",)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "layer", [x], [helper.make_tensor_value_info("y", y_type, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, OPSET if d == "" else 1) for d in domains],
                              producer_name="geta-onnx-latency")
    proto.ir_version = 8
    return proto


def forms(spec: LayerSpec) -> tuple[str, ...]:
    """The forms the export may deploy `spec`'s layer as: int8 and float, and int4 for a MatMul."""
    return FORMS if spec.op_type == "MatMul" else FORMS[:2]


def layer_graph(spec: LayerSpec, cin: int, cout: int, batch: int, form: str) -> tuple[onnx.ModelProto, dict]:
    if form not in forms(spec):
        raise ValueError(f"unknown form {form!r} for a {spec.op_type}; expected one of {forms(spec)}")
    cin, cout = spec.widths(cin, cout)
    if form == "int4":
        return _int4_matmul(spec, cin, cout, batch)
    if form == "int8" and spec.op_type == "Conv" and len(spec.kernel) == 2:
        return _nhwc_qlinear_conv(spec, cin, cout, batch)
    rng = np.random.default_rng(0)
    conv = spec.op_type in ("Conv", "ConvTranspose")
    group = cout if spec.depthwise else spec.group
    x_shape = list(spec.x_shape)
    x_shape[spec.channel_axis] = cin
    x_shape = [batch] + x_shape
    if spec.op_type == "Conv":
        w_shape = [cout, cin // group, *spec.kernel]
    elif spec.op_type == "ConvTranspose":
        w_shape = [cin, cout // group, *spec.kernel]
    elif spec.op_type == "Gemm":
        w_shape = [cout, cin]  # transB = 1, as torch exports Linear
    else:
        w_shape = [cin, cout]
    nodes, inits = [], []
    attrs = {}
    if conv:
        attrs = dict(strides=list(spec.strides), pads=list(spec.pads), dilations=list(spec.dilations), group=group)
    elif spec.op_type == "Gemm":
        attrs = dict(transB=1)
    has_bias = spec.op_type != "MatMul"
    if form == "float":
        inits.append(numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32) * 0.05, "w"))
        inputs = ["x", "w"]
        if has_bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
            inputs.append("b")
        nodes.append(helper.make_node(spec.op_type, inputs, ["y"], name="layer", **attrs))
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    else:
        inits += _quant_params() + [numpy_helper.from_array(rng.integers(-127, 128, w_shape).astype(np.int8), "wq")]
        nodes += [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"], name="dq_x"),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], name="dq_w")]
        inputs = ["xf", "wf"]
        if has_bias:
            inits += [numpy_helper.from_array(rng.integers(-1000, 1000, cout).astype(np.int32), "bq"),
                      numpy_helper.from_array(np.array(X_SCALE * W_SCALE, dtype=np.float32), "bs"),
                      numpy_helper.from_array(np.int32(0), "bz")]
            nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bf"], name="dq_b"))
            inputs.append("bf")
        out = "yf" if conv else "y"
        nodes.append(helper.make_node(spec.op_type, inputs, [out], name="layer", **attrs))
        if conv:
            nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"], name="q_y"))
        x_type, y_type = TensorProto.UINT8, (TensorProto.UINT8 if conv else TensorProto.FLOAT)
        feeds = {"x": rng.integers(0, 256, x_shape).astype(np.uint8)}
    proto = _model(nodes, helper.make_tensor_value_info("x", x_type, x_shape), y_type, inits)
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True), feeds


def overhead_graph(batch: int) -> tuple[onnx.ModelProto, dict]:
    """A graph that does (almost) nothing: its run time is session.run's fixed cost, taken
    off every micro-benchmark (a whole model pays it once, not once per layer)."""
    node = helper.make_node("Identity", ["x"], ["y"])
    proto = _model([node], helper.make_tensor_value_info("x", TensorProto.UINT8, [batch]), TensorProto.UINT8, [])
    return proto, {"x": np.zeros(batch, np.uint8)}


def _int4_matmul(spec: LayerSpec, cin: int, cout: int, batch: int) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(0)
    x_shape = [batch, *spec.x_shape[:-1], cin]
    blocks = -(-cin // INT4_BLOCK)
    inits = [numpy_helper.from_array(rng.integers(-7, 8, (cin, cout)).astype(ml_dtypes.int4), "w4"),
             numpy_helper.from_array(np.full((blocks, cout), W_SCALE, np.float32), "ws"),
             numpy_helper.from_array(np.zeros((blocks, cout), ml_dtypes.int4), "wz")]
    nodes = [helper.make_node("DequantizeLinear", ["w4", "ws", "wz"], ["wf"], name="dq_w", axis=0,
                              block_size=INT4_BLOCK),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="layer")]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT4_OPSET)],
                              producer_name="geta-onnx-latency")
    proto.ir_version = 10
    return proto, {"x": rng.standard_normal(x_shape).astype(np.float32)}


def _nhwc_qlinear_conv(spec: LayerSpec, cin: int, cout: int, batch: int) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(0)
    group = cout if spec.depthwise else spec.group
    h, w = spec.x_shape[1:]
    x_shape = [batch, h, w, cin]
    inits = _quant_params() + [
        numpy_helper.from_array(rng.integers(-127, 128, [cout, cin // group, *spec.kernel]).astype(np.int8), "w"),
        numpy_helper.from_array(rng.integers(-1000, 1000, cout).astype(np.int32), "b")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], name="layer",
                            domain="com.microsoft", channels_last=1, kernel_shape=list(spec.kernel),
                            strides=list(spec.strides), pads=list(spec.pads), dilations=list(spec.dilations), group=group)
    proto = _model([node], helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape), TensorProto.UINT8, inits,
                   domains=("", "com.microsoft"))
    return proto, {"x": rng.integers(0, 256, x_shape).astype(np.uint8)}
