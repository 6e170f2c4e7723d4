"""The normalisation passes: constant folding, Identity-linked initializers, toposort, shapes."""
import numpy as np
import onnx
from onnx import helper

from geta_onnx.bridge import to_torch
from geta_onnx.graph import from_proto
from geta_onnx.graph.normalize import _keep_known_ranks, toposort, with_input_shapes
from tests.helpers import assert_parity, make_model, rng


def test_constant_nodes_and_shape_arithmetic_are_folded():
    r = rng()
    x = r.standard_normal((2, 3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("v", onnx.TensorProto.INT64, [1], [2])),
        helper.make_node("Constant", [], ["six"], value_ints=[6]),
        helper.make_node("Concat", ["two", "six"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = from_proto(make_model(nodes, {"x": x}, ["y"]))
    assert [n.op_type for n in model.nodes] == ["Reshape"]
    assert model.array(model.nodes[0].input[1]).tolist() == [2, 6]
    assert model.static_shape("y") == (2, 6)


def test_folding_stops_at_weights_and_shared_weights_stay_one_parameter():
    r = rng()
    x = r.standard_normal((2, 4)).astype(np.float32)
    w = r.standard_normal((3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),  # must NOT be folded: w trains
        helper.make_node("MatMul", ["x", "wt"], ["a"]),
        helper.make_node("Gemm", ["x", "w"], ["b"], transB=1),  # the same weight used again
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    proto = make_model(nodes, {"x": x}, ["y"], {"w": w})
    model = from_proto(proto)
    assert [n.op_type for n in model.nodes] == ["Transpose", "MatMul", "Gemm", "Add"]
    module = assert_parity(proto, {"x": x})
    assert list(module.initializer_of.values()) == ["w"] and len(list(module.parameters())) == 1


def test_identity_linked_initializers_become_independent():
    r = rng()
    x = r.standard_normal((2, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["b1"], ["b2"]),  # how the legacy exporter links equal tensors
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1),
    ]
    inits = {"w1": r.standard_normal((4, 4)).astype(np.float32), "w2": r.standard_normal((4, 4)).astype(np.float32),
             "b1": np.zeros(4, np.float32)}
    proto = make_model(nodes, {"x": x}, ["y"], inits)
    model = from_proto(proto)
    assert "Identity" not in [n.op_type for n in model.nodes]
    module = to_torch(model)
    assert {"b1", "b2"} <= set(module.initializer_of.values())
    assert module.parameter("b1") is not module.parameter("b2")
    assert_parity(proto, {"x": x})


def test_toposort_restores_order():
    r = rng()
    x = r.standard_normal((2, 4)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Abs", ["b"], ["y"])]
    proto = make_model(nodes, {"x": x}, ["y"])
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(proto)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend([nodes[2], nodes[0], nodes[1]])
    assert [n.op_type for n in toposort(shuffled).graph.node] == ["Relu", "Neg", "Abs"]


def test_unnamed_nodes_get_unique_names_and_shapes_are_inferred():
    r = rng()
    x = r.standard_normal((2, 3, 8, 8)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    proto = make_model(nodes, {"x": x}, ["y"])
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model = from_proto(proto)
    names = [n.name for n in model.nodes]
    assert all(names) and len(set(names)) == 2
    assert model.shape("a") == ("batch", 3, 8, 8)
    fixed = with_input_shapes(model, {"x": (5, 3, 8, 8)})
    assert fixed.static_shape("a") == (5, 3, 8, 8)


def test_symbolic_inference_never_leaves_an_untyped_entry():
    """onnxruntime's symbolic inference left a com.microsoft DynamicQuantizeLSTM's graph outputs
    without a type (silero VAD's hn / cn), which the checker refuses: onnx's typed entry is
    kept, and a value_info with no type is dropped."""
    typed = helper.make_tensor_value_info("hn", onnx.TensorProto.FLOAT, [1, "B", 128])
    graph = helper.make_graph([], "g", [], [typed], value_info=[helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    inferred = helper.make_model(graph)
    symbolic = onnx.ModelProto()
    symbolic.CopyFrom(inferred)
    symbolic.graph.output[0].ClearField("type")
    symbolic.graph.value_info.add().name = "cn"  # no type at all
    out = _keep_known_ranks(symbolic, inferred)
    assert out.graph.output[0] == typed
    assert all(vi.type.WhichOneof("value") == "tensor_type" for vi in out.graph.value_info)
    assert {vi.name for vi in out.graph.value_info} == {"y"}
