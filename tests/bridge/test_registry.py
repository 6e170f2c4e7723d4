"""Every op the bridge promises resolves to a converter at every opset from 11 to 21."""
import pytest

from geta_onnx.bridge import registry
from geta_onnx.graph import MAX_OPSET, MIN_OPSET

PROMISED = """Conv ConvTranspose Gemm MatMul Einsum BatchNormalization LayerNormalization
InstanceNormalization GroupNormalization Relu LeakyRelu PRelu Elu Selu Sigmoid HardSigmoid HardSwish
Tanh Softplus Gelu Erf Softmax LogSoftmax Add Sub Mul Div Pow Sqrt Reciprocal Exp Log Neg Abs Floor
Ceil Clip Min Max Mean Sum Where Equal Less LessOrEqual Greater GreaterOrEqual Not And Or Cast
CastLike Reshape Flatten Transpose Squeeze Unsqueeze Concat Split Slice Gather GatherElements Expand
Tile Shape Size ConstantOfShape Range Constant Identity Dropout Pad Resize Upsample MaxPool
AveragePool GlobalAveragePool GlobalMaxPool ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd
ReduceL2 ArgMax TopK DepthToSpace SpaceToDepth Trilu CumSum QuantizeLinear DequantizeLinear LSTM
GRU""".split()


@pytest.mark.parametrize("op", PROMISED)
def test_every_promised_op_resolves(op):
    registry._ensure_loaded()
    missing = []
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        since = registry.since_version("", op, opset)
        if since is None:  # the op does not exist yet at this opset (Gelu before 20 ...)
            continue
        if registry.lookup("", op, opset) is None:
            missing.append((opset, since))
    assert not missing, f"{op}: no converter for (opset, since_version) {missing}"


def test_an_already_quantized_file_is_told_to_compress_its_float_original():
    """ddddocr's common_old.onnx (onnxruntime dynamic quantization): the ops are named and the
    advice is the float model, not "replace them in the exporter"."""
    from geta_onnx.errors import UnsupportedOpError

    e = UnsupportedOpError("m.onnx", [("", "ConvInteger", 10, "c"), ("com.microsoft", "DynamicQuantizeLSTM", 1, "l")])
    assert "already quantized (ConvInteger, DynamicQuantizeLSTM" in str(e) and "float model" in str(e)
    assert "Replace them in the exporter" in str(UnsupportedOpError("m.onnx", [("", "Mystery", 1, "n")]))
