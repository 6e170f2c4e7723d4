"""`compress` on the kinds of files users bring that broke it (issue: real-world models), each
built here: a torch export without dynamic axes (static batch 1), one whose batch cannot be
made dynamic (trained one sample per forward), and an opset-11 graph with per-channel
weights (the export upgrades it to opset 13, never writes a file the checker rejects)."""
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from geta_onnx.cli import main
from tests.helpers import export_scripted_cnn

pytestmark = pytest.mark.slow


class StaticCNN(nn.Module):
    def __init__(self, mix: bool = False):
        super().__init__()
        self.mix = mix
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        y = self.fc(x.reshape(x.shape[0], -1))
        return y.sum(0, keepdim=True) if self.mix else y  # mix: a sum over the batch axis, identity at batch 1


def _export(tmp_path, name: str, opset: int = 17, mix: bool = False):
    torch.manual_seed(0)
    net = StaticCNN(mix).eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"])  # no dynamic_axes: batch 1 everywhere
    x = np.random.default_rng(0).normal(size=(160, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    return path, tmp_path / "x.npz"


def _compress(tmp_path, model, data, *extra, config: str = ""):
    out = tmp_path / "out" / "small.onnx"
    settings = tmp_path / "run.toml"
    settings.write_text("[prune]\ngroup_divisible = 4\n" + config)  # 16-channel convs: groups of 4 can go
    res = CliRunner().invoke(main, ["compress", str(model), "--data", f"npz:{data}", "-o", str(out), "--steps", "12",
                                    "--batch", "1", "--no-plots", "--no-progress", "--skip-data-check",
                                    "--config", str(settings), *extra])
    assert res.exit_code == 0, res.output
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    report = json.loads(out.with_name("small.report.json").read_text())
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return proto, report, dims, res.output


def test_static_batch_export_trains_batched_and_keeps_its_signature(tmp_path):
    model, data = _export(tmp_path, "static")
    proto, report, dims, output = _compress(tmp_path, model, data)
    assert "static batch 1 made dynamic" in report["batch"] and "static batch 1 made dynamic" in output
    assert dims == [1, 3, 8, 8]  # the user's signature
    assert list(report["latency_ms"]["original"]) == ["1"]  # the original takes batch 1 only
    assert report["groups"]["removed"] > 0


def test_latency_table_of_a_static_batch_export_is_timed_at_batch_1(tmp_path):
    """compress times a model whose inputs take a static batch of 1 at batch 1 (it keeps the
    signature), so `latency-table` measures that target by default."""
    from geta_onnx.latency.table import LatencyTable

    model, _ = _export(tmp_path, "static")
    out = tmp_path / "table.json"
    res = CliRunner().invoke(main, ["latency-table", str(model), "-o", str(out), "--threads", "1",
                                    "--group-divisible", "32", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert LatencyTable.load(out).target.batch == 1 and "batch 1;" in res.output


def test_dynamic_batch_option_writes_a_dynamic_input(tmp_path):
    model, data = _export(tmp_path, "static")
    proto, report, dims, _ = _compress(tmp_path, model, data, "--dynamic-batch")
    assert dims[0] == "batch" and dims[1:] == [3, 8, 8]
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    assert ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0].shape[0] == 4


def test_unprovable_static_batch_trains_one_sample_per_forward(tmp_path):
    model, data = _export(tmp_path, "mixing", mix=True)
    proto, report, dims, _ = _compress(tmp_path, model, data)
    assert "static batch 1 kept" in report["batch"] and "micro-batches of 1" in report["batch"]
    assert dims == [1, 3, 8, 8]


def test_opset_11_per_channel_export_is_upgraded_to_13(tmp_path):
    model, data = _export(tmp_path, "old", opset=11)
    # the int8 export is what needs opset 13 (the float twin, if faster, would need no upgrade)
    proto, report, dims, _ = _compress(tmp_path, model, data, "--int8-only", config="[quant]\nper_channel = true\n")
    assert next(o.version for o in proto.opset_import if o.domain == "") == 13
    assert report["precision"]["shipped"] == "int8" and report["precision"]["why"] == "--int8-only"
    assert set(report["precision"]["candidates"]) == {"int8"}  # the float twin was not even timed
    assert any(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute) for n in proto.graph.node)


class PoolCNN(nn.Module):
    """Five stride-2 convs and AvgPool2d(7): runs from 193x193 pixels up, not at the 8 or 128
    that fixed defaults picked. Exported with dims named N / H / W (N is a sympy function)."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for _ in range(5):
            layers += [nn.Conv2d(c, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
            c = 8
        self.f, self.pool, self.fc = nn.Sequential(*layers), nn.AvgPool2d(7), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.f(x)).flatten(1))


@pytest.fixture(scope="module")
def pool_cnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PoolCNN().eval(), (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    return path


def test_verify_and_bench_choose_sizes_the_model_runs_at(pool_cnn):
    res = CliRunner().invoke(main, ["verify", str(pool_cnn)])
    assert res.exit_code == 0, res.output
    assert "inputs: x=2x3x224x224" in res.output and "FAIL" not in res.output
    res = CliRunner().invoke(main, ["bench", str(pool_cnn), "--repeats", "2", "--warmup", "0"])
    assert res.exit_code == 0, res.output
    assert "inputs: x=" in res.output


def test_verify_at_a_shape_the_bridge_cannot_run_fails_in_one_line(pool_cnn):
    res = CliRunner().invoke(main, ["verify", str(pool_cnn), "--shape", "x=1x3x8x8"])
    assert res.exit_code == 1
    assert "FAIL  bridge parity" in res.output and "Output size is too small" in res.output
    assert "Traceback" not in res.output and "internal error" not in res.output


def test_an_if_on_a_shape_is_decided_on_the_data_and_gone_from_the_output(tmp_path):
    model = tmp_path / "scripted.onnx"
    export_scripted_cnn(model, classes=5)
    assert any(n.op_type == "If" for n in onnx.load(str(model)).graph.node)
    x = np.random.default_rng(0).normal(size=(160, 4, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    proto, report, dims, output = _compress(tmp_path, model, tmp_path / "x.npz")
    assert not any(n.op_type == "If" for n in proto.graph.node)
    assert report["branches"] and "else branch inlined" in report["branches"][0]
    assert "else branch inlined" in output
    assert dims == ["batch", 4, "time"]
    assert report["groups"]["removed"] > 0


def _two_input_model(tmp_path, second: list) -> tuple:
    """x [N, 4] @ W + a second input of dims `second` (broadcast): a recurrent state [2, N, 4]
    or a scalar [] that the data cannot feed along axis 0."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "s"], ["y"])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, second)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "N", 4] if second else ["N", 4])], [w])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(128, 4)).astype(np.float32),
             s=np.float32(1.0) if not second else rng.normal(size=(128, 2, 4)).astype(np.float32))
    return path, tmp_path / "d.npz"


def test_a_scalar_input_needs_its_value_and_then_compresses_keeping_it(tmp_path):
    """A scalar input (a sample rate) cannot come from the data: a one-line usage error names
    `--input-value`; with the value given, the model is compressed for it and the output still
    takes the input (graph/interface.py)."""
    model, data = _two_input_model(tmp_path, [])
    args = ["compress", str(model), "--data", f"npz:{data}", "-o", str(tmp_path / "o.onnx"), "--steps", "4",
            "--no-plots", "--no-progress", "--skip-data-check", "--batch", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "input 's' is a scalar (rank 0)" in res.output and "--input-value s=VALUE" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, args + ["--input-value", "s=0.5"])
    assert res.exit_code == 0, res.output
    assert "input 's' fixed at 0.5" in res.output
    proto = onnx.load(str(tmp_path / "o.onnx"))
    assert [i.name for i in proto.graph.input] == ["x", "s"]
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    y, = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x, "s": np.array(0.5, dtype=np.float32)})
    assert y.shape == (3, 4)


def test_a_state_with_the_batch_on_axis_1_is_fed_batch_first_and_keeps_its_layout(tmp_path):
    """A recurrent state [2, N, 4] comes from the data batch-first ([samples, 2, 4]); the output
    [2, N, 4] is scored batch-first; the compressed file takes and gives the original layouts."""
    model, data = _two_input_model(tmp_path, [2, "N", 4])
    res = CliRunner().invoke(main, ["compress", str(model), "--data", f"npz:{data}", "-o", str(tmp_path / "o.onnx"),
                                    "--steps", "4", "--no-plots", "--no-progress", "--skip-data-check", "--batch", "1"])
    assert res.exit_code == 0, res.output
    assert "input 's' carries the batch on axis 1" in res.output
    proto = onnx.load(str(tmp_path / "o.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dims = lambda vi: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert [dims(vi) for vi in list(proto.graph.input) + list(proto.graph.output)] == [["N", 4], [2, "N", 4],
                                                                                      [2, "N", 4]]
    rng = np.random.default_rng(3)
    x, state = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(2, 3, 4)).astype(np.float32)
    got, = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x, "s": state})
    want, = ort.InferenceSession(str(model)).run(None, {"x": x, "s": state})
    assert got.shape == want.shape == (2, 3, 4)
    np.testing.assert_allclose(got - want, np.broadcast_to((got - want)[:1], got.shape), atol=0.05)  # same h per row


def _sklearn_style_model(tmp_path):
    """What skl2onnx writes for StandardScaler + MLPClassifier (opset 21): ai.onnx.ml Scaler,
    MatMul / Add / Relu, Softmax, then ArgMax -> ArrayFeatureExtractor(classes) -> an int64
    `label` output FIRST and `probabilities` second; the batch dim has neither value nor name."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(8, 16)) * 0.5, "b1": rng.normal(size=(1, 16)) * 0.1,
             "w2": rng.normal(size=(16, 3)) * 0.5, "b2": np.zeros((1, 3))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    inits += [numpy_helper.from_array(np.array([10, 20, 30], dtype=np.int64), "classes"),
              numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")]
    n = helper.make_node
    nodes = [n("Scaler", ["X"], ["xs"], domain="ai.onnx.ml", offset=[0.5] * 8, scale=[2.0] * 8),
             n("MatMul", ["xs", "w1"], ["h"]), n("Add", ["h", "b1"], ["h1"]), n("Relu", ["h1"], ["h2"]),
             n("MatMul", ["h2", "w2"], ["z"]), n("Add", ["z", "b2"], ["z1"]), n("Softmax", ["z1"], ["probabilities"]),
             n("ArgMax", ["probabilities"], ["am"], axis=1),
             n("ArrayFeatureExtractor", ["classes", "am"], ["afe"], domain="ai.onnx.ml"),
             n("Reshape", ["afe", "flat"], ["label"])]
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 8])
    graph = helper.make_graph(nodes, "skl", [x_info], [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                              helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 1)],
                              ir_version=10)
    path = tmp_path / "skl.onnx"
    onnx.save(proto, str(path))
    x = rng.uniform(0, 1, size=(200, 8)).astype(np.float32)
    np.savez(tmp_path / "skl.npz", x=x)
    return path, tmp_path / "skl.npz", x


def test_a_sklearn_export_with_ml_ops_and_an_int_label_first_compresses(tmp_path):
    """Before: the ai.onnx.ml ops were unsupported, shapes stopped at the Scaler (no group was
    found), and the int64 label output stopped compress. Now the loss reads `probabilities`
    (logged), the groups are the 16 hidden units, and the output keeps both outputs and the
    ml ops at opset 21."""
    model, data, x = _sklearn_style_model(tmp_path)
    res = CliRunner().invoke(main, ["verify", str(model)])
    assert res.exit_code == 0 and "16 prunable" in res.output, res.output
    proto, report, dims, output = _compress(tmp_path, model, data)
    assert "the loss reads output 1 ('probabilities')" in output
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("", 21), ("ai.onnx.ml", 1)}
    assert report["groups"]["removed"] > 0
    label, probs = ort.InferenceSession(proto.SerializeToString()).run(None, {"X": x[:5]})
    assert label.dtype == np.int64 and set(label) <= {10, 20, 30}
    np.testing.assert_array_equal(label, np.array([10, 20, 30])[probs.argmax(1)])
