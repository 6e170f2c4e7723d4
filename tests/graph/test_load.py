"""Bad input gives one clear GetaError naming the file, never a traceback; good input loads."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from geta_onnx.cli import main
from geta_onnx.errors import ModelLoadError
from geta_onnx.graph import load_model
from tests.helpers import make_model, rng


def _tiny(opset=17):
    r = rng()
    x = r.standard_normal((1, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    return make_model(nodes, {"x": x}, ["y"], {"w": r.standard_normal((3, 4)).astype(np.float32),
                                               "b": r.standard_normal(3).astype(np.float32)}, opset=opset)


def test_loads_a_valid_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_tiny(), path)
    before = path.read_bytes()
    model = load_model(path)
    assert model.opset() == 17 and [n.op_type for n in model.nodes] == ["Gemm"]
    assert path.read_bytes() == before  # loading never writes


def assert_refused(path, *fragments):
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for f in fragments:
        assert f in msg, msg
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "error:" in result.output


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.onnx", "no such file")


def test_directory(tmp_path):
    assert_refused(tmp_path, "directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    assert_refused(tmp_path / "e.onnx", "empty")


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "x.onnx").write_text("this is not a protobuf, just some text\n" * 10)
    assert_refused(tmp_path / "x.onnx", "not a valid ONNX")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_file(tmp_path, keep):
    data = _tiny().SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    assert_refused(path, "ONNX")


@pytest.mark.parametrize("opset", [9, 22])
def test_unsupported_opset(tmp_path, opset):
    m = _tiny(opset=17)
    m.opset_import[0].version = opset
    path = tmp_path / "o.onnx"
    onnx.save(m, path)
    assert_refused(path, f"opset {opset}", "version_converter")


def _external(tmp_path, location):
    m = _tiny()
    w = next(t for t in m.graph.initializer if t.name == "w")
    raw = numpy_helper.to_array(w).tobytes()
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = w.external_data.add()
        e.key, e.value = k, v
    path = tmp_path / "ext.onnx"
    path.write_bytes(m.SerializeToString())
    return path, raw


def test_external_data_loads(tmp_path):
    path, raw = _external(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(raw)
    model = load_model(path)
    assert model.array("w").shape == (3, 4)


def test_external_data_missing(tmp_path):
    path, _ = _external(tmp_path, "weights.bin")
    assert_refused(path, "weights.bin", "missing")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd"])
def test_external_data_outside_folder_refused(tmp_path, location):
    sub = tmp_path / "model"
    sub.mkdir()
    path, raw = _external(sub, location)
    (tmp_path / "outside.bin").write_bytes(raw)
    assert_refused(path, "outside the model's folder")


def test_checker_failure(tmp_path):
    m = _tiny()
    m.graph.node[0].input[1] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(m.SerializeToString())
    assert_refused(path, "checker")
