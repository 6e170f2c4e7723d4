"""The benchmark baselines (tools/benchmarks/baselines.py) on the zoo ResNet (widths 16 / 32 /
64, 3x16x16 input, 3.1 M MACs): int8 PTQ, L1 structured pruning, fine-tuning."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from geta_onnx.bench.session import open_session
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.graph.stats import model_stats
from geta_onnx.train import load_data
from samples.zoo import ResNet, seeded_init_
from tools.benchmarks.baselines import finetune, l1_prune, l1_scores, ptq_int8

TINY = 1e-3  # filters scaled by this are the lowest-L1 ones by far
HW = 16  # input height and width


def _export(model: torch.nn.Module, path) -> None:
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 3, HW, HW),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """(path, names of the conv1 weights whose first 8 filters were scaled by TINY)."""
    model = seeded_init_(ResNet((16, 32, 64)))
    scaled = []
    with torch.no_grad():
        # BatchNorm statistics of the data (not seeded noise), so train and eval modes agree
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        model.train()(torch.from_numpy(_images(64, seed=5)))
        for i, block in enumerate(model.layers):  # conv1 of each block feeds only its conv2: one cluster each
            block.conv1.weight[:8] *= TINY
            scaled.append(f"layers.{i}.conv1.weight")
    path = tmp_path_factory.mktemp("baselines") / "resnet.onnx"
    _export(model, path)
    return path, scaled


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(np.float32)


def _run(path, x: np.ndarray) -> np.ndarray:
    return open_session(path, threads=1).run(None, {"image": x})[0]


def test_ptq_int8_takes_reduce_range_as_compress_does(resnet, tmp_path):
    """The pipeline's PTQ gets the 7-bit weights wherever compress's "auto" would (the probe;
    pinned to "does not saturate" in the suite): onnxruntime's reduced int8 range is +-64."""
    path, _ = resnet
    calibration = [{"image": _images(16, seed=s)} for s in range(2)]
    for reduce_range, widest in ((None, 127), (True, 64)):
        out = tmp_path / f"int8_{reduce_range}.onnx"
        info = ptq_int8(path, calibration, out, reduce_range=reduce_range)
        assert info["reduce_range"] is bool(reduce_range)
        proto = onnx.load(str(out))
        weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == widest


def test_ptq_int8_is_per_channel_qdq_and_close_to_fp32(resnet, tmp_path):
    path, _ = resnet
    out = tmp_path / "int8.onnx"
    info = ptq_int8(path, [{"image": _images(32, seed=s)} for s in range(4)], out)
    assert info["calibration_samples"] == 128 and info["preprocess"] == "full"
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # every Conv reads a DequantizeLinear of int8 weights with one scale per output channel
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
    # activations are uint8
    assert any(inits[n.input[2]].dtype == np.uint8 for n in proto.graph.node
               if n.op_type == "QuantizeLinear" and len(n.input) > 2)
    # close to fp32 on fresh inputs from the calibration distribution: relative RMS error of
    # the logits <= 10 %. 8-bit per-channel PTQ of a 7-conv net gives 1-3 % here; the error
    # depends on the CPU (without VNNI onnxruntime's u8s8 kernels saturate their int16
    # intermediate sums: 5.1 % was seen on one machine), while a broken quantization is > 50 %
    x = _images(64, seed=9)
    ref, got = _run(path, x), _run(out, x)
    rel = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
    assert rel <= 0.10, rel


def test_l1_prune_meets_macs_with_unit_widths_and_drops_lowest_l1(resnet, tmp_path):
    path, scaled = resnet
    model = load_model(path)
    original = model_stats(model).macs
    target = int(0.5 * original)
    out = tmp_path / "l1.onnx"
    info = l1_prune(path, target, out, unit=8)
    pruned = load_model(out)
    macs = model_stats(pruned).macs
    assert macs == info["macs"] <= target
    assert macs >= 0.4 * original  # the greedy refill keeps it near the budget, not far below
    # every conv keeps a multiple of the unit (all original widths are multiples of 8)
    for t in pruned.graph.initializer:
        if t.name.endswith("conv1.weight") or t.name.endswith("conv2.weight"):
            assert t.dims[0] % 8 == 0 and t.dims[1] % 8 == 0, (t.name, list(t.dims))
    for kept, total in info["widths"].values():
        assert kept % 8 == 0 or kept == total
    # the TINY filters are the lowest-L1 groups of their cluster: wherever that cluster lost
    # channels, they are the ones gone (no TINY filter left) and the scores agree
    pruned_any = False
    for name in scaled:
        w = numpy_helper.to_array(pruned.initializers[name])
        total = model.array(name).shape[0]
        if w.shape[0] < total:
            pruned_any = True
            assert np.abs(w).sum(axis=(1, 2, 3)).min() > 10 * TINY * np.abs(model.array(name)).sum(axis=(1, 2, 3)).max()
    assert pruned_any, info["widths"]
    # l1_scores ranks them lowest in the same cluster
    from geta_onnx.qadg import analyze

    qadg = analyze(model)
    scores = l1_scores(model, qadg)
    for g in qadg.prunable:
        if g.sources == ["/layers/layers.0/conv1/Conv"]:
            idx = next(m.indices[0] for m in g.members if m.tensor == "layers.0.conv1.weight" and m.role == "out")
            assert (scores[g.id] < 0.01) == (idx < 8), (g.id, idx, scores[g.id])
    y = _run(out, _images(4))
    assert y.shape == (4, 10) and np.isfinite(y).all()


def test_l1_prune_rejects_unreachable_target(resnet, tmp_path):
    from geta_onnx.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot get below"):
        l1_prune(resnet[0], 1000, tmp_path / "x.onnx", unit=8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """32 random images with labels from a fixed random linear rule (learnable)."""
    rng = np.random.default_rng(0)
    x = _images(32, seed=5)
    y = (x.reshape(32, -1) @ rng.standard_normal((3 * HW * HW, 10))).argmax(1).astype(np.int64)
    path = tmp_path_factory.mktemp("ft") / "data.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize("loss", ["task", "task+kd", "kd-mse"])
def test_finetune_lowers_the_loss_and_writes_back(resnet, labelled, tmp_path, loss):
    path = tmp_path / "l1.onnx"
    l1_prune(resnet[0], int(0.5 * model_stats(load_model(resnet[0])).macs), path, unit=8)
    data = load_data(f"npz:{labelled}", DataConfig(batch_size=8, val_split=0.0, shuffle=True),
                     model=load_model(path), seed=0)
    out = tmp_path / "ft.onnx"
    teacher = resnet[0] if loss != "task" else None
    info = finetune(path, data, epochs=4, lr=3e-3, out_path=out, loss=loss, teacher_path=teacher)
    assert info["steps"] == 16
    # the training loss (train mode) falls steadily, and so does the eval-mode loss on the
    # first 4 training batches (less: the pruned model's BatchNorm statistics are re-learnt)
    history = [h["train_loss"] for h in info["history"]]
    assert history[-1] < 0.7 * history[0], history
    assert info["loss_after"] < 0.95 * info["loss_before"], info
    # the trained values are in the written model: it computes something else than before
    x = _images(4)
    before, after = _run(path, x), _run(out, x)
    assert after.shape == before.shape and not np.allclose(after, before)
    onnx.checker.check_model(str(out), full_check=True)


def _two_output_model(path) -> None:
    """x [B, 4] -> (tokens = x @ W1 [B, 3], pooled = x @ W2 [B, 2]): two float outputs, the
    second 10x the scale of the first."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(10 * rng.standard_normal((4, 2)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["tokens"]), helper.make_node("MatMul", ["x", "w2"], ["pooled"])],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 2])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_kd_all_distils_every_output_as_compress_does(tmp_path):
    """The pipeline's "kd-all-mse" is compress's label-free loss on a two-output model (the
    mean over outputs of MSE / the teacher's mean square), where "kd-mse" reads one output."""
    from geta_onnx.bridge import to_torch
    from geta_onnx.train.losses import make_loss
    from tools.benchmarks.baselines import make_finetune_loss

    path = tmp_path / "two.onnx"
    _two_output_model(path)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    teacher = [torch.from_numpy(t) for t in open_session(str(path)).run(None, {"x": x.numpy()})]
    student = (teacher[0] + 0.5, teacher[1] - 2.0)
    expected = float(np.mean([0.25 / teacher[0].pow(2).mean(), 4.0 / teacher[1].pow(2).mean()]))

    every = make_finetune_loss("kd-all-mse", teacher_path=path, output=1)
    assert float(every(student, None, (x,))) == pytest.approx(expected, rel=1e-5)
    model = load_model(path)
    compress = make_loss("kd", has_labels=False, module=to_torch(model), model=model, kd="mse", output=1)
    assert float(compress(student, None, (x,))) == pytest.approx(expected, rel=1e-5)
    # one output: the pooled one's plain MSE (4.0), not the mean over both
    assert float(make_finetune_loss("kd-mse", teacher_path=path, output=1)(student, None, (x,))) == \
        pytest.approx(4.0, rel=1e-5)
