"""QASSO's batched updates (torch._foreach over all parameters / quantizers) compute what the
one-by-one code computes, bit for bit: the base optimizers' directions (optim.base.direction
against directions), the bit projection and the cool-down's d(frozen bits) against
QuantTarget.d_for per layer."""
import pytest
import torch

from geta_onnx.optim import base as base_opt
from tests.optim.test_qasso import _run, _setup

SHAPES = [(), (3,), (4, 5), (2, 3, 3, 3), (1,)]


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float32).requires_grad_() for s in SHAPES]


@pytest.mark.parametrize("base, wd", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.01), ("sgd", 0.01)])
def test_directions_are_direction_bit_for_bit_at_mixed_step_counts(base, wd):
    group = {"lr": 0.01, "weight_decay": wd, "momentum": 0.9, "betas": (0.9, 0.999), "eps": 1e-8}
    one, many = _params(0), _params(0)
    s_one, s_many = [{} for _ in one], [{} for _ in many]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        # the second parameter skips every other step (a frozen d): its own step count
        live = [i for i in range(len(one)) if not (i == 1 and step % 2)]
        for i in live:
            grad = torch.randn(SHAPES[i], generator=g)
            one[i].grad, many[i].grad = grad.clone(), grad.clone()
        with torch.no_grad():  # as inside QASSO.step
            expected = [base_opt.direction(one[i], s_one[i], group, base) for i in live]
            got = base_opt.directions([many[i] for i in live], [s_many[i] for i in live], group, base)
        for a, b in zip(expected, got):
            assert a.shape == b.shape and torch.equal(a, b)
        with torch.no_grad():  # move the parameters as QASSO does, so weight decay sees new values
            for i, a, b in zip(live, expected, got):
                one[i].sub_(0.01 * a)
                many[i].sub_(0.01 * b)
    for a, b in zip(s_one, s_many):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                                            for k in a)


@pytest.mark.parametrize("per_channel", [False, True])
def test_projection_and_cool_down_are_the_per_layer_formulas(per_channel):
    module, opt, layers, stages = _setup(base="adam", per_channel=per_channel)
    seen = {"projection": 0, "cooldown": 0}

    def check(k):
        stage = stages.stage(k).name
        if stage == "projection":  # d inside [d(b_u current), d(b_l)], computed per layer
            for layer in layers:
                d = layer.quantizer.d.detach()
                lo = layer.d_for(opt.upper_bits(layer, k)).reshape(d.shape)
                hi = layer.d_for(layer.low).reshape(d.shape)
                assert torch.equal(d, torch.maximum(torch.minimum(d, hi), lo))
            seen[stage] += 1
        elif stage == "cooldown":  # d = d(frozen bits) at this step's q_m
            for layer in layers:
                q = layer.quantizer
                assert torch.equal(q.d.detach(), layer.d_for(q.frozen_bits).reshape(q.d.shape))
            seen[stage] += 1
    _run(module, opt, layers, stages, stages.total_steps, check=check)
    assert seen["projection"] > 0 and seen["cooldown"] > 0


def test_projection_clips_exactly_as_before():
    """One projection on d values outside the bounds: the clip lands on d(b) bit for bit."""
    module, opt, layers, stages = _setup(base="adam")
    opt.step_count = stages.warmup_steps  # the first projection step
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.quantizer.d.mul_(1e6 if i % 2 else 1e-6)  # far above d(b_l), far below d(b_u)
    before = [layer.quantizer.d.detach().clone() for layer in layers]
    with torch.no_grad():  # as inside step()
        opt._project_bits()
    for layer, d0 in zip(layers, before):
        d = layer.quantizer.d.detach()
        lo = layer.d_for(opt.upper_bits(layer)).reshape(d.shape)
        hi = layer.d_for(layer.low).reshape(d.shape)
        assert torch.equal(d, torch.maximum(torch.minimum(d0, hi), lo))
        assert torch.equal(d, hi) or torch.equal(d, lo)
