"""Static batch of 1 -> dynamic batch (geta_onnx/graph/batch.py), on models built here the
way third-party files come: torch exports WITHOUT dynamic_axes (every input [1, ...], the
batch folded into Reshape / Expand constants), a batch-second attention (nn.MultiheadAttention
merges the batch with the heads), and a graph that mixes samples (never provable)."""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from geta_onnx.bridge import to_torch
from geta_onnx.graph import load_model
from geta_onnx.graph.batch import _batch_target, make_batch_dynamic, restore_batch_one, static_batch_one


class FlattenCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.reshape(x.shape[0], -1))  # static export: Reshape(x, [1, -1])


class TinyViT(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.enc = nn.TransformerEncoderLayer(d, 4, 32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)  # static export: Expand(cls, [1, 1, 1])
        return self.head(self.enc(x)[:, 0])


def _export(net: nn.Module, path, opset: int = 17):
    torch.manual_seed(0)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8) if isinstance(net, FlattenCNN) else torch.randn(1, 3, 16, 16),),
                          str(path), dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"])
    return path


def _samples(model, n=3):
    shape = [d for d in model.info(model.inputs[0].name).shape[1:]]
    return {"x": np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)}


@pytest.mark.parametrize("net, opset", [(FlattenCNN, 11), (FlattenCNN, 17), (TinyViT, 17)])
def test_static_export_becomes_dynamic_and_matches_per_sample(tmp_path, net, opset):
    model = load_model(_export(net(), tmp_path / "m.onnx", opset))
    assert static_batch_one(model)
    change = make_batch_dynamic(model, _samples(model))
    assert change.static and change.dynamic, change.reason
    assert change.rewrites
    x = _samples(model, 5)["x"]
    got = ort.InferenceSession(change.model.proto.SerializeToString()).run(None, {"x": x})[0]
    ref = ort.InferenceSession(model.proto.SerializeToString())
    want = np.concatenate([ref.run(None, {"x": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the bridge trains it at batch 5 (it could not before: Reshape [1, -1] / the class token)
    module = to_torch(change.model).train()
    out = module(torch.from_numpy(x))
    out.square().mean().backward()
    assert out.shape[0] == 5
    # the user's signature comes back for export
    restored = restore_batch_one(change.model.proto)
    assert [d.dim_value for d in restored.graph.input[0].type.tensor_type.shape.dim][0] == 1


def test_a_dynamic_model_is_left_alone(tmp_path):
    from tests.train.models import TinyCNN, export

    model = load_model(export(TinyCNN(), torch.randn(2, 1, 8, 8), tmp_path / "dyn.onnx"))
    change = make_batch_dynamic(model, None)
    assert not change.static and change.dynamic and change.model is model


def _mixing_model(path):
    """(1, 4) -> MatMul -> ReduceSum over axis 0: per sample at batch 1, a sum over samples at
    batch 2, so no rewrite can make the batch dynamic."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=1, name="sum")]
    graph = helper.make_graph(nodes, "mix", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_unprovable_graph_keeps_batch_one_and_trains_per_sample(tmp_path):
    model = load_model(_mixing_model(tmp_path / "mix.onnx"))
    change = make_batch_dynamic(model, {"x": np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)})
    assert change.static and not change.dynamic and change.model is model
    assert "at batch 2" in change.reason and "micro-batches of 1" in change.describe()
    module = to_torch(model)
    module.per_sample = True  # what run_geta does with such a model
    x = torch.randn(4, 4)
    out = module(x)
    ref = torch.cat([to_torch(model)(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("one, k, target, want", [
    ([1, 32, 4, 4], 0, [1, -1], [0, 512]),            # flatten of a CNN
    ([65, 1, 32], 1, [65, 4, 8], [65, -1, 8]),        # (L, N, E) -> (L, N*H, d): batch outer to the heads
    ([4, 65, 8], 0, [1, 4, 65, 8], [-1, 4, 65, 8]),   # (N*H, L, d) -> (N, H, L, d)
    ([65, 1, 4, 8], 1, [65, 32], [-1, 32]),           # (L, N, H, d) -> (L*N, E): never into the feature axis
    ([1, 12, 64], 0, [1, 12, 4, 16], [0, 12, 4, 16]),  # batch-first heads split
])
def test_batch_target(one, k, target, want):
    assert _batch_target(one, k, np.array(target), 0).tolist() == want
