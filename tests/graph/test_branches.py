"""If nodes decided before training (geta_onnx/graph/branches.py): a torch.jit.script export
that branches on a tensor's length, constant conditions, nested Ifs whose names clash with
the main graph, and the conditions that must stay undecided (input values, the batch)."""
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.bridge import to_torch
from geta_onnx.errors import ModelLoadError
from geta_onnx.graph import OnnxModel, load_model
from geta_onnx.graph.branches import check_no_ifs_left, inline_ifs
from geta_onnx.graph.normalize import normalize_model
from tests.helpers import export_scripted_cnn

ATOL = 1e-5  # float32, the same ops in a different graph


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("branches") / "scripted.onnx"
    export_scripted_cnn(path)
    return path


def _inline_and_check(path, feeds: dict) -> tuple[OnnxModel, list[str]]:
    """Inline on `feeds`; the result has no If and matches the original in onnxruntime and
    in the bridge."""
    model = load_model(path)
    proto, notes = inline_ifs(model.proto, feeds, label="test")
    check_no_ifs_left(proto, "test")
    out = normalize_model(OnnxModel(proto, model.path))
    assert not any(n.op_type == "If" for n in out.proto.graph.node)
    onnx.checker.check_model(out.proto, full_check=True)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(out.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, atol=ATOL)
    module = to_torch(out)
    with torch.no_grad():
        y = module(*[torch.from_numpy(feeds[vi.name]) for vi in out.inputs])
    np.testing.assert_allclose(y.numpy(), want[0], atol=ATOL)
    return out, notes


@pytest.mark.parametrize("time, kept", [(6, "ReduceMean"), (1, "Squeeze")])
def test_a_shape_condition_is_decided_at_the_data_shapes(scripted, time, kept):
    x = np.random.default_rng(0).normal(size=(3, 4, time)).astype(np.float32)
    out, notes = _inline_and_check(scripted, {"x": x})
    ops = Counter(n.op_type for n in out.proto.graph.node)
    assert ops[kept] == 1 and set(ops) <= {"Conv", "Relu", "ReduceMean", "Squeeze", "Gemm"}  # the condition's arithmetic is gone
    assert notes and all("at the data's shapes" in line for line in notes)


def test_without_data_a_shape_condition_stays(scripted):
    model = load_model(scripted)  # normalisation decides constants only
    assert any(n.op_type == "If" for n in model.proto.graph.node)
    with pytest.raises(ModelLoadError, match="branches on tensor shapes"):
        check_no_ifs_left(model.proto, "test")


# ---- graphs built here -------------------------------------------------------------------------
def _if_model(cond_nodes: list, cond: str, *, twice: bool = False) -> onnx.ModelProto:
    """x (N, 4) -> h = x @ W -> If(cond): then relu(h @ A) (through a nested If on a constant),
    else h * 2. `twice`: two such Ifs, summed; their branches use the same local names and
    initializer name, legal in sibling scopes but clashing once both are inlined."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "W")
    a = numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "A")  # a branch initializer
    inner_then = helper.make_graph([helper.make_node("Relu", ["t"], ["r"])], "inner_then", [],
                                   [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    inner_else = helper.make_graph([helper.make_node("Neg", ["t"], ["r2"])], "inner_else", [],
                                   [helper.make_tensor_value_info("r2", TensorProto.FLOAT, None)])
    then = helper.make_graph(
        [helper.make_node("MatMul", ["h", "A"], ["t"]),
         helper.make_node("Constant", [], ["inner_cond"], value=numpy_helper.from_array(np.array(True))),
         helper.make_node("If", ["inner_cond"], ["then_out"], then_branch=inner_then, else_branch=inner_else)],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)], [a])
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    other = helper.make_graph([helper.make_node("Mul", ["h", "two"], ["else_out"])], "else", [],
                              [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)], [two])
    ifs = [helper.make_node("If", [cond], ["y1" if twice else "y"], then_branch=then, else_branch=other)]
    if twice:
        ifs += [helper.make_node("If", [cond], ["y2"], then_branch=then, else_branch=other),
                helper.make_node("Add", ["y1", "y2"], ["y"])]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), *cond_nodes, *ifs],
        "if_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(tmp_path, proto) -> str:
    path = str(tmp_path / "m.onnx")
    onnx.save(proto, path)
    return path


def _x(n: int = 3) -> dict:
    return {"x": np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)}


@pytest.mark.parametrize("twice", [False, True])
def test_a_constant_condition_is_inlined_at_load_with_nested_ifs_and_clashing_names(tmp_path, twice):
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True)))
    path = _save(tmp_path, _if_model([c], "c", twice=twice))
    model = load_model(path)
    assert not any(n.op_type == "If" for n in model.proto.graph.node)  # both levels, at load
    out, notes = _inline_and_check(path, _x())
    assert "Relu" in {n.op_type for n in out.proto.graph.node}  # the nested then-branch
    weights = {t.name for t in out.proto.graph.initializer if t.name.endswith("A")}
    assert len(weights) == (2 if twice else 1)  # each branch's weight, now trainable, under its own name


def test_a_condition_on_input_values_stays_and_says_which_input(tmp_path):
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
             helper.make_node("Greater", ["s", "zero"], ["c"])]
    path = _save(tmp_path, _if_model(nodes, "c"))
    model = load_model(path)
    proto, notes = inline_ifs(model.proto, _x(), label="test")
    assert not notes
    with pytest.raises(ModelLoadError, match="values of input\\(s\\) x.*export the model for one branch"):
        check_no_ifs_left(proto, "test")


def test_a_condition_on_the_batch_size_stays(tmp_path):
    nodes = [helper.make_node("Shape", ["x"], ["shape"], end=1),
             helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array([1], np.int64))),
             helper.make_node("Equal", ["shape", "one"], ["eq"]),
             helper.make_node("Squeeze", ["eq"], ["c"])]
    path = _save(tmp_path, _if_model(nodes, "c"))
    model = load_model(path)
    proto, notes = inline_ifs(model.proto, _x(3), label="test")  # batch 3: else; batch 1: then
    assert not notes
    with pytest.raises(ModelLoadError, match="differs between the data's batch and a batch of 1"):
        check_no_ifs_left(proto, "test")


def test_inspect_counts_a_shape_if_as_decided_and_a_value_if_as_unsupported(scripted, tmp_path):
    from geta_onnx.inspect import inspect_model

    r = inspect_model(scripted)
    assert r["shape_decided_ifs"] and not r["unsupported_ops"]
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
             helper.make_node("Greater", ["s", "zero"], ["c"])]
    r = inspect_model(_save(tmp_path, _if_model(nodes, "c")))
    assert not r["shape_decided_ifs"] and [u["op_type"] for u in r["unsupported_ops"]] == ["If"]
