"""`verify` on the whole zoo, both exporters: parity, gradients, zero-invariance of a
seeded sample of groups and of a random half removed at once; and the prunable shares."""
import pytest

from geta_onnx.graph import load_model
from geta_onnx.verify import verify_model
from samples import zoo
from tests.zoo_cache import zoo_path

# Architectures whose channels stay (mostly) unprunable, and why:
LOW_SHARE = {
    "lstm": "recurrent hidden units have no pruning rule; only the embedding width is prunable",
    "gru": "recurrent hidden units have no pruning rule",
    "fpn": "GroupNorm mixes the channels of a group",
    "mixer": "token-mixing MatMuls act on an axis next to the channels: one id per position cannot hold both",
}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_verify_passes(name, exporter):
    model = load_model(zoo_path(name, exporter))
    checks, qadg = verify_model(model, max_groups=6, seed=0)
    failed = [(c.name, c.detail, c.failures[:3]) for c in checks if not c.passed]
    assert not failed, failed
    summary = qadg.summary()
    if name not in LOW_SHARE:
        assert summary["prunable_param_share"] >= 0.8, summary
