"""QASSO guarantees: bits inside their bounds after every projection step, exactly K
groups exactly zero at the end and through cool-down, frozen bits inside [b_l, b_u],
kept counts on the hardware unit, and a resumable state."""
import copy

import pytest
import torch

from geta_onnx.bridge import to_torch
from geta_onnx.graph import from_proto
from geta_onnx.config import ScheduleConfig
from geta_onnx.optim import QASSO, QuantTarget
from geta_onnx.train.schedule import Schedule
from geta_onnx.quant.quantizer import Quantizer, bits_of, d_of_bits
from geta_onnx.optim.selection import allowed_removals
from geta_onnx.qadg import analyze
from tests.qadg import models


def FakeQuantizer(q_m, bits: float, signed: bool = True, bit_range=(4, 8)) -> Quantizer:
    """A GETA quantizer outside the forward path: the optimizer only sees its scalars.
    q_m a number (per tensor) or a (C,) tensor (per channel along axis 0)."""
    q_m = torch.as_tensor(q_m)
    channels = q_m.numel() if q_m.dim() else None
    q = Quantizer("weight" if signed else "act", signed=signed, channels=channels, axis=0 if channels else None,
                  bit_range=bit_range)
    q.set_range(q_m, bits)
    return q


# the paper's stage fractions (config.ScheduleConfig's docstring): these tests need pruning periods
# of several steps on a 60-step run
PAPER = dict(warmup=0.1, projection=0.2, pruning_start=0.3, pruning=0.4)


def _setup(sparsity=0.5, unit=1, steps=60, base="sgd", per_channel=False, recovery=0):
    """resnet2 with a weight quantizer per conv / Gemm (per tensor, or per output channel:
    axis 0 of every weight here) and one activation quantizer."""
    model = from_proto(models.resnet2()[0])
    qadg = analyze(model)
    module = to_torch(model)
    layers = []
    for i, name in enumerate(["stem.w", "b1a.w", "b1b.w", "b2a.w", "b2b.w", "b2s.w", "fc.w"]):
        w = module.parameter(name).detach().abs()
        q = FakeQuantizer(w.flatten(1).amax(1) if per_channel else float(w.max()), 16)
        module.add_module(f"fq{i}", q)
        layers.append(QuantTarget(f"fq{i}", q, name, 16, axis=0 if per_channel else None))
    act = FakeQuantizer(3.0, 16, signed=False)
    module.add_module("fq_act", act)
    layers.append(QuantTarget("fq_act", act, None, 16))
    stages = Schedule.from_config(steps, ScheduleConfig(steps=steps, projection_periods=4, pruning_periods=3, **PAPER))
    opt = QASSO(module, qadg, layers, stages, lr=0.01, lr_quant=1e-3, base=base, target_sparsity=sparsity,
                group_divisible=unit, recovery_steps=recovery)
    return module, opt, layers, stages


def _run(module, opt, layers, stages, steps, start=0, check=None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    for k in range(start, steps):
        opt.zero_grad()
        loss = module(x).square().mean()
        loss = loss + sum((layer.quantizer.d * torch.randn((), generator=gen)).sum() for layer in layers)
        loss.backward()
        opt.step()
        if check:
            check(k)


@pytest.mark.parametrize("base,per_channel,forget", [("sgd", False, "spec"), ("adam", False, "spec"),
                                                     ("adamw", False, "spec"), ("sgd", True, "spec"),
                                                     ("adam", True, "spec"), ("adam", False, "budget"),
                                                     ("adam", True, "budget")])
def test_bits_stay_in_bounds_and_exactly_k_groups_are_zero(base, per_channel, forget):
    module, opt, layers, stages = _setup(base=base, per_channel=per_channel)
    opt.forget = forget
    total = 60

    def check(k):
        stage = stages.stage(k).name
        for layer in layers:
            b = layer.bits()
            if stage in ("projection", "pruning"):
                assert layer.low - 1e-4 <= float(b.min()) and float(b.max()) <= opt.upper_bits(layer, k) + 1e-4, \
                    (k, stage, b)
        if stage == "cooldown":
            assert len(opt.zeroed) == opt.planned

    _run(module, opt, layers, stages, total, check=check)
    zero = [v for v in opt.views if v.norm() == 0.0]
    assert len(zero) == opt.planned == opt.target_groups == round(0.5 * len(opt.views))
    assert {v.id for v in zero} == opt.zeroed
    for layer in layers:
        fb = layer.quantizer.frozen_bits
        assert layer.low <= float(fb.min()) and float(fb.max()) <= layer.high and torch.equal(fb, fb.round())
        assert float((layer.bits() - fb).abs().max()) < 1e-4  # d follows the frozen bits


def test_per_channel_forgetting_sets_only_the_d_of_Rs_output_channels():
    """Per-channel weights: a forgetting step sets d only on the output channels of R (they go
    to zero); every other channel's d takes the ordinary step (SGD on the quantizer group:
    d - lr_quant * grad, projected onto [d(b_u), d(b_l)])."""
    module, opt, layers, stages = _setup(per_channel=True)
    start = stages.pruning_start
    _run(module, opt, layers, stages, start + 1)  # the first pruning step picks R
    assert stages.stage(start + 1).name == "pruning" and opt.redundant
    out_channels = {}  # weight -> R's output channels (axis 0 here)
    for gid in opt.redundant:
        for s in opt._by_id[gid].slices:
            if s.axis == 0:
                out_channels.setdefault(s.name, set()).update(s.index.tolist())
    gen = torch.Generator().manual_seed(1)
    opt.zero_grad()
    (module(torch.randn(4, 3, 8, 8, generator=gen)).square().mean()
     + sum((layer.quantizer.d * torch.randn(layer.quantizer.d.shape, generator=gen)).sum() for layer in layers)).backward()
    before = {layer.weight: (layer.quantizer.d.detach().clone(), layer.quantizer.d.grad.clone()) for layer in layers
              if layer.weight}
    opt.step()
    set_by_rule = 0
    for layer in layers[:-1]:
        d0, grad = before[layer.weight]
        q = layer.quantizer
        lo, hi = layer.d_for(opt.upper_bits(layer)), layer.d_for(layer.low)
        ordinary = torch.maximum(torch.minimum(d0 - 1e-3 * grad, hi), lo)
        mine = sorted(out_channels.get(layer.weight, ()))
        others = [c for c in range(q.d.numel()) if c not in out_channels.get(layer.weight, ())]
        assert torch.allclose(q.d.detach()[others], ordinary[others], rtol=1e-6, atol=0), layer.weight
        set_by_rule += int(not torch.allclose(q.d.detach()[mine], ordinary[mine], rtol=1e-6, atol=0))
        b = layer.bits()[mine]
        assert bool((b >= layer.low - 1e-4).all() and (b <= opt.upper_bits(layer) + 1e-4).all())
    assert set_by_rule > 0  # R's channels do follow the forgetting rule, not the ordinary step


def test_forgetting_caps_d_never_coarsens_it():
    """The forgetting rule bounds d from above (descent). Per-tensor weights that R touches
    keep their ordinary step (d - lr_quant * grad, projected) wherever it is below the cap:
    through the whole pruning stage no layer ends coarser than that step. Setting d to the
    bound instead put every per-tensor layer R touched at b_l (4 bits) for good."""
    module, opt, layers, stages = _setup(per_channel=False)
    start, end = stages.pruning_start, stages.pruning_start + stages.pruning_steps
    _run(module, opt, layers, stages, start)
    gen = torch.Generator().manual_seed(1)
    capped = 0
    for k in range(start, end):
        opt.zero_grad()
        (module(torch.randn(4, 3, 8, 8, generator=gen)).square().mean()
         + sum((layer.quantizer.d * torch.randn((), generator=gen)).sum() for layer in layers)).backward()
        before = {layer.weight: (layer.quantizer.d.detach().clone(), layer.quantizer.d.grad.clone())
                  for layer in layers if layer.weight}
        opt.step()
        for layer in layers[:-1]:
            d0, grad = before[layer.weight]
            lo, hi = layer.d_for(opt.upper_bits(layer, k)), layer.d_for(layer.low)
            ordinary = torch.maximum(torch.minimum(d0 - 1e-3 * grad, hi), lo)
            d = layer.quantizer.d.detach()
            assert bool((d <= ordinary * (1 + 1e-6)).all()), (k, layer.weight, float(d), float(ordinary))
            capped += int(bool((d < ordinary * (1 - 1e-6)).any()))
    assert capped > 0  # the cap does bind on some steps: the rule is applied, not skipped
    below_8 = [float(layer.bits()) for layer in layers[:-1] if float(layer.bits()) < layer.high - 1e-3]
    assert len(below_8) < len(layers) - 1, below_8  # not every layer R touched went down to b_l


def test_kept_channel_counts_are_multiples_of_the_unit():
    assert allowed_removals(32, 16) == [0, 16]
    assert allowed_removals(64, 16) == [0, 16, 32, 48]
    assert allowed_removals(8, 16) == [0]
    module, opt, layers, stages = _setup(sparsity=0.5, unit=4)
    commits = []

    def aligned(k):  # after every commit, not only the last: the quality guard may stop at any
        info = stages.stage(k)
        if info.name != "pruning" or info.step_in_period != info.period_steps - 1:
            return
        commits.append(len(opt.zeroed))
        for cluster in {v.cluster for v in opt.views}:
            members = [v for v in opt.views if v.cluster == cluster]
            kept = sum(1 for v in members if v.id not in opt.zeroed)
            assert kept % 4 == 0 and kept >= 4, (k, cluster, kept)

    _run(module, opt, layers, stages, 60, check=aligned)
    assert len(commits) == 3 and 0 < commits[0] < commits[1] <= commits[2] == opt.planned  # progressive
    assert opt.planned <= opt.target_groups


def test_resume_gives_the_same_weights():
    module, opt, layers, stages = _setup()
    _run(module, opt, layers, stages, 60)
    straight = copy.deepcopy(module.state_dict())

    module2, opt2, layers2, stages2 = _setup()
    _run(module2, opt2, layers2, stages2, 30)
    saved_model, saved_opt = copy.deepcopy(module2.state_dict()), copy.deepcopy(opt2.state_dict())
    module3, opt3, layers3, stages3 = _setup()
    module3.load_state_dict(saved_model)
    opt3.load_state_dict(saved_opt)
    gen_state_skip = 30  # the test's data generator restarts: replay its draws
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    for k in range(60):
        draws = [torch.randn((), generator=gen) for _ in layers3]
        if k < gen_state_skip:
            continue
        opt3.zero_grad()
        loss = module3(x).square().mean() + sum((layer.quantizer.d * r).sum() for layer, r in zip(layers3, draws))
        loss.backward()
        opt3.step()
    for key, value in straight.items():
        assert torch.equal(value, module3.state_dict()[key]), key


def test_bit_formula_round_trip():
    q_m, t = torch.tensor(2.5), torch.tensor(1.0)
    for signed in (True, False):
        for b in (2.0, 4.0, 8.0, 16.0):
            assert abs(float(bits_of(d_of_bits(torch.tensor(b), q_m, t, signed), q_m, t, signed)) - b) < 1e-5


def test_bops_budget_is_met():
    """A target relative BOPs instead of a sparsity: QASSO picks K so the final model
    (frozen bits, removed groups) lands at or under the target."""
    from geta_onnx.config import QuantConfig
    from geta_onnx.optim import quant_targets
    from geta_onnx.quant.bops import kept_from_groups, relative_bops
    from geta_onnx.quant.calibrate import calibrate
    from geta_onnx.quant.sites import attach_quantizers

    proto, _ = models.resnet2()
    model = from_proto(proto)
    qadg = analyze(model)
    module = to_torch(model)
    config = QuantConfig(weight_bits=(4, 8), act_bits=(4, 8), float_thin_convs=False)  # the 3-channel stem too
    plan = attach_quantizers(module, model, config)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    calibrate(module, plan, [(x,)], config)

    def bops(removed):
        return relative_bops(plan, kept=kept_from_groups(plan, [qadg.group(g) for g in removed]))

    stages = Schedule.from_config(60, ScheduleConfig(steps=60, projection_periods=4, pruning_periods=3))
    target = 0.012
    opt = QASSO(module, qadg, quant_targets(plan, config), stages, lr=0.01, base="adam", target_sparsity=None,
                target_bops=target, bops_fn=bops, group_divisible=1)
    for _ in range(60):
        opt.zero_grad()
        module(x).square().mean().backward()
        opt.step()
    final = relative_bops(plan, kept=kept_from_groups(plan, [qadg.group(g) for g in opt.zeroed]), rounded=True)
    assert 0 < len(opt.zeroed) == opt.planned < len(opt.views)
    assert final <= target, (final, target)
    assert bops(set()) > target  # the budget really needed pruning


@pytest.mark.parametrize("cos_cg", [-0.9, -0.05, -0.011])
def test_forget_rate_keeps_descent_and_budget_forgets_faster(cos_cg):
    """alpha g + gamma c is a descent direction iff alpha ||g||^2 + gamma <c, g> > 0, i.e.
    gamma < alpha ||g|| / (|cos| ||c||). Both rules stay inside; "budget" uses the room up
    to the progressive rate 1 / (T - tau); cos >= 0 gives 1 / (T - tau) for both."""
    from geta_onnx.optim.qasso import ETA, forget_rate

    step_norm, c_norm, left = 1e-3 * 30.0, 1.5, 100  # alpha ||g|| with Adam-like |g_i| ~ 1, n = 900
    bound = step_norm / (-cos_cg * c_norm)
    spec, budget = (forget_rate(cos_cg, step_norm, c_norm, left, rule) for rule in ("spec", "budget"))
    assert spec == pytest.approx((1 - ETA) * bound)
    assert spec <= budget < bound
    assert budget == pytest.approx(min(1 / left, ETA * bound))
    assert forget_rate(0.2, step_norm, c_norm, left, "spec") == forget_rate(0.2, step_norm, c_norm, left, "budget") == 1 / left


def test_unknown_forget_rule_is_a_clear_error():
    from geta_onnx.config import OptimConfig
    from geta_onnx.errors import ConfigError

    with pytest.raises(ConfigError, match="forget"):
        OptimConfig(forget="fast")


def test_progress_bits_are_bounded_as_deployed():
    """In warm-up a quantizer's free bit width means float (it was 46.0 on the progress bar);
    the bar shows each layer's bits capped at the running upper bound, inside [b_l, start]."""
    from geta_onnx.geta import _Progress

    module, opt, layers, stages = _setup()
    for layer in layers:  # a range so wide the free bit width is far above 16
        layer.quantizer.d.data.fill_(1e-6)
    assert opt.mean_bits("weight") > 16
    shown = _Progress(opt).after_step(0, None)
    assert 4 <= float(shown["wbits"]) <= 16 and 4 <= float(shown["abits"]) <= 16


def test_deployable_widths_snap_up_inside_the_bounds():
    """Cool-down widths: 5-7 bits go up to the int8 container (a finer grid, never coarser),
    4 stays 4 where the runtime has an int4 kernel, and [b_l, b_u] always holds."""
    from geta_onnx.optim.targets import deployable_bits

    q = FakeQuantizer(1.0, 8)
    matmul = QuantTarget("m", q, "w", 16, widths=deployable_bits("ort", "MatMul", True, 2))
    conv = QuantTarget("c", q, "w", 16, widths=deployable_bits("ort", "Conv", True, 4))
    narrow = QuantTarget("n", FakeQuantizer(1.0, 6, bit_range=(4, 6)), "w", 16,
                         widths=deployable_bits("ort", "Conv", True, 4))
    free = QuantTarget("f", q, "w", 16)
    bits = torch.tensor([3.2, 4.4, 5.0, 6.6, 7.5, 8.0])
    assert matmul.deployable(bits).tolist() == [4, 4, 8, 8, 8, 8]
    assert conv.deployable(bits).tolist() == [8] * 6
    assert narrow.deployable(bits).tolist() == [6] * 6  # the user's upper bound wins over the container
    assert free.deployable(bits).tolist() == [4, 4, 5, 7, 8, 8]
    assert deployable_bits("tensorrt", "MatMul", True, 2) == (8,) and deployable_bits("ort", "MatMul", False, 2) == (8,)
    assert deployable_bits("ort", "MatMul", True, 3) == (8,)  # MatMulNBits takes a 2-D weight


def test_cooldown_freezes_deployable_widths():
    """With ort widths, every conv / Gemm weight enters cool-down at 8 bits whatever it learned
    in [4, 8]; without them (free widths) the learned widths stay."""
    from geta_onnx.config import QuantConfig
    from geta_onnx.optim import quant_targets
    from geta_onnx.quant.calibrate import calibrate
    from geta_onnx.quant.sites import attach_quantizers

    frozen = {}
    for profile in ("ort", None):
        torch.manual_seed(0)
        model = from_proto(models.resnet2()[0])
        qadg, module = analyze(model), to_torch(model)
        config = QuantConfig(weight_bits=(4, 8), act_bits=(8, 8), float_thin_convs=False)
        plan = attach_quantizers(module, model, config)
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        calibrate(module, plan, [(x,)], config)
        stages = Schedule.from_config(40, ScheduleConfig(steps=40, projection_periods=2, pruning_periods=2))
        targets = quant_targets(plan, config, profile)
        opt = QASSO(module, qadg, targets, stages, lr=0.01, base="adam", target_sparsity=0.25, group_divisible=1)
        for t in targets:  # as the forgetting rule leaves a layer: at b_l
            t.quantizer.set_bits(4.0)
        for _ in range(40):
            opt.zero_grad()
            module(x).square().mean().backward()
            opt.step()
        frozen[profile] = [float(t.quantizer.frozen_bits.mean()) for t in targets if t.weight]
    assert frozen["ort"] and all(b == 8 for b in frozen["ort"])
    assert all(4 <= b <= 8 for b in frozen[None]) and min(frozen[None]) < 8
