"""train.memory: the activation bytes of one sample, and the refusal of a batch that does not
fit (with the batch size that does), on a hand-built graph whose tensors are known."""
import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.cli import main
from geta_onnx.errors import GetaError
from geta_onnx.graph import from_proto
from geta_onnx.train.memory import ACTIVATION_FACTOR, activation_bytes, check_fits, training_bytes


def _conv_model(side: int = 16):
    """x (N, 3, s, s) -> Conv 3->8 (pad 1) -> Relu -> Conv 8->4 (pad 1) -> y: per sample the
    node outputs hold 8 s^2 + 8 s^2 + 4 s^2 floats."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(4, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, side, side])], inits)
    return from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), label="conv.onnx")


def test_activation_bytes_counts_every_node_output():
    model = _conv_model(16)
    sample = {"x": np.zeros((1, 3, 16, 16), np.float32)}
    assert activation_bytes(model, sample) == (8 + 8 + 4) * 16 * 16 * 4


def test_a_batch_that_fits_passes_and_one_that_does_not_names_the_batch_that_does():
    model = _conv_model(16)
    sample = {"x": np.zeros((1, 3, 16, 16), np.float32)}
    per_sample, params = (8 + 8 + 4) * 16 * 16 * 4, 8 * 27 + 4 * 72
    need = check_fits(model, sample, 64, params, "conv.onnx", available=10 ** 9)
    assert need == training_bytes(per_sample, 64, params)
    available = training_bytes(per_sample, 10, params) + 1  # room for 10 samples
    with pytest.raises(GetaError, match=r"conv.onnx: training at batch 64 needs about .*--batch-size 10 or smaller"):
        check_fits(model, sample, 64, params, "conv.onnx", available=available)
    assert check_fits(model, sample, 10, params, "conv.onnx", available=available) <= available
    with pytest.raises(GetaError, match="even one sample does not fit"):
        check_fits(model, sample, 1, params, "conv.onnx", available=int(per_sample * ACTIVATION_FACTOR / 2))


def _tile_model():
    """x (N, 3, 32, 32) -> Conv 3->8 -> Tile x128 x128 -> (N, 8, 4096, 4096) -> ReduceMean -> y:
    a small input whose graph computes 512 MB per sample."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 128, 128], np.int64), "reps")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Tile", ["c", "reps"], ["t"], name="tile"),
             helper.make_node("ReduceMean", ["t"], ["y"], axes=[2, 3], keepdims=0, name="mean")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compress_refuses_a_batch_this_machine_cannot_hold(tmp_path):
    """Through the CLI: 512 MB of activations per sample at a batch of 128 (about 190 GB by the
    estimate) stops before anything runs a batch: exit 1, one line naming --batch-size."""
    import onnx

    path = tmp_path / "big.onnx"
    onnx.save(_tile_model(), str(path))
    x = np.random.default_rng(0).random((144, 3, 32, 32), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x[:128], eval_x=x[128:])
    res = CliRunner().invoke(main, ["compress", str(path), "--data", f"npz:{tmp_path / 'd.npz'}", "-o",
                                    str(tmp_path / "o.onnx"), "--batch-size", "128", "--steps", "2", "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "training at batch 128 needs about" in res.output and "--batch-size" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.run").exists()  # nothing trained, nothing written
