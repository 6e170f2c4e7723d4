"""The GETA quantizer (geta-algorithm.md section 1): bit formulas, the forward grid, the
stated (straight-through) gradients, and the Quantizer module's modes.

Gradients are checked twice: against the formulas of the doc computed independently in
numpy, and against central finite differences (float64, eps 1e-6, tolerance 1e-6
relative) of the straight-through SURROGATE S = sign(x) * (u + d * e) with the rounding
residual e = round(u/d) - u/d held constant: the function whose true derivatives the
stated gradients are (round itself is piecewise constant). Points are kept 1e-3 away from
the clipping boundary |x| = q_m, where S has a kink.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geta_onnx.errors import GetaError
from geta_onnx.quant.quantizer import D_FLOOR, GetaQuantize, Quantizer, bits_of, d_of_bits, levels_foreach, levels_of

SEED = 0


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("t", [1.0, 0.7, 1.5])
def test_bits_round_trip(signed, t):
    q_m = torch.tensor([0.05, 0.9, 3.0, 40.0], dtype=torch.float64)  # one value per channel
    for b in range(2, 17):
        d = d_of_bits(b, q_m, t, signed)
        assert d.shape == q_m.shape and bool((d > 0).all())
        back = bits_of(d, q_m, t, signed)
        assert torch.allclose(back, torch.full_like(back, float(b)), rtol=0, atol=1e-9), (b, back)
    # and d -> b -> d for non-integer widths
    d = torch.tensor([0.01, 0.003, 0.2, 1.7], dtype=torch.float64)
    assert torch.allclose(d_of_bits(bits_of(d, q_m, t, signed), q_m, t, signed), d, rtol=1e-12, atol=0)


def test_bits_known_values():
    assert float(bits_of(1 / 127, 1.0)) == pytest.approx(8.0, abs=1e-12)  # 1 sign bit + 127 levels
    assert float(bits_of(1 / 255, 1.0, signed=False)) == pytest.approx(8.0, abs=1e-12)
    assert float(d_of_bits(4, 2.0, t=2.0)) == pytest.approx(4.0 / 7, abs=1e-12)  # q_m^t / (2^3 - 1)
    with pytest.raises(GetaError, match="at least 2 bits"):
        d_of_bits(1, 1.0)
    assert float(d_of_bits(1, 1.0, signed=False)) == 1.0  # unsigned 1 bit: {0, q_m}


def _reference(x, d, q, t, signed):
    """The doc's forward in numpy (np.round is half-to-even like torch.round)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x) if signed else np.clip(x, 0, None)
    u = np.minimum(a, q) ** t
    mag = d * np.round(u / d)
    return np.sign(x) * mag if signed else mag


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("t", [1.0, 0.8])
def test_forward_on_grid_within_range(signed, bits, t):
    # random values plus a dense sweep of [-2 q_m, 2 q_m], which reaches every level
    x = torch.cat([3 * torch.randn(4000, generator=_gen(), dtype=torch.float64),
                   torch.linspace(-3.4, 3.4, 20001, dtype=torch.float64)])
    q_m = torch.tensor(1.7, dtype=torch.float64)
    tt = torch.tensor(t, dtype=torch.float64)
    d = d_of_bits(bits, q_m, t, signed)
    y = GetaQuantize.apply(x, d, q_m, tt, signed)
    np.testing.assert_array_equal(y.numpy(), _reference(x.numpy(), float(d), 1.7, t, signed))
    k = y / d
    assert torch.allclose(k, torch.round(k), atol=1e-9)  # on the grid d * integer
    assert float(y.abs().max()) <= float(q_m ** t) * (1 + 1e-12)  # within [-q_m^t, q_m^t]
    if not signed:
        assert float(y.min()) >= 0.0
    levels = torch.unique(torch.round(k)).numel()
    assert levels <= 2 ** bits
    assert levels == (2 ** bits - 1 if signed else 2 ** bits)  # signed: -N..N; unsigned: 0..N


def test_ste_mask_at_the_boundary():
    q = 0.5
    x = torch.tensor([-1.0, -q, -q + 1e-6, 0.0, q - 1e-6, q, 1.0], dtype=torch.float64, requires_grad=True)
    args = tuple(torch.tensor(v, dtype=torch.float64) for v in (0.01, q, 1.0))  # d, q_m, t
    GetaQuantize.apply(x, *args, True).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # 1 inside, 0 at / outside |x| = q_m
    xu = torch.tensor([-0.3, 0.0, q - 1e-6, q, 1.0], dtype=torch.float64, requires_grad=True)
    GetaQuantize.apply(xu, *args, False).sum().backward()
    assert xu.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]  # unsigned: 1 on [0, q_m)


def _away_from_boundary(n, q, signed, seed=SEED):
    x = 2 * q * torch.randn(n, generator=_gen(seed), dtype=torch.float64)
    if not signed:
        x = x.abs()
    keep = (x.abs() - q).abs() > 1e-3
    return x[keep]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("t", [1.0, 1.3])
def test_gradients_match_formulas_and_finite_differences(signed, t):
    q0, d0 = 0.8, 0.037
    x = _away_from_boundary(600, q0, signed).requires_grad_(True)
    w = torch.randn(x.shape, generator=_gen(1), dtype=torch.float64)  # a random upstream gradient
    d = torch.tensor(d0, dtype=torch.float64, requires_grad=True)
    q = torch.tensor(q0, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    (GetaQuantize.apply(x, d, q, tt, signed) * w).sum().backward()

    # the doc's formulas, in numpy
    xn, wn = x.detach().numpy(), w.numpy()
    s = np.sign(xn) if signed else np.ones_like(xn)
    a = np.abs(xn) if signed else np.clip(xn, 0, None)
    c = np.minimum(a, q0)
    u = c ** t
    z = u / d0
    want_d = np.sum(wn * s * (np.round(z) - z))
    want_q = np.sum(wn * s * t * q0 ** (t - 1) * (a >= q0))
    want_t = np.sum(wn * s * u * np.where(c > 0, np.log(np.where(c > 0, c, 1)), 0))
    inside = (a < q0) if signed else (xn >= 0) & (xn < q0)
    assert float(d.grad) == pytest.approx(want_d, rel=1e-10, abs=1e-12)
    assert float(q.grad) == pytest.approx(want_q, rel=1e-10, abs=1e-12)
    assert float(tt.grad) == pytest.approx(want_t, rel=1e-10, abs=1e-12)
    np.testing.assert_array_equal(x.grad.numpy(), wn * inside)

    # central finite differences of the straight-through surrogate
    e = np.round(z) - z  # held constant

    def surrogate(xv, dv, qv, tv):
        av = np.abs(xv) if signed else np.clip(xv, 0, None)
        return np.sum(wn * s * (np.minimum(av, qv) ** tv + dv * e))

    eps = 1e-6
    fd = lambda f, v: (f(v + eps) - f(v - eps)) / (2 * eps)  # noqa: E731
    assert float(d.grad) == pytest.approx(fd(lambda v: surrogate(xn, v, q0, t), d0), rel=1e-6, abs=1e-8)
    assert float(q.grad) == pytest.approx(fd(lambda v: surrogate(xn, d0, v, t), q0), rel=1e-6, abs=1e-8)
    assert float(tt.grad) == pytest.approx(fd(lambda v: surrogate(xn, d0, q0, v), t), rel=1e-6, abs=1e-8)
    if t == 1.0:  # the doc's dQ/dx = 1 is the surrogate's derivative only for the linear quantizer
        for i in range(0, len(xn), 37):
            def along(v, i=i):
                xv = xn.copy()
                xv[i] = v
                return surrogate(xv, d0, q0, t)
            assert float(x.grad[i]) == pytest.approx(fd(along, xn[i]), rel=1e-6, abs=1e-8)


def test_gradient_of_t_is_zero_at_zero_input():
    x = torch.zeros(5, dtype=torch.float64)
    t = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    d, q_m = torch.tensor(0.1, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    GetaQuantize.apply(x, d, q_m, t, True).sum().backward()
    assert float(t.grad) == 0.0 and torch.isfinite(t.grad)  # ln(0) guarded


def test_module_parameters_and_disabled_identity():
    q = Quantizer("weight", bit_range=(4, 8))
    assert {n for n, _ in q.named_parameters()} == {"d", "q_m"}
    assert "t" in dict(q.named_buffers()) and float(q.t) == 1.0
    assert {n for n, _ in Quantizer("act", learn_t=True).named_parameters()} == {"d", "q_m", "t"}
    x = torch.randn(3, 4, generator=_gen())
    q.enabled = False
    assert q(x) is x
    with pytest.raises(GetaError, match="kind"):
        Quantizer("bias")


def test_set_bits_and_bits():
    q = Quantizer("weight")
    q.set_range(2.5, 6)
    assert q.d.item() == pytest.approx(2.5 / 31, rel=1e-6)
    assert float(q.bits()) == pytest.approx(6.0, abs=1e-5)
    u = Quantizer("act", signed=False)
    u.set_range(4.0, 8)
    assert u.d.item() == pytest.approx(4.0 / 255, rel=1e-6)
    assert float(u.bits()) == pytest.approx(8.0, abs=1e-5)
    x = torch.tensor([-1.0, 0.3, 5.0])
    assert u(x).tolist()[0] == 0.0 and u(x).tolist()[2] == pytest.approx(4.0, rel=1e-6)  # clipped to [0, q_m]


def test_per_channel_matches_per_tensor_slices():
    w = torch.randn(5, 3, 2, 2, generator=_gen(), dtype=torch.float64)  # (M, C, k, k), channels on axis 1
    q = Quantizer("weight", channels=3, axis=1).double()
    q.set_range(torch.tensor([0.5, 1.0, 2.0]), torch.tensor([3.0, 4.0, 6.0]))
    y = q(w)
    for c in range(3):
        single = Quantizer("weight").double()
        with torch.no_grad():
            single.q_m.copy_(q.q_m[c])
            single.d.copy_(q.d[c])
        assert torch.equal(y[:, c], single(w[:, c]))
    y.sum().backward()
    assert q.d.grad.shape == (3,) and q.q_m.grad.shape == (3,)
    with pytest.raises(GetaError, match="per-channel"):
        q(torch.randn(5, 4, 2, 2, dtype=torch.float64))


def test_lsq_gradient_scaling():
    x = torch.randn(64, 10, generator=_gen(), dtype=torch.float64)
    grads = {}
    for scaled in (False, True):
        q = Quantizer("act", grad_scale=scaled).double()
        q.set_range(1.5, 5)
        q(x).pow(2).sum().backward()
        grads[scaled] = (q.d.grad.clone(), q.q_m.grad.clone())
    factor = 1 / np.sqrt(x.numel() * (2 ** 4 - 1))  # levels = q_m / d = 2^(b-1) - 1
    assert float(grads[True][0]) == pytest.approx(float(grads[False][0]) * factor, rel=1e-9)
    assert float(grads[True][1]) == pytest.approx(float(grads[False][1]) * factor, rel=1e-9)
    assert float(grads[False][0]) != 0.0 and float(grads[False][1]) != 0.0


def test_frozen_bits_rederive_d_from_q_m():
    q = Quantizer("weight", grad_scale=False).double()
    q.set_range(1.0, 7.6)
    q.freeze_bits()  # round(7.6) = 8
    assert float(q.bits()) == 8.0 and q.d.item() == pytest.approx(1 / 127, rel=1e-12)
    with torch.no_grad():
        q.q_m.fill_(2.0)  # training moves q_m: d must follow at 8 bits
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    y = q(x)
    assert torch.allclose(y / (2.0 / 127), torch.round(y / (2.0 / 127)), atol=1e-9)
    y.sum().backward()
    assert q.d.grad is None and q.q_m.grad is not None and float(q.q_m.grad) != 0.0
    with pytest.raises(GetaError):
        q.freeze_bits(1)
    assert float(q.bits()) == 8.0  # a rejected width leaves the state alone
    q.unfreeze()
    assert q.frozen_bits is None


def test_floor_keeps_forward_finite_and_gradient_alive():
    q = Quantizer("weight", grad_scale=False)
    with torch.no_grad():
        q.d.fill_(-0.5)  # an optimizer overshoot
    x = torch.randn(100, generator=_gen())
    y = q(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert q.d.grad is not None and torch.isfinite(q.d.grad)
    q.clamp_()
    assert q.d.item() == pytest.approx(D_FLOOR)


def test_state_dict_round_trip_follows_frozen_bits():
    q = Quantizer("weight", channels=3, axis=0)
    q.set_range(torch.tensor([0.5, 1.0, 2.0]), 5.3)
    q.freeze_bits()
    fresh = Quantizer("weight", channels=3, axis=0)
    fresh.load_state_dict(q.state_dict())  # strict: frozen_bits must be accepted
    assert fresh.frozen_bits is not None and fresh.bits().tolist() == [5.0, 5.0, 5.0]
    assert torch.equal(fresh.q_m, q.q_m) and torch.equal(fresh.d, q.d)
    unfrozen = Quantizer("weight", channels=3, axis=0)
    fresh.load_state_dict(unfrozen.state_dict())
    assert fresh.frozen_bits is None


def test_half_precision_inputs_compute_in_float32():
    q = Quantizer("act")
    q.set_range(1.0, 16)  # d ~ 3e-5: representable in float32, a 16-bit grid
    x = torch.randn(200, generator=_gen()).half()
    y = q(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.equal(y, q(x.float()).half())


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_path_is_bitwise_the_general_one_at_t_1(signed, per_channel):
    """t=None (the fused path of a quantizer whose t is not learned) equals the general path
    with t = 1 exactly: output and the x, d, q_m gradients, boundaries and zeros included."""
    gen = _gen(7)
    x = 2 * torch.randn(4, 3, 5, 5, generator=gen)
    q = (torch.rand(3, generator=gen) + 0.5).reshape(1, 3, 1, 1) if per_channel else torch.tensor(0.9)
    d = q / 7 if signed else q / 15
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 0.5])
    x[1, :, 0, 0] = q.reshape(-1)  # exactly at q_m
    x[1, :, 0, 1] = -q.reshape(-1)
    w = torch.randn(x.shape, generator=gen)
    got = []
    for t in (None, torch.tensor(1.0)):
        xs, ds, qs = (v.clone().requires_grad_(True) for v in (x, d, q))
        y = GetaQuantize.apply(xs, ds, qs, t, signed)
        (y * w).sum().backward()
        got.append((y.detach(), xs.grad, ds.grad, qs.grad))
    for fast, general in zip(*got):
        assert torch.equal(fast, general)


def test_quantizer_module_uses_the_linear_path_unless_t_is_learned():
    x = torch.randn(64, generator=_gen(3))
    fixed, learned = Quantizer("weight"), Quantizer("weight", learn_t=True)
    for q in (fixed, learned):
        q.set_range(2.0, 4)
    assert torch.equal(fixed(x), learned(x))  # t = 1 in both
    assert not fixed.learn_t and learned.learn_t


@pytest.mark.parametrize("signed", [True, False])
def test_levels_foreach_equals_the_one_tensor_levels(signed):
    """QASSO's cool-down divides by levels_foreach; the projection by levels_of: the same divisors."""
    bits = [torch.tensor(b, dtype=torch.float32) for b in (2.0, 4.0, 8.0, 16.0)]
    got = [float(x) for x in levels_foreach(bits, signed)]
    assert got == [levels_of(float(b), signed) for b in bits]
    assert got[2] == (127.0 if signed else 255.0)
