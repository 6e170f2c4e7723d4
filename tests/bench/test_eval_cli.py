"""`geta-onnx eval`: accuracy with labels, fidelity to a reference, clear errors."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from geta_onnx.cli import main


def test_eval_accuracy_on_eval_split(digits, tmp_path):
    model, npz, fp32_acc = digits
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{npz}", "--batch-size", "50",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["metric"] == "accuracy" and r["split"] == "eval" and r["samples"] == 360
    assert r["value"] == pytest.approx(fp32_acc, abs=1e-6)  # onnxruntime agrees with the torch model it came from
    assert "accuracy: " in result.output


def test_eval_reference_same_model(digits, tmp_path):
    model, npz, _ = digits
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{npz}", "--reference", str(model),
                                       "--limit", "100", "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["metric"] == "agreement" and r["value"] == 1.0 and r["samples"] == 100
    assert r["cosine"] == pytest.approx(1.0) and r["mse"] == 0.0 and r["max_abs"] == 0.0
    assert r["accuracy"] == r["reference_accuracy"]  # labels present: both accuracies reported too


def test_eval_without_labels(digits, tmp_path):
    model, npz, _ = digits
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.load(npz)["x"][:40])  # no eval split, no labels: the train split is used
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{unlabelled}"])
    assert result.exit_code == 1 and "no labels" in result.output and "--reference" in result.output
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{unlabelled}", "--reference", str(model),
                                       "--metric", "cosine"])
    assert result.exit_code == 0, result.output
    assert "cosine: 1.0000  (40 samples of the train split" in result.output


@pytest.mark.parametrize("args, code, fragment", [
    (["--output", "2"], 2, "index 2 does not exist"),
    (["--metric", "bleu"], 2, "--metric"),
    (["--batch-size", "0"], 2, "--batch-size"),
])
def test_eval_option_errors(digits, args, code, fragment):
    model, npz, _ = digits
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{npz}", *args])
    assert result.exit_code == code and fragment in result.output


def test_eval_bad_data_spec(digits, tmp_path):
    model, _, _ = digits
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{tmp_path / 'missing.npz'}"])
    assert result.exit_code == 1 and "missing.npz" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("skip,limit", [(75, 100), (300, 0), (0, 60)])
def test_evaluate_onnx_skips_the_first_samples(digits, skip, limit):
    """`skip` (compress's check on the eval samples the quality guard never scored) leaves the
    split's first samples out, mid-batch too: the accuracy is that of samples skip.. in
    onnxruntime, run here on the arrays directly."""
    from geta_onnx.bench import evaluate_onnx
    from geta_onnx.bench.session import open_session
    from geta_onnx.config import DataConfig
    from geta_onnx.graph import load_model
    from geta_onnx.train import load_data

    model, npz, _ = digits
    data = load_data(f"npz:{npz}", DataConfig(batch_size=50), model=load_model(model), seed=0)
    r = evaluate_onnx(model, data, reference=model, skip=skip, limit=limit)
    arrays = np.load(npz)
    end = skip + limit if limit else len(arrays["eval_y"])
    x, y = arrays["eval_x"][skip:end], arrays["eval_y"][skip:end]
    session = open_session(str(model))
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    assert r["samples"] == len(y) and r["agreement"] == 1.0
    assert r["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()), abs=1e-9)


def test_evaluate_onnx_skip_past_the_split_says_so(digits):
    from geta_onnx.bench import evaluate_onnx
    from geta_onnx.config import DataConfig
    from geta_onnx.errors import DataError
    from geta_onnx.graph import load_model
    from geta_onnx.train import load_data

    model, npz, _ = digits
    data = load_data(f"npz:{npz}", DataConfig(batch_size=50), model=load_model(model), seed=0)
    with pytest.raises(DataError, match="no samples after its first 360"):
        evaluate_onnx(model, data, skip=360)


def test_eval_unfused_runs_the_file_with_the_basic_optimizations(digits, tmp_path, monkeypatch):
    """--unfused (a QDQ file's own math, for a target whose int8 kernels compute it exactly):
    MODEL's session is opened with the basic optimizations, the reference's as deployed.
    tests/quant/test_weight_range.py checks that the basic level leaves a QDQ conv unfused."""
    from geta_onnx.bench import accuracy

    model, npz, fp32_acc = digits
    opened = []
    real = accuracy.open_session
    monkeypatch.setattr(accuracy, "open_session", lambda path, threads, unfused=False: (
        opened.append((str(path), unfused)), real(path, threads, unfused))[1])
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", str(model), "--data", f"npz:{npz}", "--unfused", "--reference",
                                       str(model), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert opened == [(str(model), True), (str(model), False)]
    r = json.loads(out.read_text())
    assert r["accuracy"] == pytest.approx(fp32_acc, abs=1e-6) and r["agreement"] == 1.0  # a float model: the same


@pytest.mark.parametrize("saturates, args, noted", [
    (True, [], True), (False, [], False), (True, ["--unfused"], False)])
def test_eval_notes_when_this_cpus_int8_kernels_saturate_the_files_weights(resnet_pair, tmp_path, monkeypatch,
                                                                          saturates, args, noted):
    """A full-range int8 file (onnxruntime's own static quantizer: weights up to |q| = 127) on a
    CPU whose fused kernels saturate such weights: the score is of another model than the QDQ
    file's math, and eval says so (stderr, and the JSON's int8_kernels_saturate); not on a CPU
    that computes them exactly, nor with --unfused, which scores the file's own math."""
    from geta_onnx.quant import weight_range

    fp32, int8 = resnet_pair
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: saturates)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", str(int8), "--data", f"npz:{npz}", "--reference", str(fp32),
                                       "--json", str(out), *args])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r.get("int8_kernels_saturate", False) is noted
    assert ("saturate" in result.stderr and "--unfused" in result.stderr) is noted
    assert "note:" not in result.stdout


def test_the_widest_int8_weight_of_a_file(resnet_pair, tmp_path, monkeypatch):
    """weight_range.widest_int8_weight reads the INT8 weights DequantizeLinear or an integer op
    reads: the probe conv's grid, onnxruntime's full-range quantizers' 127 (static QDQ; dynamic,
    whose MatMulInteger / ConvInteger read them), none in a float model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from geta_onnx.quant import weight_range

    fp32, int8 = resnet_pair
    assert weight_range.widest_int8_weight(onnx.load(str(fp32))) == 0
    assert weight_range.widest_int8_weight(onnx.load(str(int8))) == 127
    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    assert {"ConvInteger"} <= {n.op_type for n in onnx.load(str(dynamic)).graph.node}
    assert weight_range.widest_int8_weight(onnx.load(str(dynamic))) == 127
    for level in (63, 127):
        assert weight_range.widest_int8_weight(onnx.load_from_string(weight_range._probe_model(level))) == level
    # eval's note: --unfused for a QDQ file; a file of integer ops has no unfused form; none on the 7-bit grid
    monkeypatch.setattr(weight_range, "int8_saturates", lambda: True)
    assert "--unfused scores" in weight_range.saturation_note(int8)
    assert "no unfused form" in weight_range.saturation_note(dynamic)
    seven = tmp_path / "seven.onnx"
    seven.write_bytes(weight_range._probe_model(63))
    assert weight_range.saturation_note(seven) is None
