"""`geta-onnx latency-table`: a model's latency table measured without data or training (on
the deployment target), with the keys compress looks up, the target's int8 probe, and clear
errors. tests/test_cli_compress.py checks that its keys are the ones a compress run of the
same model measures."""
from pathlib import Path

from click.testing import CliRunner

from geta_onnx.cli import main
from geta_onnx.latency.table import LatencyTable, Target

MODEL = Path(__file__).resolve().parents[2] / "samples" / "digits" / "digits_cnn.onnx"
FAST = ["--batch", "4", "--threads", "1", "--group-divisible", "64", "--no-progress"]


def test_the_table_is_measured_recorded_and_completed(tmp_path, monkeypatch):
    out = tmp_path / "target.json"
    result = CliRunner().invoke(main, ["latency-table", str(MODEL), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(out)
    assert table.target == Target.here(1, 4) and table.int8_saturates is False  # the probe (pinned by conftest)
    assert sorted(k.split("|")[0] for k in table.entries) == ["Conv", "Conv", "Gemm"]
    for key, entry in table.entries.items():  # widths on the unit up to the full ones, both forms timed
        full = {part[:2]: int(part[3:]) for part in key.split("|") if part[:3] in ("ci=", "co=")}
        assert entry.cin[-1] == full["ci"] and entry.cout[-1] == full["co"]
        assert all(w % 64 == 0 for w in entry.cin[:-1] + entry.cout[:-1])
        assert {"int8", "float"} <= set(entry.ms) and all((m >= 0).all() for m in entry.ms.values())
    assert f"wrote {out}: 3 layer signatures (3 measured now)" in result.output
    assert "compute full-range weights exactly" in result.output
    import geta_onnx.latency.measure as measure

    def refuse(*args, **kwargs):
        raise AssertionError("an entry the table holds was measured again")

    monkeypatch.setattr(measure, "measure_entry", refuse)
    again = CliRunner().invoke(main, ["latency-table", str(MODEL), "-o", str(out), *FAST])
    assert again.exit_code == 0 and "(0 measured now)" in again.output, again.output


def test_errors_name_the_file_or_option(tmp_path):
    other = tmp_path / "other.json"
    LatencyTable(Target("onnxruntime 0.0", "another cpu", 1, 4), 0.0, {}).save(other)
    before = other.read_text()
    result = CliRunner().invoke(main, ["latency-table", str(MODEL), "-o", str(other), *FAST])
    assert result.exit_code == 2 and "another target (another cpu" in result.output, result.output
    assert other.read_text() == before  # never mixed with this machine's times
    result = CliRunner().invoke(main, ["latency-table", str(MODEL), "-o", str(MODEL), *FAST])
    assert result.exit_code == 2 and "-o" in result.output
    assert MODEL.read_bytes()[:1] != b"{"  # the model is still the model
    result = CliRunner().invoke(main, ["latency-table", str(MODEL), "-o", str(tmp_path / "t.json"), "--shape",
                                       "nope=1x1x8x8", *FAST])
    assert result.exit_code == 2 and "nope" in result.output
    result = CliRunner().invoke(main, ["latency-table", str(tmp_path / "missing.onnx"), "-o",
                                       str(tmp_path / "t.json"), *FAST])
    assert result.exit_code in (1, 2) and "missing.onnx" in result.output and "Traceback" not in result.output
