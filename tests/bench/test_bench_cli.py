"""`geta-onnx bench`: onnxruntime latency in rotating blocks, sizes and ratios (never absolute speed)."""
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from geta_onnx.bench import measure_latency
from geta_onnx.cli import main
from geta_onnx.errors import ConfigError


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
    assert result.exit_code == 2 and fragment in result.output  # --shape is a usage error


@pytest.mark.parametrize("args", [["--batch", "0"], ["--batch", "1,x"], ["--repeats", "0"], []])
def test_bench_usage_errors(resnet_pair, args):
    models = [] if not args else [str(resnet_pair[0])]  # no model at all is a usage error too
    result = CliRunner().invoke(main, ["bench", *models, *args])
    assert result.exit_code == 2, result.output


def test_bench_missing_model(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1 and "nope.onnx" in result.output and "Traceback" not in result.output


class _Recorder:
    """A stand-in session: records which model ran and which sessions are alive."""

    alive: set = set()

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log
        _Recorder.alive.add(id(self))

    def run(self, outputs, feeds):
        assert _Recorder.alive == {id(self)}  # one live session while timing
        self.log.append(self.name)

    def __del__(self):
        _Recorder.alive.discard(id(self))


def test_models_run_in_blocks_one_live_session_at_a_time(monkeypatch):
    """Each model's timed runs come in BLOCK_ROUNDS consecutive blocks, each in a session of
    its own opened for the block (warm-up runs first) and closed after it, the first model of
    a round rotating; every model gets exactly `repeats` timings."""
    from geta_onnx.bench import latency

    log: list[str] = []
    monkeypatch.setattr(latency, "open_session", lambda path, threads: _Recorder(str(path), log))
    monkeypatch.setattr(latency, "SAMPLE_S", 0.0)  # one run per sample, one warm-up run (see the next test)
    monkeypatch.setattr(latency, "WARMUP_S", 0.0)
    times = latency._blocks(["A", "B"], 2, [{}, {}], repeats=10, warmup=1)
    assert times.shape == (2, 10)
    assert log.count("A") == log.count("B") == 10 + latency.BLOCK_ROUNDS  # timed + one warm-up per block
    switches = sum(1 for x, y in zip(log, log[1:]) if x != y)
    assert switches == latency.BLOCK_ROUNDS  # rounds A B | B A | A B ...: blocks join at round borders
    assert log[0] == "A" and not _Recorder.alive


class _Sleeper(_Recorder):
    def __init__(self, name: str, log: list, seconds: float):
        super().__init__(name, log)
        self.seconds = seconds

    def run(self, outputs, feeds):
        super().run(outputs, feeds)
        if self.seconds:
            time.sleep(self.seconds)


def test_a_microsecond_model_is_timed_over_many_runs_per_sample(monkeypatch):
    """A sample of a model that runs in microseconds is the mean of the consecutive runs that
    fill SAMPLE_S (one run's jitter is the size of the run); a model slower than SAMPLE_S
    keeps one run per sample. Times are per run either way."""
    from geta_onnx.bench import latency

    log: list[str] = []
    monkeypatch.setattr(latency, "open_session",
                        lambda path, threads: _Sleeper(path, log, 0.0 if path == "fast" else 0.004))
    times = latency._blocks(["fast", "slow"], 2, [{}, {}], repeats=5, warmup=1)
    assert log.count("fast") > 10 * log.count("slow")
    assert log.count("slow") >= 5 + latency.BLOCK_ROUNDS  # one run per sample, warm-up runs besides
    assert times[0].max() < latency.SAMPLE_S / 10  # per run, not per sample
    assert times[1].min() >= 0.004


def _state_model(path) -> str:
    """x [N, 4] and state [2, N, 4] (the batch on axis 1), sr an int64 scalar: y = Concat(x,
    state[0]) * sr ([N, 8]), so a state fed at another batch than x fails in the Concat."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    nodes = [n("Gather", ["state", "zero"], ["s0"], axis=0), n("Concat", ["x", "s0"], ["xs"], axis=1),
             n("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT), n("Mul", ["xs", "srf"], ["y"])]
    graph = helper.make_graph(nodes, "state", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_bench_feeds_input_values_and_a_state_batched_on_axis_1(tmp_path):
    from geta_onnx.bench.session import bench_feeds, read_model

    model = read_model(_state_model(tmp_path / "state.onnx"))
    feeds = bench_feeds(model, 32, {"x": (1, 4)}, values={"sr": "16000"})
    assert feeds["x"].shape == (32, 4) and feeds["state"].shape == (2, 32, 4)
    assert feeds["sr"].dtype == np.int64 and feeds["sr"].shape == () and int(feeds["sr"]) == 16000
    with pytest.raises(ConfigError, match="no input named rate"):
        bench_feeds(model, 1, values={"rate": "1"})


def test_bench_cli_input_value_and_shape_with_a_leading_1(tmp_path):
    # --shape x=1x4 is probed at the probe's batch with the state (not x at 1 beside a state at 2)
    path = _state_model(tmp_path / "state.onnx")
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", path, "--batch", "1,32", "--repeats", "2", "--warmup", "0",
                                       "--threads", "1", "--shape", "x=1x4", "--input-value", "sr=16000",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["models"][0]["latency_ms"]) == {"1", "32"}
    bad = CliRunner().invoke(main, ["bench", path, "--input-value", "sr=fast"])
    assert bad.exit_code == 2 and "give a number" in bad.output
