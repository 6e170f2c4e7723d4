"""graph.model.weight_chain / weight_source: the one walker from a layer's weight input back
to its initializer (the QADG's groups and costs, the quantizer placement and the physical
pruning all use it), and graph.model.attr, the one attribute accessor."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.graph import from_proto
from geta_onnx.graph.model import attr, weight_chain, weight_source


def _model():
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    q = numpy_helper.from_array(np.ones((4, 3), np.int8), "wq")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["x", "wt"], ["y1"], name="mm1"),
             helper.make_node("DequantizeLinear", ["wq", "s"], ["wd"], name="dq"),
             helper.make_node("Transpose", ["wd"], ["wdt"], perm=[1, 0], name="t2"),
             helper.make_node("MatMul", ["x", "wdt"], ["y2"], name="mm2"),
             helper.make_node("MatMul", ["x", "x2"], ["y3"], name="mm3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                           helper.make_tensor_value_info("x2", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 4]) for y in ("y1", "y2", "y3")],
                              [w, q, s])
    return from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), check=False)


def test_walker_follows_the_allowed_ops_only():
    m = _model()
    assert weight_chain(m, "w") == [] and weight_source(m, "w") == "w"
    assert [n.name for n in weight_chain(m, "wt")] == ["t"] and weight_source(m, "wt") == "w"
    assert [n.name for n in weight_chain(m, "wdt")] == ["t2", "dq"] and weight_source(m, "wdt") == "wq"
    assert weight_source(m, "wdt", through=("Transpose",)) is None  # the DQ is not allowed here
    assert weight_source(m, "x2") is None and weight_chain(m, "x2") is None  # a graph input, not a weight


def test_attr_values_and_default():
    node = helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0], name="t")
    assert attr(node, "perm") == [1, 0] and attr(node, "axis", 7) == 7 and attr(node, "axis") is None
