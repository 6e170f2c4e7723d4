import numpy as np
from onnx import helper

from tests.helpers import assert_parity, make_model, rng


def test_conv_relu_add_gemm():
    r = rng()
    x = r.standard_normal((2, 3, 8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "c"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1),
    ]
    inits = {"w": r.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": r.standard_normal(4).astype(np.float32),
             "g": r.standard_normal((5, 256)).astype(np.float32), "gb": r.standard_normal(5).astype(np.float32)}
    m = assert_parity(make_model(nodes, {"x": x}, ["y"], inits), {"x": x}, gradcheck=False)
    assert sorted(m.initializer_of.values()) == ["b", "g", "gb", "w"]
