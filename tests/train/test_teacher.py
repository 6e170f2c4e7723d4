"""The distillation teacher: onnxruntime on the original graph gives the bridged module's
outputs (within float rounding), and the bridged copy stands in where onnxruntime cannot."""
import numpy as np
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import to_torch
from geta_onnx.graph import from_proto, load_model
from geta_onnx.train import make_loss
from geta_onnx.train.teacher import OrtTeacher, teacher_for
from samples.zoo import get
from tests.helpers import make_model
from tests.zoo_cache import zoo_path

# BatchNorm CNN; int64 ids + an attention mask; Resize + GroupNorm; a recurrent net
CASES = ["resnet", "bert", "fpn", "lstm"]


def assert_same_outputs(got, want):
    """float outputs within 1e-4 of the output's scale (onnxruntime fuses and reorders sums)."""
    got, want = (x if isinstance(x, tuple) else (x,) for x in (got, want))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        tol = 1e-4 * max(1.0, float(w.abs().max()))
        assert torch.allclose(g, w, rtol=1e-4, atol=tol), float((g - w).abs().max())


@pytest.mark.parametrize("name", CASES)
def test_onnxruntime_teacher_gives_the_bridged_outputs(name):
    model = load_model(zoo_path(name, "legacy"))
    module = to_torch(model).eval()
    teacher = teacher_for(module, model)
    assert isinstance(teacher, OrtTeacher) and teacher.kind == "onnxruntime"
    for batch in (1, 5):  # the session takes any batch the graph's dims allow
        inputs = tuple(get(name).example_inputs(batch, seed=batch).values())
        with torch.no_grad():
            want = module(*inputs)
        assert_same_outputs(teacher(*inputs), want)


def test_several_outputs_come_back_as_a_tuple_in_graph_order():
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["r"]),
                        helper.make_node("Shape", ["r"], ["s"])],
                       {"x": np.zeros((2, 4), np.float32)}, ["r", "y", "s"], {"w": w})
    model = from_proto(proto)
    module = to_torch(model)
    x = torch.randn(2, 4)
    got = teacher_for(module, model)(x)
    with torch.no_grad():
        assert_same_outputs(got, module(x))
    assert got[2].dtype == torch.int64 and got[2].tolist() == [2, 3]


def test_inputs_of_another_dtype_are_cast_to_the_graph_input_type():
    model = load_model(zoo_path("bert", "legacy"))
    module = to_torch(model).eval()
    ids, mask = get("bert").example_inputs(3, seed=0).values()
    teacher = teacher_for(module, model)
    assert_same_outputs(teacher(ids.to(torch.int32), mask.to(torch.int32)), teacher(ids, mask))


def test_the_bridged_copy_stands_in_where_onnxruntime_cannot(monkeypatch):
    model = load_model(zoo_path("resnet", "legacy"))
    module = to_torch(model)
    for kwargs in ({"model": None}, {"model": model, "device": "cuda"}):  # cuda: decided, never touched
        t = teacher_for(module, **kwargs)
        assert isinstance(t, torch.nn.Module) and t is not module and t.kind == "torch"
    module.per_sample = True
    assert teacher_for(module, model).kind == "torch"
    module.per_sample = False
    monkeypatch.setenv("GETA_ONNX_TEACHER", "torch")
    assert teacher_for(module, model).kind == "torch"
    monkeypatch.delenv("GETA_ONNX_TEACHER")

    def refuse(*a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : cannot load")
    monkeypatch.setattr("onnxruntime.InferenceSession", refuse)
    assert teacher_for(module, model).kind == "torch"


def test_training_the_student_never_moves_the_onnxruntime_teacher():
    model = load_model(zoo_path("resnet", "legacy"))
    module = to_torch(model)
    loss = make_loss("kd", has_labels=False, module=module, model=model)
    x = tuple(get("resnet").example_inputs(4, seed=0).values())
    before = loss.teacher_outputs(x).clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        (loss(module(*x), None, x) + module(*x).square().mean()).backward()  # push the student away
        opt.step()
    assert torch.equal(loss.teacher_outputs(x), before)
    assert not torch.equal(module(*x), before)


@pytest.mark.parametrize("saturates", [True, False])
def test_an_int8_original_runs_as_its_own_qdq_math_where_the_kernels_saturate_it(monkeypatch, saturates):
    """An original that is already a QDQ model with full-range int8 weights (the saturation
    probe's conv, weights at 127): on a CPU whose fused int8 kernels saturate such weights the
    onnxruntime teacher runs unfused, so it gives the bridged module's outputs (the QDQ math)
    within one output step on every CPU; elsewhere it runs fused, as every teacher does."""
    import onnx

    from geta_onnx.quant import weight_range

    monkeypatch.setattr(weight_range, "int8_saturates", lambda: saturates)
    model = from_proto(onnx.load_from_string(weight_range._probe_model(127)))
    module = to_torch(model).eval()
    teacher = teacher_for(module, model)
    assert isinstance(teacher, OrtTeacher) and teacher.unfused is saturates
    if saturates:
        x = torch.from_numpy(np.random.default_rng(1).uniform(3.0, 5.1, (1, 32, 6, 6)).astype(np.float32))
        with torch.no_grad():
            want = module(x)
        assert float((teacher(x) - want).abs().max()) <= weight_range._Y_SCALE  # one output step
