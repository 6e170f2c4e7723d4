"""ai.onnx.ml ops scikit-learn exports put around a network: bridge vs onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.helpers import assert_parity, rng


def _model(node, feeds: dict, out_type: int, out_shape: list):
    """onnx infers no output type for these ops: it is stated here."""
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()]
    graph = helper.make_graph([node], "ml", inputs, [helper.make_tensor_value_info("y", out_type, out_shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)],
                             ir_version=9)


@pytest.mark.parametrize("offset, scale", [([0.5], [2.0]), ([0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 4.0])])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_scaler_per_feature_or_one_value_in_float32(offset, scale, dtype):
    x = (rng(1).normal(size=(3, 4)) * 5).astype(dtype)
    node = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=offset, scale=scale)
    assert_parity(_model(node, {"x": x}, TensorProto.FLOAT, [3, 4]), {"x": x}, grad=dtype == np.float32)


@pytest.mark.parametrize("x_shape, idx", [((5,), [[3], [0], [4]]), ((2, 6), [1, 5, 5]), ((2, 3, 4), [[0, 3]])])
def test_array_feature_extractor_indexes_the_last_axis(x_shape, idx):
    """A 1-D input gives [1, len(indices)] (onnxruntime's shape); otherwise the last axis is
    replaced by the indices, flattened."""
    x = rng(2).normal(size=x_shape).astype(np.float32)
    ids = np.array(idx, dtype=np.int64)
    node = helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], domain="ai.onnx.ml")
    out = [1, ids.size] if len(x_shape) == 1 else [*x_shape[:-1], ids.size]
    assert_parity(_model(node, {"x": x, "i": ids}, TensorProto.FLOAT, out), {"x": x, "i": ids}, grad=False)
