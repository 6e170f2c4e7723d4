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
