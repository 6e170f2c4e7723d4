"""bench.choice.pick: which export ships, from measured speedups and quality."""
import pytest

from geta_onnx.bench.choice import FASTER_BY, QUALITY_TOLERANCE, Candidate, kernels_suspect, pick


def _pair(int8, flt, q8=None, qf=None, metric="accuracy"):
    return [Candidate("int8", int8, q8, metric), Candidate("float", flt, qf, metric)]


def test_int8_stays_when_the_twin_is_not_clearly_faster():
    below = 1 + FASTER_BY * 0.8
    choice = pick(_pair({"1": 2.0, "32": 3.0}, {"1": 2.0 * below, "32": 3.0 * below}))
    assert choice.name == "int8" and "not faster" in choice.why


def test_a_clearly_faster_twin_ships():
    choice = pick(_pair({"1": 2.0, "32": 3.0}, {"1": 3.0, "32": 4.0}, 0.90, 0.90))
    assert choice.name == "float" and "faster" in choice.why


def test_an_int8_model_slower_than_the_original_is_replaced_even_by_a_slightly_faster_twin():
    """int8 0.97x at batch 1 (slower), twin 1.01x: not FASTER_BY faster, but never slower."""
    choice = pick(_pair({"1": 0.97}, {"1": 1.01}, 0.90, 0.90))
    assert choice.name == "float" and "slower than the original at batch 1 (0.97x)" in choice.why


def test_when_both_are_slower_the_faster_one_ships():
    assert pick(_pair({"1": 0.6}, {"1": 0.9}, 0.9, 0.9)).name == "float"
    assert pick(_pair({"1": 0.9}, {"1": 0.6}, 0.9, 0.9)).name == "int8"


@pytest.mark.parametrize("metric, q8, qf, ships", [
    ("accuracy", 0.90, 0.90 - QUALITY_TOLERANCE * 1.5, "int8"),  # loses more than the tolerance
    ("accuracy", 0.90, 0.90 - QUALITY_TOLERANCE * 0.5, "float"),
    ("cosine", 0.95, 0.97, "float"),
    ("mse", 0.010, 0.012, "int8"),  # lower is better: 20 % worse
    ("mse", 0.010, 0.0104, "float"),
])
def test_a_faster_twin_must_score_as_well(metric, q8, qf, ships):
    choice = pick(_pair({"1": 1.5}, {"1": 2.5}, q8, qf, metric))
    assert choice.name == ships, choice.why
    if ships == "int8":
        assert metric in choice.why


@pytest.mark.parametrize("samples, ships", [(16, "float"), (10000, "int8")])
def test_an_int8_model_slower_than_the_original_gives_way_to_a_twin_within_the_sampling_noise(samples, ships):
    """ppocr_cls in the zoo: int8 0.89x (slower than the original), the twin 1.18x, agreement
    0.8125 vs 0.6875 on 16 held-out samples (2 samples): within one standard error of the
    difference (0.14), so the twin ships. On 10,000 samples the same gap is real: int8 stays."""
    int8 = Candidate("int8", {"1": 0.89}, 0.8125, "agreement", samples)
    twin = Candidate("float", {"1": 1.18}, 0.6875, "agreement", samples)
    assert pick([int8, twin]).name == ships


def test_the_sampling_noise_counts_only_when_int8_is_slower_than_the_original():
    int8 = Candidate("int8", {"1": 1.5}, 0.8125, "agreement", 16)
    twin = Candidate("float", {"1": 2.5}, 0.6875, "agreement", 16)
    assert pick([int8, twin]).name == "int8"  # int8 already pays: the strict tolerance holds


def test_one_candidate():
    assert pick([Candidate("int8", {"1": 0.5})]).name == "int8"


def test_geometric_mean_over_batches():
    """2x at one batch and 0.5x at another is no speedup overall."""
    assert Candidate("x", {"1": 2.0, "32": 0.5}).mean_speedup == pytest.approx(1.0)


@pytest.mark.parametrize("metric, q8, qf, ships", [
    ("accuracy", 0.8164, 0.9385, "float"),  # Fashion-MNIST on an AVX2-only host (docs/deployment.md)
    ("accuracy", 0.9300, 0.9320, "int8"),  # a few samples apart: rounding, not a wrong kernel
    ("cosine", 0.90, 0.99, "float"),
    ("mse", 0.020, 0.010, "float"),  # lower is better: twice the twin's error
    ("mse", 0.0102, 0.010, "int8"),
])
def test_an_int8_model_that_scores_below_its_own_float_twin_gives_way_whatever_the_speed(metric, q8, qf, ships):
    """Without the int8 file's own QDQ math measured, int8 far below its twin (the same weights)
    is taken for a runtime that does not compute the model (u8s8 saturation without VNNI), even
    where int8 is 2x faster."""
    int8 = Candidate("int8", {"1": 3.0, "32": 4.0}, q8, metric, 10000)
    twin = Candidate("float", {"1": 1.5, "32": 2.0}, qf, metric, 10000)
    choice = pick([int8, twin])
    assert choice.name == ships, choice.why
    if ships == "float":
        assert "int8 kernels on this CPU do not compute it exactly" in choice.why and f"{metric} is" in choice.why
    else:
        assert "not faster" in choice.why


@pytest.mark.parametrize("qdq, twin_speed, ships, why", [
    (0.9380, (1.5, 2.0), "float", "compute another model"),  # the QDQ math is the twin's: the kernels
    (0.8170, (1.5, 2.0), "int8", "not faster"),  # the QDQ math scores as the kernels: the rounding's cost
    (0.8170, (4.0, 5.0), "float", "faster than int8 at no quality cost"),
])
def test_the_int8_files_own_qdq_math_tells_the_kernels_from_the_activations_rounding(qdq, twin_speed, ships, why):
    """Rule 0 with `qdq_math` (the int8 file scored with no fused kernels): only an int8 score
    below its own QDQ math is the kernels' (the twin ships whatever the speed, the why gives
    both figures); at its QDQ math the loss is the activations' rounding, a property of the
    int8 model, and speed and quality decide as for any two exports."""
    int8 = Candidate("int8", {"1": 3.0, "32": 4.0}, 0.8164, "accuracy", 10000)
    twin = Candidate("float", dict(zip(("1", "32"), twin_speed)), 0.9385, "accuracy", 10000)
    unfused = Candidate("int8", int8.speedup, qdq, "accuracy", 10000)
    assert kernels_suspect([int8, twin])
    choice = pick([int8, twin], unfused)
    assert choice.name == ships and why in choice.why, choice.why
    if ships == "float" and why == "compute another model":
        assert "0.8164" in choice.why and "0.9380" in choice.why


def test_no_suspect_without_a_loss_against_the_twin():
    """The trigger is the twin's score: int8 within the tolerance of it needs no second scoring."""
    int8 = Candidate("int8", {"1": 3.0}, 0.9300, "accuracy", 10000)
    assert not kernels_suspect([int8, Candidate("float", {"1": 1.5}, 0.9320, "accuracy", 10000)])
    assert not kernels_suspect([int8])
