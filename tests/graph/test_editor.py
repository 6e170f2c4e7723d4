"""graph/editor.py, the one mutable graph layer (onnx-graphsurgeon): the input is never
modified, edits keep def-use, finish drops what nothing reads, sorts, and keeps the model's
own fields; INT4 constants are packed; results run in onnxruntime."""
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.graph.editor import GraphEditor


def _model() -> onnx.ModelProto:
    """y = Relu(x @ W) + b, plus a dead Neg nobody reads; a custom-domain opset and metadata."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W"),
             numpy_helper.from_array(np.ones(3, np.float32), "b"),
             numpy_helper.from_array(np.zeros(3, np.float32), "unused")]
    nodes = [n("MatMul", ["x", "W"], ["xw"], name="mm"), n("Relu", ["xw"], ["r"], name="relu"),
             n("Add", ["r", "b"], ["y"], name="add"), n("Neg", ["xw"], ["dead"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, producer_name="maker", producer_version="7",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    helper.set_model_props(model, {"author": "someone"})
    return model


def _run(proto, x):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_edits_keep_def_use_and_finish_keeps_the_model_fields():
    model = _model()
    before = model.SerializeToString()
    ed = GraphEditor(model)
    relu = ed.node("relu")
    assert ed.producer("xw").name == "mm" and [c.name for c in ed.consumers("xw")] == ["relu", "neg"]
    assert ed.is_const("W") and not ed.is_const("xw") and ed.const("W").shape == (4, 3)
    # y = Relu(x @ 2W) + b, through a new initializer and an inserted node
    ed.node("mm").inputs[1] = ed.add_const("W", ed.const("W") * 2)  # the name is taken: W_1
    readers = ed.consumers("r")  # before the new reader exists
    scaled = ed.add_node("Mul", [relu.outputs[0], ed.add_const("half", np.float32(0.5))], "scale")
    ed.reroute("r", scaled, readers)
    assert [c.name for c in ed.consumers(scaled)] == ["add"] and ed.producer(scaled).name == "scale"
    out = ed.finish()
    assert model.SerializeToString() == before  # the input is untouched
    names = [nd.name for nd in out.graph.node]
    assert "neg" not in names and names.index("scale") < names.index("add")  # dead node gone, sorted
    assert {t.name for t in out.graph.initializer} == {"W_1", "b", "half"}  # W and unused dropped
    assert (out.producer_name, out.producer_version) == ("maker", "7")
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 17), ("com.example", 1)}
    assert {p.key: p.value for p in out.metadata_props} == {"author": "someone"}
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    want = np.maximum(x @ (numpy_helper.to_array(model.graph.initializer[0]) * 2), 0) * 0.5 + 1
    np.testing.assert_allclose(_run(out, x), want, rtol=1e-6)


def test_remove_then_produce_the_same_tensor_and_turn_an_output_into_a_constant():
    ed = GraphEditor(_model())
    add = ed.node("add")
    y = add.outputs[0]
    ed.remove(add)  # y loses its producer; another node may write it now
    ed.add_node("Sub", [ed.node("relu").outputs[0], "b"], "sub", output=y)
    assert ed.producer("y").name == "sub"
    ed.remove(ed.node("neg"))
    ed.tensor("dead").to_constant(np.zeros(1, np.float32))
    out = ed.finish()
    assert [nd.op_type for nd in out.graph.node] == ["MatMul", "Relu", "Sub"]
    x = np.ones((1, 4), np.float32)
    w = numpy_helper.to_array(_model().graph.initializer[0])
    np.testing.assert_allclose(_run(out, x), np.maximum(x @ w, 0) - 1, rtol=1e-6)


def test_int4_constants_are_packed_two_to_a_byte():
    ed = GraphEditor(_model())
    ints = np.array([[1, -2, 7, -7], [0, 3, -1, 5]], np.int8)
    t = ed.add_const("w_int4", ints.astype(ml_dtypes.int4))
    zp = ed.add_const("z_int4", np.zeros((1, 4), ml_dtypes.int4))
    scale = ed.add_const("s", np.ones((1, 4), np.float32))
    w = ed.add_node("DequantizeLinear", [t, scale, zp], "dq", axis=0, block_size=2)
    w.dtype = np.float32
    ed.graph.outputs.append(w)  # read by something, or finish drops it
    out = ed.finish()
    w = next(i for i in out.graph.initializer if i.name == "w_int4")
    assert w.data_type == TensorProto.INT4 and len(w.raw_data) == ints.size // 2
    np.testing.assert_array_equal(numpy_helper.to_array(w).astype(np.int8), ints)
