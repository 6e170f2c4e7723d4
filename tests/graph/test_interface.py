"""Inputs the data cannot feed as they are (graph/interface.py): a value fixed for the run and
a state with the batch on axis 1, adapted for training and restored in the export, proven
against the original in onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.errors import ConfigError
from geta_onnx.graph import from_proto
from geta_onnx.graph.interface import adapt_interface


def stateful_model() -> onnx.ModelProto:
    """Silero-like: x [N, 4], state [2, N, 4], sr (int64 scalar). h = x @ W + state[0]; the
    output is h * (sr == 16000 ? a : b) through an If on the VALUE of sr; stateN = [h, state[1]]
    ([2, N, 4], batch on axis 1)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(16000, dtype=np.int64), "rate16k"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]
    n = helper.make_node

    def branch(name: str, value: float) -> onnx.GraphProto:
        c = numpy_helper.from_array(np.full((4,), value, dtype=np.float32), f"{name}_scale")
        return helper.make_graph([n("Mul", ["h", f"{name}_scale"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)], [c])

    nodes = [n("MatMul", ["x", "W"], ["xw"]), n("Gather", ["state", "zero"], ["s0"], axis=0),
             n("Squeeze", ["s0", "zero"], ["s0s"]), n("Add", ["xw", "s0s"], ["h"]),
             n("Equal", ["sr", "rate16k"], ["is16k"]),
             n("If", ["is16k"], ["y"], then_branch=branch("then", 2.0), else_branch=branch("else", -1.0)),
             n("Unsqueeze", ["h", "zero"], ["hu"]), n("Gather", ["state", "one"], ["s1"], axis=0),
             n("Concat", ["hu", "s1"], ["stateN"], axis=0)]
    graph = helper.make_graph(nodes, "stateful", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _signature(proto):
    dims = lambda vi: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    return [(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in list(proto.graph.input) + list(proto.graph.output)]


def test_adapted_model_trains_batch_first_and_the_restored_one_is_the_original():
    original = stateful_model()
    model, iface = adapt_interface(from_proto(original), {"sr": "16000"})
    assert [vi.name for vi in model.inputs] == ["x", "state"] and not any(n.op_type == "If" for n in model.nodes)
    assert model.info("state").shape == ("N", 2, 4) and model.info("stateN").shape[0] == "N"
    assert iface.moved_inputs == {"state": 1} and iface.moved_outputs == {"stateN": 1}
    assert len(iface.describe()) == 3 and "fixed at 16000" in iface.describe()[0]
    rng = np.random.default_rng(1)
    x, state = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(2, 3, 4)).astype(np.float32)
    want = ort.InferenceSession(original.SerializeToString()).run(None, {"x": x, "state": state, "sr": np.array(16000)})
    adapted = ort.InferenceSession(str(model.run_path)).run(None, {"x": x, "state": state.transpose(1, 0, 2).copy()})
    np.testing.assert_allclose(adapted[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(adapted[1], want[1].transpose(1, 0, 2), rtol=1e-6)
    restored = iface.restore(model.proto)
    onnx.checker.check_model(restored, full_check=True)
    assert _signature(restored) == _signature(original)
    got = ort.InferenceSession(restored.SerializeToString()).run(None, {"x": x, "state": state, "sr": np.array(16000)})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_nothing_to_adapt_returns_the_model_itself():
    model = from_proto(stateful_model())
    rewritten = from_proto(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]), opset_imports=[helper.make_opsetid("", 17)]))
    same, iface = adapt_interface(rewritten, {})
    assert same is rewritten and not iface.changed and iface.restore(rewritten.proto) is rewritten.proto
    assert adapt_interface(model, {})[1].moved_inputs == {"state": 1}  # a state is always fed batch-first


@pytest.mark.parametrize("values, message", [({"rate": "16000"}, "has no input named rate"),
                                             ({"sr": "fast"}, "input 'sr' is int64; give a number"),
                                             ({"x": "1"}, "only an input of fixed dims")])
def test_bad_input_values_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        adapt_interface(from_proto(stateful_model()), values)


def test_restore_refuses_an_export_that_lost_the_adapter():
    model, iface = adapt_interface(from_proto(stateful_model()), {"sr": "16000"})
    broken = onnx.ModelProto()
    broken.CopyFrom(model.proto)
    for node in broken.graph.node:
        if node.name.startswith("geta_interface/in/"):
            node.name = "renamed"
    from geta_onnx.errors import GetaError

    with pytest.raises(GetaError, match="lost the interface Transpose"):
        iface.restore(broken)


def test_a_fixed_input_the_model_reads_comes_back_as_an_input_nothing_reads():
    """faster-whisper's Silero fixes its states h, c at 0: the model keeps reading the value,
    and the restored file declares h again. h must not be an initializer too (a default the
    caller would override, which onnxruntime would not fold): the input is ignored."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "h"], ["y"], name="add")], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, iface = adapt_interface(from_proto(original), {"h": "0.5"})
    assert [vi.name for vi in model.inputs] == ["x"]
    assert "fixed at 0.5 (every entry of 1x4)" in iface.describe()[0]
    restored = iface.restore(model.proto)
    onnx.checker.check_model(restored, full_check=True)
    assert _signature(restored) == _signature(original)
    assert "h" not in {t.name for t in restored.graph.initializer}
    session = ort.InferenceSession(restored.SerializeToString())
    assert [i.name for i in session.get_inputs()] == ["x", "h"]
    x = np.ones((2, 4), np.float32)
    for h in (0.5, 7.0):  # whatever the caller feeds, the model computes for 0.5
        np.testing.assert_allclose(session.run(None, {"x": x, "h": np.full((1, 4), h, np.float32)})[0], x + 0.5)
