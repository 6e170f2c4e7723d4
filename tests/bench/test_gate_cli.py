"""`geta-onnx gate` and the report schema: budgets met, missed, and broken reports."""
import json

import pytest
from click.testing import CliRunner

from geta_onnx.bench import ReportError, build_report, validate_report
from geta_onnx.cli import main


def _write(tmp_path, report) -> str:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return str(path)


@pytest.fixture
def report():
    return build_report(latency_original={1: 3.0, 32: 24.0}, latency_compressed={1: 1.5, 32: 6.0},
                        accuracy_original=0.92, accuracy_compressed=0.915, relative_bops=0.06,
                        original="model.onnx", compressed="out.onnx")


def test_build_report_schema(report):
    assert report["speedup"] == {"1": 2.0, "32": 4.0}  # original / compressed, string batch keys
    assert report["latency_ms"]["compressed"] == {"1": 1.5, "32": 6.0} and report["schema"] == 1
    assert validate_report(json.loads(json.dumps(report))) == report  # survives a JSON round trip


def test_gate_passes(report, tmp_path):
    result = CliRunner().invoke(main, ["gate", _write(tmp_path, report), "--max-accuracy-drop", "0.01",
                                       "--min-speedup", "1.8", "--max-relative-bops", "0.1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4 and all(line.startswith("PASS") for line in lines)
    assert "0.50 points" in lines[0] and "2.00x >= 1.80x" in result.output


def test_gate_fails_each_budget(report, tmp_path):
    path = _write(tmp_path, report)
    result = CliRunner().invoke(main, ["gate", path, "--max-accuracy-drop", "0.001", "--min-speedup", "3",
                                       "--max-relative-bops", "0.05"])
    assert result.exit_code == 1
    status = {line.split("  ")[1].strip(): line[:4] for line in result.output.splitlines()}
    assert status == {"accuracy drop": "FAIL", "speedup @ batch 1": "FAIL", "speedup @ batch 32": "PASS",
                      "relative BOPs": "FAIL"}
    ok = CliRunner().invoke(main, ["gate", path, "--max-accuracy-drop", "0.01", "--min-speedup", "3",
                                   "--batch", "32"])  # only batch 32 is judged
    assert ok.exit_code == 0, ok.output


def test_gate_fidelity_report(tmp_path):
    report = build_report(latency_original={1: 2.0}, latency_compressed={1: 1.0}, fidelity=("agreement", 0.995))
    path = _write(tmp_path, report)
    result = CliRunner().invoke(main, ["gate", path, "--max-accuracy-drop", "0.01", "--min-speedup", "1.5"])
    assert result.exit_code == 0 and "fidelity loss (1 - agreement)" in result.output
    result = CliRunner().invoke(main, ["gate", path, "--max-accuracy-drop", "0.001", "--min-speedup", "1.5"])
    assert result.exit_code == 1


@pytest.mark.parametrize("drop, fragment", [
    ("latency_ms", "missing key 'latency_ms.original'"),
    ("speedup", "missing key 'speedup'"),
    ("accuracy", "missing key 'accuracy' (or 'fidelity')"),
])
def test_gate_missing_key(report, tmp_path, drop, fragment):
    del report[drop]
    result = CliRunner().invoke(main, ["gate", _write(tmp_path, report), "--max-accuracy-drop", "0.01",
                                       "--min-speedup", "1"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and fragment in result.output and "report.json" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_gate_unreadable_and_bad_values(report, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path, fragment in [(str(bad), "not valid JSON"), (str(tmp_path / "none.json"), "no such report")]:
        result = CliRunner().invoke(main, ["gate", path, "--max-accuracy-drop", "0.01", "--min-speedup", "1"])
        assert result.exit_code == 1 and fragment in result.output
    report["accuracy"]["original"] = 92.1  # percent instead of a fraction
    with pytest.raises(ReportError, match="fractions of 1"):
        validate_report(report)


def test_gate_option_errors(report, tmp_path):
    path = _write(tmp_path, report)
    result = CliRunner().invoke(main, ["gate", path, "--min-speedup", "1"])  # required budget missing
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["gate", path, "--max-accuracy-drop", "0.01", "--min-speedup", "1",
                                       "--batch", "8"])
    assert result.exit_code == 1 and "no speedup measured at batch 8" in result.output
    del report["relative_bops"]
    result = CliRunner().invoke(main, ["gate", _write(tmp_path, report), "--max-accuracy-drop", "0.01",
                                       "--min-speedup", "1", "--max-relative-bops", "0.1"])
    assert result.exit_code == 1 and "relative_bops" in result.output


def test_gate_takes_the_guard_tolerance_by_default(report, tmp_path):
    """Without --max-accuracy-drop the gate judges the export by the tolerance the run was
    guarded to; a report of an unguarded run needs the option (a usage error, exit 2)."""
    path = _write(tmp_path, report)
    result = CliRunner().invoke(main, ["gate", path, "--min-speedup", "1.5"])
    assert result.exit_code == 2 and "no quality guard" in result.output and "Traceback" not in result.output
    guarded = _write(tmp_path, {**report, "guard": {"metric": "accuracy", "tolerance": 0.004, "baseline": 0.92,
                                                    "checks": []}})
    result = CliRunner().invoke(main, ["gate", guarded, "--min-speedup", "1.5"])
    assert result.exit_code == 1 and "the tolerance of the run's quality guard" in result.output  # 0.5 > 0.4 points
    assert "FAIL  accuracy drop" in result.output
    assert "no quality-guard check scored" not in result.output
    unseen = {"split": "eval", "samples": 500, "drop": 0.003, "action": "shipped",
              "unseen": {"samples": 300, "drop": 0.007}}
    loose = _write(tmp_path, {**report, "guard": {"metric": "accuracy", "tolerance": 0.01, "baseline": 0.92,
                                                  "checks": [], "exported": unseen}})
    result = CliRunner().invoke(main, ["gate", loose, "--min-speedup", "1.5"])
    assert result.exit_code == 0  # judged on the whole split, as before; the unseen samples' drop is said
    assert "on the 300 held-out samples no quality-guard check scored, the drop is +0.0070" in result.output
    held = _write(tmp_path, {**report, "guard": {"metric": "accuracy", "tolerance": 0.01, "baseline": 0.97,
                                                 "checks": [], "exported": unseen, "held_out": "train",
                                                 "fitted": {"baseline_eval": 0.93, "note": "the original fitted"}}})
    result = CliRunner().invoke(main, ["gate", held, "--min-speedup", "1.5"])
    assert result.exit_code == 0 and "chose the structure on training samples held out for them" in result.output
    assert "note: the original fitted" in result.output
