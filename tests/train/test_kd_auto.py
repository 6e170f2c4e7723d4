"""The automatic distillation loss: KL for class scores only (a softmax over the others is
not a class distribution). Independent sigmoid probabilities (CREPE's pitch bins) get binary
cross-entropy, their training loss; unit-norm embeddings (MiniLM's sentence embedding) and
everything else MSE."""
import torch
import torch.nn.functional as F

from geta_onnx.train.losses import Loss, looks_like_logits, looks_like_sigmoid


def _outputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g) * 3
    return {"logits": logits, "softmax": logits.softmax(1),
            "embedding": F.normalize(torch.randn(8, 384, generator=g), dim=1),
            "sigmoid": torch.rand(8, 360, generator=g), "tokens": torch.randn(8, 16, 32, generator=g),
            "relu_logits": logits.relu()}


def test_which_outputs_count_as_class_scores():
    kinds = {name: looks_like_logits(out) for name, out in _outputs().items()}
    # relu_logits: non-negative scores above 1 are not probabilities: still class scores
    assert kinds == {"logits": True, "softmax": True, "embedding": False, "sigmoid": False, "tokens": False,
                     "relu_logits": True}
    sigmoid = {name: looks_like_sigmoid(out) for name, out in _outputs().items()}
    assert [name for name, yes in sigmoid.items() if yes] == ["sigmoid"]


def test_auto_kd_picks_mse_for_embeddings_bce_for_sigmoids_and_kl_for_logits():
    outs = _outputs()
    for name, want in (("embedding", "mse"), ("sigmoid", "bce"), ("logits", "kl"), ("tokens", "mse")):
        loss = Loss("kd", teacher=torch.nn.Identity())
        t = outs[name]
        value = loss.distill(t + 0.01, t)
        assert loss.kd == want, name
        if want == "mse":
            assert torch.isclose(value, torch.tensor(1e-4), rtol=1e-3)
        if want == "bce":  # soft-target BCE: its minimum (the teacher's entropy) is at student = teacher
            assert torch.isclose(value, F.binary_cross_entropy((t + 0.01).clamp(1e-7, 1 - 1e-7), t))
            assert value > loss.distill(t, t)
