"""An input model that is already a QDQ model (graph/quantized.py): compress and verify train
and check the float model it computes, and compare with the file as given."""
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from geta_onnx.cli import main
from geta_onnx.graph import load_model
from geta_onnx.graph.quantized import as_float, quantized_weights
from tests.e2e.digits import write_problem


@pytest.fixture(scope="module")
def ptq(tmp_path_factory):
    """(fp32 digits model, its onnxruntime static QDQ quantization: per-channel int8 weights,
    uint8 activations, full range, npz)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("ptq")
    fp32, npz, _ = write_problem(folder)
    x = np.load(npz)["x"]

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": x[i:i + 32]} for i in range(0, 128, 32)])

        def get_next(self):
            return next(self.batches, None)

    int8 = folder / "digits_int8.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice goes to the root logger
    quantize_static(str(fp32), str(int8), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return fp32, int8, npz


def test_the_float_model_a_qdq_file_computes(ptq):
    """as_float folds every constant DequantizeLinear into the float weight it yields and
    drops the activations' rounding: no quantized weight is left, the file as given stays the
    model's reference (run_path), and the float model agrees with the fp32 model the file was
    quantized from (8-bit weights: top-1 on >= 97 % of the held-out digits)."""
    fp32, int8, npz = ptq
    model = load_model(int8)
    assert quantized_weights(model.proto) > 0 and quantized_weights(load_model(fp32).proto) == 0
    floated, note = as_float(model)
    assert quantized_weights(floated.proto) == 0 and "already quantized" in note
    assert floated.run_path == model.run_path == int8
    assert not any(n.op_type in ("DequantizeLinear", "QuantizeLinear") for n in floated.proto.graph.node)
    x = np.load(npz)["eval_x"]
    run = lambda proto: ort.InferenceSession(proto.SerializeToString(),  # noqa: E731
                                             providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    agree = (run(floated.proto).argmax(1) == run(onnx.load(str(fp32))).argmax(1)).mean()
    assert agree >= 0.97, agree
    original = load_model(fp32)
    assert as_float(original) == (original, None)  # a float model is left as it is


def test_compress_and_verify_an_already_quantized_file(ptq, tmp_path):
    """Bridged as it is, an int8 QDQ file has no float weight to train (compress stopped at
    "output 0 does not depend on any weight", verify with an internal error). Both now say
    what they do and run on its float model; the output is a valid compressed QDQ file whose
    quality is compared with the file as given."""
    _, int8, npz = ptq
    checked = CliRunner().invoke(main, ["verify", str(int8), "--max-groups", "16"])
    assert checked.exit_code == 0, checked.output
    assert "already quantized" in checked.output and "PASS  bridge parity" in checked.output
    compress_quantized(int8, npz, tmp_path / "small.onnx", "already quantized")


def compress_quantized(model, npz, out, says: str) -> onnx.ModelProto:
    """A short compress of an already-quantized digits model: it says `says`, removes groups,
    trains (40 steps: not chance, 0.1) and writes a valid file onnxruntime loads."""
    result = CliRunner().invoke(main, ["compress", str(model), "--data", f"npz:{npz}", "-o", str(out), "--steps", "40",
                                       "--batch-size", "32", "--target-sparsity", "0.3", "--group-divisible", "8",
                                       "--batch", "1", "--no-plots", "--no-progress", "--force"])
    assert result.exit_code == 0, result.output
    assert says in result.output
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["group_sparsity"] > 0 and report["accuracy"]["original"] > 0.9
    assert report["accuracy"]["compressed"] > 0.5
    onnx.checker.check_model(str(out), full_check=True)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def test_inspect_describes_the_float_model_compress_trains(ptq, tmp_path):
    """inspect of an int8 QDQ file counted its integer weights as prunable but not as
    parameters (a prunable share of 21,587 % on the digits file); it now says the file is
    quantized and gives the figures of the float model compress trains."""
    fp32, int8, _ = ptq
    out = tmp_path / "inspect.json"
    result = CliRunner().invoke(main, ["inspect", str(int8), "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert "already quantized" in r["quantized"] and "\nquantized " in result.output
    assert 0.9 < r["groups"]["prunable_param_share"] <= 1.0
    plain = tmp_path / "plain.json"
    assert CliRunner().invoke(main, ["inspect", str(fp32), "--json", str(plain)]).exit_code == 0
    original = json.loads(plain.read_text())
    assert original["quantized"] is None
    # the float weights, as many as the model quantized, and each activation clamp's two bounds
    assert original["params"] <= r["params"] <= original["params"] + 2 * r["op_histogram"].get("Clip", 0)
