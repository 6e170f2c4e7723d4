"""Fidelity metrics on hand-made outputs: which metric auto picks, and their values."""
import numpy as np
import pytest

from geta_onnx.bench.metrics import Fidelity, choose_metric, top1_hits
from geta_onnx.errors import DataError


def _fid(out, ref):
    f = Fidelity()
    f.update(np.asarray(out, np.float32), np.asarray(ref, np.float32))
    return f


def test_logits_agreement():
    f = _fid([[1, 2, 0], [3, 0, 0]], [[0, 2, 1], [0, 0, 3]])  # first row agrees, second does not
    assert choose_metric(f) == "agreement" and f.summary()["agreement"] == 0.5


@pytest.mark.parametrize("ref, out, want", [
    ([[0.9], [0.2], [0.6], [0.4]], [[0.7], [0.3], [0.4], [0.45]], 0.75),  # probabilities: the side of 0.5
    ([[2.0], [-1.0], [0.5], [-3.0]], [[1.0], [1.0], [-0.5], [-2.0]], 0.5),  # logits: the side of 0
])
def test_one_score_per_row_agrees_on_its_side_of_the_threshold(ref, out, want):
    """A voice-activity probability [N, 1] or a text mask [N, 1, H, W]: an argmax over one entry
    always matched, so every such model scored agreement 1.000 whatever it output."""
    f = _fid(out, ref)
    assert choose_metric(f) == "agreement" and f.summary()["agreement"] == want
    maps = _fid(np.array(out)[:, :, None, None] * np.ones((1, 1, 2, 3)), np.array(ref)[:, :, None, None] * np.ones((1, 1, 2, 3)))
    assert maps.summary()["agreement"] == want


def test_normalised_embeddings_use_cosine():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 16))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)  # sentence-transformers style unit rows
    f = _fid(ref * 2.0, ref)  # same direction, other length: cosine 1, agreement 1, mse > 0
    assert choose_metric(f) == "cosine"
    s = f.summary()
    assert s["cosine"] == pytest.approx(1.0) and s["mse"] > 0


def test_token_states_and_other_shapes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4))
    assert choose_metric(_fid(x, -x)) == "cosine" and _fid(x, -x).summary()["cosine"] == pytest.approx(-1.0)
    assert choose_metric(_fid([0.5, 1.0], [0.5, 2.0])) == "mse"  # (N,) scores
    assert _fid([0.5, 1.0], [0.5, 2.0]).summary()["max_abs"] == 1.0
    assert choose_metric(_fid(x, x), "mse") == "mse"


def test_top1_hits_checks_shapes():
    assert top1_hits(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]), spec="s") == (1, 2)
    with pytest.raises(DataError, match="class scores"):
        top1_hits(np.array([0.1, 0.9]), np.array([1, 1]), spec="s")
