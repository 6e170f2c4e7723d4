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


def test_order_stays_the_files_and_new_nodes_go_where_their_readers_need_them():
    """Kahn's order with the file's positions as keys: a valid file order is kept exactly (gs's
    own toposort sorts by depth: Relu would move before Abs); an added node comes
    as late as its reader lets it, a `place`d one at the given place."""
    n = helper.make_node
    nodes = [n("Neg", ["x"], ["a"], name="neg"), n("Abs", ["a"], ["b"], name="abs"),
             n("Relu", ["x"], ["c"], name="relu"), n("Add", ["b", "c"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [x.name for x in GraphEditor(model).finish().graph.node] == ["neg", "abs", "relu", "add"]
    ed = GraphEditor(model)
    add = ed.node("add")
    ed.set_input(add, 1, ed.add_node("Sigmoid", [ed.node("relu").outputs[0]], "sig"))  # after relu, before add
    first = ed.add_node("Identity", ["x"], "first")
    ed.set_input(ed.node("neg"), 0, first)
    ed.place([first.inputs[0]], at=-1.0)
    assert [x.name for x in ed.finish().graph.node] == ["first", "neg", "abs", "relu", "sig", "add"]
    x = np.array([-1.0, 2.0], np.float32)
    assert np.allclose(_run(GraphEditor(model).finish(), x), np.abs(-x) + np.maximum(x, 0))


def _if_model(ir_version: int = 8) -> onnx.ModelProto:
    """y = If(c, then: x @ W, else: x @ W * 2): W is a main-graph initializer only the bodies
    read; the Neg carries a doc string and metadata; with IR 3 every main-graph initializer is
    also a graph input, as such files declare them (and the else body makes its 2 with a
    Constant node, its own initializer otherwise)."""
    n = helper.make_node
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "W")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")  # a body's own initializer
    out = [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)]
    then = helper.make_graph([n("MatMul", ["xn", "W"], ["t"], name="t_mm")], "then", [], out)
    made = [n("Constant", [], ["two"], name="e_two", value=two)] if ir_version < 4 else []
    other = helper.make_graph([*made, n("MatMul", ["xn", "W"], ["m"], name="e_mm"), n("Mul", ["m", "two"], ["t"], name="e_mul")],
                              "else", [], out, [] if made else [two])
    neg = n("Neg", ["x"], ["xn"], name="neg", doc_string="negate")
    neg.metadata_props.add(key="origin", value="layer 1")
    nodes = [neg, n("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    if ir_version < 4:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 3]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)


def test_a_round_trip_keeps_weights_in_the_main_graph_inputs_and_node_details():
    """gs writes an initializer only a body reads into each body (two copies of W here) and
    drops graph inputs that are initializers, node doc strings and node metadata: finish puts
    each back as the file had it."""
    for ir in (8, 3):
        model = _if_model(ir)
        out = GraphEditor(model).finish(infer=False)
        assert [t.name for t in out.graph.initializer] == ["W"]
        bodies = {a.name: a.g for a in out.graph.node[1].attribute}
        assert [t.name for t in bodies["then_branch"].initializer] == []
        assert [t.name for t in bodies["else_branch"].initializer] == ([] if ir < 4 else ["two"])
        assert [vi.name for vi in out.graph.input] == [vi.name for vi in model.graph.input]
        assert out.graph.input[0] == model.graph.input[0]  # the file's declaration, symbolic dim included
        neg = out.graph.node[0]
        assert neg.doc_string == "negate" and [(p.key, p.value) for p in neg.metadata_props] == [("origin", "layer 1")]
        onnx.checker.check_model(out, full_check=True)
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        for c in (True, False):
            got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, {"x": x, "c": np.array(c)})[0]
            assert np.array_equal(got, -x * (1 if c else 2))


def test_declare_rename_and_set_value_change_the_signature():
    """An input fixed to a value (a constant, no input), one renamed with a Transpose in front
    and declared in another layout, an output declared as given."""
    model = _model()
    ed = GraphEditor(model)
    inner = ed.rename("x", "x_inner")
    assert ed.node("mm").inputs[0] is inner and inner.name == "x_inner"
    x = ed.declare(helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, "N"]), replace="x_inner")
    ed.add_node("Transpose", [x], "tr", output=inner, perm=[1, 0])
    ed.declare(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]), output=True, replace="y")
    out = ed.finish()
    assert [(vi.name, [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim])
            for vi in list(out.graph.input) + list(out.graph.output)] == [("x", [4, "N"]), ("y", ["batch", 3])]
    xt = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert np.allclose(_run(out, xt), _run(model, xt.T))
    ed = GraphEditor(out)
    ed.set_value("x", xt)
    ed.undeclare_input("x")
    fixed = ed.finish()
    assert [vi.name for vi in fixed.graph.input] == [] and "x" in {t.name for t in fixed.graph.initializer}
    got = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert np.allclose(got, _run(model, xt.T))
