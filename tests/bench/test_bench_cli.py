"""`geta-onnx bench`: interleaved onnxruntime latency, sizes and ratios (never absolute speed)."""
import json

import pytest
from click.testing import CliRunner

from geta_onnx.bench import measure_latency
from geta_onnx.cli import main


def test_bench_two_models_json(resnet_pair, tmp_path):
    fp32, int8 = resnet_pair
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(fp32), str(int8), "--batch", "1,4", "--batch", "2",
                                       "--repeats", "3", "--warmup", "1", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["batches"] == [1, 4, 2] and doc["threads"] == 1 and doc["repeats"] == 3
    first, second = doc["models"]
    assert first["model"] == str(fp32) and second["model"] == str(int8)
    for r in doc["models"]:
        assert list(r["latency_ms"]) == ["1", "4", "2"]
        for lat in r["latency_ms"].values():
            assert 0 < lat["min"] <= lat["p50"] <= lat["p90"]
    for b in ("1", "4", "2"):  # ratios against the FIRST model
        assert first["speedup"][b] == 1.0
        assert second["speedup"][b] == pytest.approx(first["latency_ms"][b]["p50"] / second["latency_ms"][b]["p50"])
    assert second["size_bytes"] < first["size_bytes"]  # int8 weights
    assert second["size_ratio"] == pytest.approx(second["size_bytes"] / first["size_bytes"])
    assert "resnet.int8.onnx" in result.output and "speedup" in result.output


def test_measure_latency_shape_override(resnet_pair):
    fp32, _ = resnet_pair
    # the first dim of a --shape override is replaced by the batch size
    (r,) = measure_latency([fp32], [3], threads=1, repeats=2, warmup=0, shapes={"image": (1, 3, 32, 32)})
    assert set(r["latency_ms"]) == {"3"} and r["speedup"] == {"3": 1.0}


@pytest.mark.parametrize("args, fragment", [
    (["--shape", "pixels=1x3x32x32"], "no input named pixels"),
    (["--shape", "image=1x3x32"], "has 4 dims"),
])
def test_bench_shape_errors(resnet_pair, args, fragment):
    fp32, _ = resnet_pair
    result = CliRunner().invoke(main, ["bench", str(fp32), "--repeats", "1", *args])
    assert result.exit_code == 1 and fragment in result.output


@pytest.mark.parametrize("args", [["--batch", "0"], ["--batch", "1,x"], ["--repeats", "0"], []])
def test_bench_usage_errors(resnet_pair, args):
    models = [] if not args else [str(resnet_pair[0])]  # no model at all is a usage error too
    result = CliRunner().invoke(main, ["bench", *models, *args])
    assert result.exit_code == 2, result.output


def test_bench_missing_model(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1 and "nope.onnx" in result.output and "Traceback" not in result.output
