"""Float16 / bfloat16 models (graph/half.py, graph/interface.py): read as the float32 model
they compute, trained so, and written back with the user's half inputs and outputs behind a
Cast. Proven against onnxruntime: the float32 model computes the half file within half
precision, and the restored file is the float32 model with its inputs and outputs rounded to
half, bitwise."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.graph import from_proto
from geta_onnx.graph.half import HALF_TYPES, float32_graph, half_io
from geta_onnx.graph.interface import adapt_interface

from .test_interface import _signature, stateful_model

F16 = TensorProto.FLOAT16


def to_half(proto: onnx.ModelProto, io: bool = True) -> onnx.ModelProto:
    """`proto` as a float16 converter writes it: float initializers and Constant / branch
    tensors float16, and (io) the float inputs and outputs float16 too; value_info dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)

    def graph(g: onnx.GraphProto, main: bool) -> None:
        for i, t in enumerate(g.initializer):
            if t.data_type == TensorProto.FLOAT:
                g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
        for node in g.node:
            for a in node.attribute:
                for body in ([a.g] if a.HasField("g") else []):
                    graph(body, False)
        for vi in list(g.input) + list(g.output):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT and (io or not main):
                vi.type.tensor_type.elem_type = F16
        del g.value_info[:]

    graph(out.graph, True)
    return out


def half_mlp() -> onnx.ModelProto:
    """x [N, 4] float16 -> MatMul W -> Add (a Constant) -> Cast to float16 of a ConstantOfShape
    row, added -> y [N, 3] float16, and a bfloat16 initializer cast to float16 and added."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float16), "W"),
             numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "row"),
             helper.make_tensor("bias_bf16", TensorProto.BFLOAT16, [3], [0.5, -1.25, 2.0])]
    nodes = [n("MatMul", ["x", "W"], ["xw"]),
             n("Constant", [], ["c"], value=numpy_helper.from_array(np.array([0.25, 0.5, -0.5], np.float16), "c")),
             n("Add", ["xw", "c"], ["h"]),
             n("ConstantOfShape", ["row"], ["ones32"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
             n("Cast", ["ones32"], ["ones"], to=F16), n("Add", ["h", "ones"], ["h1"]),
             n("Cast", ["bias_bf16"], ["bias"], to=F16), n("Add", ["h1", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", F16, ["N", 4])],
                              [helper.make_tensor_value_info("y", F16, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _no_half(proto: onnx.ModelProto) -> bool:
    tensors = list(proto.graph.initializer) + [a.t for node in proto.graph.node for a in node.attribute
                                               if a.type == onnx.AttributeProto.TENSOR]
    casts = [a.i for node in proto.graph.node if node.op_type == "Cast" for a in node.attribute]
    types = [vi.type.tensor_type.elem_type for vi in list(proto.graph.input) + list(proto.graph.output)]
    return not any(t.data_type in HALF_TYPES for t in tensors) and not set(casts + types) & set(HALF_TYPES)


def test_the_float32_graph_computes_the_half_file_with_its_values_exact():
    original = half_mlp()
    proto, count = float32_graph(original)
    assert count == 7 and _no_half(proto) and half_io(original) and not half_io(proto)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0]),
                                  numpy_helper.to_array(original.graph.initializer[0]).astype(np.float32))
    assert numpy_helper.to_array(proto.graph.initializer[2]).tolist() == [0.5, -1.25, 2.0]  # bfloat16, exact
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float16)
    want = ort.InferenceSession(original.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x.astype(np.float32)})[0]
    assert want.dtype == np.float16 and got.dtype == np.float32
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=2e-3, atol=2e-3)  # the half file's rounding
    assert float32_graph(proto) == (proto, 0)  # nothing half: the model itself


def test_half_inputs_and_outputs_train_as_float32_and_come_back_behind_a_cast():
    original = half_mlp()
    model, iface = adapt_interface(from_proto(original), {})
    assert iface.changed and iface.half_inputs == ["x"] and iface.half_outputs == ["y"] and iface.halved > 0
    assert [model.info(n).elem_type for n in ("x", "y")] == [TensorProto.FLOAT] * 2 and _no_half(model.proto)
    assert "float16" in iface.describe()[-1] and "(x, y) stay so behind a Cast" in iface.describe()[-1]
    restored = iface.restore(model.proto)
    onnx.checker.check_model(restored, full_check=True)
    assert _signature(restored) == _signature(original)
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float16)
    inner = ort.InferenceSession(str(model.run_path)).run(None, {"x": x.astype(np.float32)})[0]
    got = ort.InferenceSession(restored.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, inner.astype(np.float16))  # only the Casts around the float32 model


def test_half_weights_with_float_inputs_keep_the_signature_and_half_states_move_batch_first():
    """keep_io_types files: float32 inputs, half inside (nothing to cast back). A Silero-like
    state in float16 with the batch on axis 1 is fed batch-first as float32, and the restored
    file takes the user's float16 state [2, N, 4] again."""
    inner_half = to_half(stateful_model(), io=False)
    model, iface = adapt_interface(from_proto(inner_half), {"sr": "16000"})
    assert iface.halved and not iface.half_inputs and not iface.half_outputs and _no_half(model.proto)
    assert _signature(iface.restore(model.proto)) == _signature(inner_half)

    original = to_half(stateful_model())
    model, iface = adapt_interface(from_proto(original), {"sr": "16000"})
    assert iface.half_inputs == ["x", "state"] and iface.half_outputs == ["y", "stateN"]
    assert model.info("state").shape == ("N", 2, 4) and model.info("state").elem_type == TensorProto.FLOAT
    restored = iface.restore(model.proto)
    onnx.checker.check_model(restored, full_check=True)
    assert _signature(restored) == _signature(original)
    rng = np.random.default_rng(3)
    x, state = rng.normal(size=(3, 4)).astype(np.float16), rng.normal(size=(2, 3, 4)).astype(np.float16)
    feeds = {"x": x, "state": state, "sr": np.array(16000)}
    want = ort.InferenceSession(original.SerializeToString()).run(None, feeds)
    got = ort.InferenceSession(restored.SerializeToString()).run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == np.float16 and g.shape == w.shape
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=5e-3, atol=5e-3)


def test_compress_of_a_float16_file_trains_and_ships_its_float16_signature(tmp_path):
    """The digits sample as a float16 file (weights, inputs and outputs): it trained to NaN at
    the first step before; now the run trains the float32 model and the file it writes takes
    and gives float16, and computes what the float32 export computes."""
    from pathlib import Path

    from tests.export.helpers import short_compress

    sample = Path(__file__).resolve().parents[2] / "samples" / "digits"
    original = to_half(onnx.load(str(sample / "digits_cnn.onnx")))
    path = tmp_path / "digits_fp16.onnx"
    onnx.save(original, str(path))
    out = tmp_path / "out" / "small.onnx"
    proto, report = short_compress(path, sample / "digits.npz", out, "ort", group_divisible=8)
    assert _signature(proto) == _signature(original) and half_io(proto)
    assert any("float16" in line for line in report["interface"]), report["interface"]
    assert report["groups"]["removed"] > 0
    x = np.load(sample / "digits.npz")["eval_x"][:16]
    got = ort.InferenceSession(str(out)).run(None, {"image": x.astype(np.float16)})[0]
    assert got.dtype == np.float16 and got.shape == (16, 10) and np.isfinite(got).all()
    inner, _ = float32_graph(proto)  # the written file without its half signature: the export validated
    want = ort.InferenceSession(inner.SerializeToString()).run(None, {"image": x.astype(np.float16).astype(np.float32)})[0]
    np.testing.assert_array_equal(got, want.astype(np.float16))


def test_inspect_says_the_file_computes_in_half(tmp_path):
    from tests.export.helpers import cli_inspect

    path = tmp_path / "half.onnx"
    onnx.save(half_mlp(), str(path))
    text, report = cli_inspect(path, tmp_path)
    assert report["half"] is True and "half      the model computes in float16" in text
    onnx.save(float32_graph(half_mlp())[0], str(tmp_path / "float.onnx"))
    text, report = cli_inspect(tmp_path / "float.onnx", tmp_path)
    assert report["half"] is False and "float16" not in text
