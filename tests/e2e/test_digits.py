"""End to end on scikit-learn digits: a small BatchNorm CNN trained in fp32, exported to
ONNX, then ONE GETA run at 50 % group sparsity with weight and activation bits in [4, 8]:
accuracy stays within 2 points of fp32, exactly K groups are exactly zero, every bit width
lies in its range."""
import pytest

from geta_onnx.config import DataConfig, OptimConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig
from geta_onnx.geta import run_geta
from geta_onnx.graph import load_model
from geta_onnx.train import load_data
from tests.e2e.digits import write_problem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    onnx_path, npz, fp32_acc = write_problem(tmp_path_factory.mktemp("digits"))
    model = load_model(onnx_path)
    data = load_data(f"npz:{npz}", DataConfig(batch_size=32), model=model, seed=0)
    # the paper's schedule and the task loss, not the fine-tuning defaults: with activations
    # projected down to 4 bits, this 1,200-step run scored 99.2 % so, 98.1 % with the default
    # schedule and 96.9 % with distillation added (1 thread; docs/algorithm.md section 3)
    result = run_geta(model, data, quant=QuantConfig(weight_bits=(4, 8), act_bits=(4, 8)),
                      prune=PruneConfig(target_sparsity=0.5, group_divisible=1),
                      optim=OptimConfig(optimizer="adam", lr=1e-3),
                      schedule=ScheduleConfig(steps=1200, warmup=0.1, projection=0.2, pruning_start=0.3, pruning=0.4),
                      train_config=TrainConfig(progress=False, loss="task"))
    return result, fp32_acc


def test_accuracy_within_two_points_of_fp32(run):
    result, fp32_acc = run
    assert fp32_acc > 0.95
    assert result.metrics["accuracy"] >= fp32_acc - 0.02, (result.metrics["accuracy"], fp32_acc)


def test_exactly_k_groups_are_exactly_zero(run):
    result, _ = run
    opt = result.optimizer
    k = round(0.5 * len(opt.views))
    zero = {v.id for v in opt.views if v.norm() == 0.0}
    assert zero == result.removed_groups and len(zero) == k == opt.planned


def test_bits_inside_their_ranges_and_bops_fall(run):
    result, _ = run
    for name, q in result.plan.quantizers().items():
        assert q.frozen_bits is not None, name
        bits = q.frozen_bits.float()
        assert bool(((bits >= 4) & (bits <= 8)).all()), (name, bits)
    assert 0 < result.relative_bops < 64 / 1024  # below an all-8-bit unpruned model
