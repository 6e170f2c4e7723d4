"""Models shared by the bench tests: the zoo ResNet, its int8 QDQ version (onnxruntime's own
static quantizer), and the digits problem (a trained model plus an npz with an eval split)."""
import logging

import numpy as np
import pytest

from tests.zoo_cache import zoo_path


@pytest.fixture(scope="session")
def resnet_pair(tmp_path_factory):
    """(fp32 path, int8 QDQ path)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = zoo_path("resnet", "legacy")

    class Calibration(CalibrationDataReader):  # two seeded batches: calibration quality is not under test
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"image": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    int8 = tmp_path_factory.mktemp("bench") / "resnet.int8.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice goes to the root logger
    quantize_static(str(fp32), str(int8), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    return fp32, int8


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """(model.onnx, data.npz with x / y / eval_x / eval_y, fp32 eval accuracy)."""
    from tests.e2e.digits import write_problem

    return write_problem(tmp_path_factory.mktemp("digits"))
