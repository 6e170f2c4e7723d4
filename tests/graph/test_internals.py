"""The library internals geta-onnx depends on (graph/internals.py), pinned to the installed
onnxruntime and onnx: an upgrade that renames onnxruntime's symbolic inference members or
rewords the checker's deprecation error fails here first."""
import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.graph import load_model
from geta_onnx.graph.internals import SYMBOLIC_MEMBERS, deprecated_ops, is_deprecated_op_error, symbolic_shapes


def _reshape_model() -> onnx.ModelProto:
    """Reshape to a shape computed from Shape(x): onnx's inference loses the dims, onnxruntime's
    symbolic inference keeps them."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]), helper.make_node("Concat", ["b1", "m1"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "i0"), numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnxruntime_symbolic_inference_members_exist_and_infer():
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    sym = SymbolicShapeInference(2**31 - 1, True, False, 0)
    sym._preprocess(_reshape_model())
    for member in SYMBOLIC_MEMBERS:
        assert hasattr(sym, member), member
    out = symbolic_shapes(_reshape_model())
    assert out is not None
    y = next(o for o in out.graph.output if o.name == "y")
    dims = [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim]
    assert dims == ["N", 12]


def _upsample_model() -> onnx.ModelProto:
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_checker_deprecation_wording_and_load_continues(tmp_path, caplog):
    proto = _upsample_model()
    assert deprecated_ops(proto) == ["Upsample"]
    try:
        onnx.checker.check_model(proto)
        message = ""
    except onnx.checker.ValidationError as e:
        message = str(e).strip().splitlines()[0]
    assert is_deprecated_op_error(proto, message), message  # the installed onnx still says "deprecated"
    assert not is_deprecated_op_error(_reshape_model(), message)  # no deprecated op: the text alone is not enough
    path = tmp_path / "upsample.onnx"
    onnx.save(proto, path)
    with caplog.at_level(logging.WARNING):
        model = load_model(path)
    assert [n.op_type for n in model.proto.graph.node] == ["Upsample"] and "continuing" in caplog.text
