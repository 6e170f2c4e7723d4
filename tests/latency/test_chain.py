"""latency.chain: the layers one-layer times call slower in int8 (thin stems, slower_in_int8)
stay in float only when the whole int8 reference runs no slower so; a resumed run takes the
decision its checkpoint holds instead of timing again."""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.config import PruneConfig, QuantConfig, TrainConfig
from geta_onnx.geta import _quantized_and_timed
from geta_onnx.graph import load_model
from geta_onnx.latency import chain
from geta_onnx.latency.chain import float_candidates, timed_check
from geta_onnx.qadg import analyze
from geta_onnx.train import load_data
from tests.e2e.digits import write_problem

pytestmark = pytest.mark.slow

SPEED = PruneConfig(target_sparsity=None, target_speedup=1.2, group_divisible=8)
AT = (1, 8)  # (threads, batch) of the latency target


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """The digits CNN (its stem reads the 1-channel image: thin) and its data."""
    folder = tmp_path_factory.mktemp("chain")
    model_path, npz, _ = write_problem(folder)
    model = load_model(model_path)
    return model, load_data(f"npz:{npz}", model=model), analyze(model)


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """One latency table cache for this module's runs (measured once)."""
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path_factory.getbasetemp() / "chain-cache"))


def _planned(problem, saved=None, quant=QuantConfig()):
    """(plan, latency model, keep_float) of one planning pass under a latency budget."""
    model, data, qadg = problem
    keep = {}
    _, plan, latency, _ = _quantized_and_timed(model, data, None, qadg, keep, quant, SPEED,
                                               TrainConfig(progress=False), False, AT, "ort", saved)
    return plan, latency, keep


def _timings(monkeypatch, int8_ms, float_ms):
    calls = []

    def fake(protos, feeds, threads, log_line=print, rounds=2):
        calls.append(sorted(protos))
        assert all(p is not None for p in protos.values())
        return {"int8": int8_ms, "float": float_ms}
    monkeypatch.setattr(chain, "whole_ms", fake)
    return calls


@pytest.mark.parametrize("int8_ms, float_ms, kept", [(1.0, 2.0, "int8"), (2.0, 1.0, "float"), (1.0, 1.0, "float")])
def test_the_stem_runs_in_the_faster_form_of_the_whole_model(problem, monkeypatch, int8_ms, float_ms, kept):
    calls = _timings(monkeypatch, int8_ms, float_ms)
    plan, latency, keep = _planned(problem)
    assert calls == [["float", "int8"]]  # the two references, timed together
    stem = plan.layers[0]  # the digits CNN's first conv
    check = latency.float_check
    assert check["layers"][stem.node] == "thin" and check["kept"] == kept
    assert (check["int8_ms"], check["float_ms"]) == (int8_ms, float_ms)
    assert (stem.weight_quantizer is None) == (kept == "float") == (keep.get(stem.node) == "thin")
    timed = {la.spec.node for la in latency.layers}  # the latency model of the module that trains
    floated = {la.spec.node for la in latency.layers if not la.quantized}
    assert floated == ({n for n in check["layers"] if n in timed} if kept == "float" else set())
    assert latency.snapshot()["float_check"] == check


def test_a_resumed_run_takes_the_checkpointed_decision_without_timing(problem, monkeypatch):
    _timings(monkeypatch, 1.0, 2.0)
    plan, latency, _ = _planned(problem)
    saved = {"optimizer": {"qasso": {"latency": json.loads(json.dumps(latency.snapshot()))}}}
    _timings(monkeypatch, 2.0, 1.0)  # "the machine another day" would float it now
    monkeypatch.setattr(chain, "whole_ms", lambda *a, **k: pytest.fail("a resumed run timed the references"))
    plan2, latency2, _ = _planned(problem, saved)
    assert [la.weight_quantizer for la in plan2.layers] == [la.weight_quantizer for la in plan.layers]
    assert latency2.float_check == latency.float_check and latency2.float_check["kept"] == "int8"
    del saved["optimizer"]["qasso"]["latency"]["float_check"]  # a checkpoint from before the check: float, as then
    plan3, latency3, keep3 = _planned(problem, saved)
    assert plan3.layers[0].weight_quantizer is None and keep3[plan3.layers[0].node] == "thin"
    assert latency3.float_check["kept"] == "float" and "resumed" in latency3.float_check["why"]
    assert keep3 == latency3.float_check["layers"]


def test_the_rule_off_keeps_the_stem_quantized(problem, monkeypatch):
    """[quant] float_thin_convs = false: the stem is no candidate, even where float would win."""
    _timings(monkeypatch, 2.0, 1.0)
    plan, latency, keep = _planned(problem, quant=QuantConfig(float_thin_convs=False))
    stem = plan.layers[0]
    assert stem.weight_quantizer is not None and stem.node not in keep
    assert latency.float_check is None or stem.node not in latency.float_check["layers"]


def test_measured_for_real_the_faster_form_is_kept(problem):
    """No fake timing: whichever way this machine times the two files, the decision follows it."""
    plan, latency, _ = _planned(problem)
    check = latency.float_check
    assert check["int8_ms"] > 0 and check["float_ms"] > 0
    assert (check["kept"] == "float") == (check["float_ms"] <= check["int8_ms"])
    assert (plan.layers[0].weight_quantizer is None) == (check["kept"] == "float")


def test_candidates_exclude_layers_already_float_and_follow_the_rule_switch(problem):
    model, _, _ = problem
    plan, latency, _ = _planned(problem, quant=QuantConfig(float_thin_convs=False))
    stem = plan.layers[0].node
    assert float_candidates(model, plan, latency) == {stem: "thin", **{n: "latency" for n in latency.slower_in_int8()}}
    assert stem not in float_candidates(model, plan, latency, exclude={stem: "quality"})
    assert stem not in float_candidates(model, plan, latency, thin=False)


def _matmul_model(n: int):
    """x (B, 64) @ W (64, 64), n times in a row: more work, more time."""
    w = numpy_helper.from_array(np.eye(64, dtype=np.float32) * 0.5, "w")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", "w"], [f"h{i + 1}" if i < n - 1 else "y"])
             for i in range(n)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 64])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_timed_check_keeps_the_file_that_runs_faster():
    feeds = {"x": np.ones((64, 64), np.float32)}
    light, heavy = _matmul_model(1), _matmul_model(400)
    assert timed_check({"a": "thin"}, heavy, light, feeds, 1, log_line=lambda s: None)["kept"] == "float"
    assert timed_check({"a": "thin"}, light, heavy, feeds, 1, log_line=lambda s: None)["kept"] == "int8"
    untimed = timed_check({"a": "thin"}, None, light, feeds, 1)
    assert untimed["kept"] == "float" and "int8_ms" not in untimed
