"""Example inputs (graph/feeds.py): integer inputs get values the model can index with."""
import numpy as np
import pytest
from onnx import helper

from geta_onnx.graph import from_proto
from geta_onnx.graph.feeds import example_feeds
from tests.helpers import make_model


def _one_hot_model(kind: str, classes: int = 257):
    """ids [B, 6] int32 -> one-hot over `classes` values -> MatMul classes->4. kind 'equal':
    Equal(Expand(Reshape(ids)), range) as tf2onnx writes JAX's one_hot; 'onehot': the op;
    'gather': an embedding table with `classes` rows."""
    n = helper.make_node
    ids = np.zeros((2, 6), dtype=np.int32)
    inits = {"w": np.ones((classes, 4), dtype=np.float32)}
    if kind == "equal":
        inits.update(shape=np.array([2, 6, 1], dtype=np.int64), wide=np.array([2, 6, classes], dtype=np.int64),
                     range=np.arange(classes, dtype=np.int32).reshape(1, 1, classes))
        nodes = [n("Reshape", ["ids", "shape"], ["r"]), n("Expand", ["r", "wide"], ["e"]),
                 n("Equal", ["e", "range"], ["eq"]), n("Cast", ["eq"], ["oh"], to=1), n("MatMul", ["oh", "w"], ["y"])]
    elif kind == "onehot":
        inits.update(depth=np.array(classes, dtype=np.int64), values=np.array([0, 1], dtype=np.float32))
        nodes = [n("OneHot", ["ids", "depth", "values"], ["oh"]), n("MatMul", ["oh", "w"], ["y"])]
    else:
        nodes = [n("Gather", ["w", "ids"], ["y"])]
    return from_proto(make_model(nodes, {"ids": ids}, ["y"], inits))


@pytest.mark.parametrize("kind", ["equal", "onehot", "gather"])
def test_integer_inputs_that_index_take_values_over_the_whole_range(kind):
    """Magika's byte ids (0..256) fed as a {0, 1} mask made its LayerNorm see a near-constant
    input, and the parity check measured float32 cancellation instead of the bridge."""
    ids = example_feeds(_one_hot_model(kind), shapes={"ids": (64, 6)})["ids"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 257
    assert len(np.unique(ids)) > 100


def test_other_integer_inputs_are_masks():
    n = helper.make_node
    model = from_proto(make_model([n("Cast", ["mask"], ["y"], to=1)], {"mask": np.zeros((2, 8), dtype=np.int64)},
                                  ["y"]))
    mask = example_feeds(model)["mask"]
    assert set(np.unique(mask)) == {0, 1} and mask[:, 0].all() and not mask[:, -1].any()
