"""[quant] reduce_range (quant/weight_range.py): the probe of onnxruntime's int8 kernels, the
decision of "auto", the bit bounds it sets and the report line.

The suite pins the probe's answer to "does not saturate" (tests/conftest.py) so that every CPU
trains the same grids; these tests call the real probe (`_probe_error`) or set its answer."""
from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from geta_onnx.bench.render import render_markdown
from geta_onnx.bench.report import build_report
from geta_onnx.config import QuantConfig
from geta_onnx.errors import ConfigError
from geta_onnx.preflight import prepare_run
from geta_onnx.quant import weight_range
from geta_onnx.runs import changed_keys
from geta_onnx.settings import Settings

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits"


def test_a_seven_bit_weight_grid_runs_exactly_in_onnxruntimes_fused_int8_conv(tmp_path):
    """What reduce_range relies on, on whatever CPU runs the suite: with |q| <= 63 the fused
    int8 kernel computes the QDQ model's own math (within one output step). The probe does run
    the fused kernel: the optimized graph is a QLinearConv."""
    assert weight_range._probe_error(2 ** (weight_range.REDUCED_BITS - 1) - 1) <= 1.0
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(weight_range._probe_model(127), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops, ops


@pytest.mark.parametrize("saturates, profile, decided", [
    (True, "ort", "on"), (False, "ort", "off"), (True, "tensorrt", "off"), (False, "tensorrt", "off")])
def test_auto_is_decided_by_the_probe_for_the_ort_profile(monkeypatch, saturates, profile, decided):
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: saturates)
    assert weight_range.resolve(QuantConfig(), profile).reduce_range == decided


@pytest.mark.parametrize("setting", ["on", "off"])
def test_on_and_off_are_kept_whatever_the_probe_says(monkeypatch, setting):
    for saturates in (True, False):
        monkeypatch.setattr(weight_range, "int8_saturates", lambda s=saturates: s)
        assert weight_range.resolve(QuantConfig(reduce_range=setting), "ort").reduce_range == setting


def test_on_with_the_tensorrt_profile_is_a_usage_error():
    with pytest.raises(ConfigError, match="quant.reduce_range"):
        weight_range.resolve(QuantConfig(reduce_range="on"), "tensorrt")


def test_an_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="reduce_range"):
        QuantConfig(reduce_range="yes")


@pytest.mark.parametrize("bits, setting, held", [
    ((4, 8), "on", (4, 7)), ((8, 8), "on", (7, 7)), ((2, 4), "on", (2, 4)), ((4, 16), "on", (4, 7)),
    ((4, 8), "off", (4, 8)), ((8, 8), "auto", (8, 8))])
def test_the_weight_bounds_are_capped_at_seven_bits_when_on(bits, setting, held):
    assert weight_range.weight_bits(QuantConfig(weight_bits=bits, reduce_range=setting)) == held


def test_a_run_records_the_decided_setting(monkeypatch):
    """prepare_run (compress, train, torchrun) hands on and fingerprints "on" / "off", never
    "auto": a resume on a CPU that decides otherwise is refused (its fingerprint differs)
    instead of training on another grid."""
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: True)
    *_, fingerprint, batch, settings = prepare_run(SAMPLE / "digits_cnn.onnx", f"npz:{SAMPLE / 'digits.npz'}",
                                                   Settings(), held_out=True)
    assert settings.quant.reduce_range == "on" and fingerprint["settings"]["quant"]["reduce_range"] == "on"
    assert any("7-bit grid" in note for note in batch.notes)  # compress prints it before training
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: False)
    *_, other, batch, settings = prepare_run(SAMPLE / "digits_cnn.onnx", f"npz:{SAMPLE / 'digits.npz'}",
                                             Settings(), held_out=True)
    assert settings.quant.reduce_range == "off" and changed_keys(fingerprint, other) == [
        'settings.quant.reduce_range ("on" -> "off")']
    assert not any("7-bit grid" in note for note in batch.notes)


def test_the_report_says_the_weights_use_the_seven_bit_grid():
    line = weight_range.describe()
    precision = {"shipped": "int8", "why": "faster", "weight_grid": line,
                 "candidates": {"int8": {"speedup": {"32": 2.0}, "size_bytes": 1000}}}
    report = build_report(latency_original={"32": 2.0}, latency_compressed={"32": 1.0},
                          fidelity=("agreement", 0.99), precision=precision)
    md = render_markdown(report)
    assert "Weights: 8-bit weights train and deploy on a 7-bit grid (|q| <= 63" in md
    shipped_float = render_markdown({**report, "precision": {**precision, "shipped": "float"}})
    assert "Weights:" not in shipped_float  # the float twin has no int8 weights


def _table(path, cpu: str, saturates: bool | None) -> str:
    from geta_onnx.latency.table import LatencyTable, Target

    LatencyTable(Target("onnxruntime 0.0", cpu, 2, 32), 0.0, {}, saturates).save(path)
    return str(path)


@pytest.mark.parametrize("here", [True, False])
@pytest.mark.parametrize("recorded", [True, False])
def test_auto_is_decided_for_the_latency_tables_target_when_it_records_its_probe(tmp_path, monkeypatch, here,
                                                                                  recorded):
    """A table measured on the deployment target decides "auto" for it, whatever this CPU's
    probe says; a table without the record (or no table file yet) leaves it to this CPU."""
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: here)
    table = _table(tmp_path / "target.json", "the target cpu", recorded)
    assert weight_range.resolve(QuantConfig(), "ort", table).reduce_range == ("on" if recorded else "off")
    assert weight_range.resolve(QuantConfig(), "tensorrt", table).reduce_range == "off"
    unrecorded = _table(tmp_path / "old.json", "the target cpu", None)
    assert weight_range.resolve(QuantConfig(), "ort", unrecorded).reduce_range == ("on" if here else "off")
    assert weight_range.resolve(QuantConfig(), "ort", str(tmp_path / "to_measure.json")).reduce_range == (
        "on" if here else "off")
    assert weight_range.resolve(QuantConfig(reduce_range="off"), "ort", table).reduce_range == "off"


def test_the_decision_note_names_the_tables_target_or_why_it_cannot_decide(tmp_path):
    from geta_onnx.latency.table import cpu_name

    other = _table(tmp_path / "other.json", "the target cpu", False)
    note = weight_range.decision_note("auto", "ort", other)
    assert "decided for the latency table's target (the target cpu)" in note and "exactly" in note
    assert "saturate" in weight_range.decision_note("auto", "ort", _table(tmp_path / "s.json", "the target cpu", True))
    old = weight_range.decision_note("auto", "ort", _table(tmp_path / "old.json", "the target cpu", None))
    assert "does not record" in old and "decided on this CPU" in old and "--reduce-range" in old
    assert weight_range.decision_note("auto", "ort", _table(tmp_path / "here.json", cpu_name(), False)) is None
    for given, profile in (("on", "ort"), ("off", "ort"), ("auto", "tensorrt")):
        assert weight_range.decision_note(given, profile, other) is None
    assert weight_range.decision_note("auto", "ort", "") is None
    assert weight_range.decision_note("auto", "ort", str(tmp_path / "missing.json")) is None


@pytest.mark.parametrize("decided, recorded, here, unfused", [
    ("off", False, True, True),    # full-range weights for a target that computes them, on a CPU that does not
    ("off", False, False, False),  # this CPU computes them too: its fused kernels score
    ("off", True, True, False),    # the target saturates as well: what this CPU scores is what it runs
    ("off", None, True, False),    # no record: nothing says the target differs from this CPU
    ("on", False, True, False)])   # 7-bit weights run exactly everywhere
def test_compress_scores_the_int8_file_unfused_only_for_a_target_that_computes_it(tmp_path, monkeypatch, decided,
                                                                                   recorded, here, unfused):
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: here)
    table = _table(tmp_path / "target.json", "the target cpu", recorded)
    assert weight_range.scored_unfused(QuantConfig(reduce_range=decided), table) is unfused
    assert weight_range.scored_unfused(QuantConfig(reduce_range=decided), "") is False


def test_a_damaged_table_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "t.json"
    _table(path, "cpu", False)
    path.write_text(path.read_text().replace("false", '"no"'))
    with pytest.raises(ConfigError, match="t.json.*int8_saturates"):
        weight_range.resolve(QuantConfig(), "ort", str(path))


def test_the_unfused_session_runs_the_qdq_math_not_the_fused_int8_kernel(tmp_path):
    """evaluate_onnx(unfused=True) / `eval --unfused`: onnxruntime's basic optimizations leave
    the probe's DequantizeLinear / Conv / QuantizeLinear unfused, so its output is the QDQ
    model's own math on every CPU (as with no optimization at all, within one output step)."""
    import numpy as np

    from geta_onnx.bench.session import open_session, session_options

    path = tmp_path / "probe.onnx"
    path.write_bytes(weight_range._probe_model(127))
    options = session_options(1, unfused=True)
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert "Conv" in ops and "QLinearConv" not in ops, ops
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(1).uniform(3.0, 5.1, (1, 32, 6, 6)).astype(np.float32)
    unfused = open_session(path, 1, unfused=True).run(None, {"x": x})[0]
    qdq_math = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(unfused - qdq_math).max() <= weight_range._Y_SCALE
