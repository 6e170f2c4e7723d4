"""Models at the newest opset the exporters write (21, torch's dynamo exporter): compress
keeps the opset (no conversion either way), and the output passes onnx.checker's full
check and loads in onnxruntime. The other end of the range (opsets 11 / 12, upgraded for
per-channel Q/DQ) is covered by tests/test_realworld_files.py and tests/graph/test_load.py."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from geta_onnx.cli import main
from samples import export_zoo, zoo

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["resnet", "bert"])
def test_compress_keeps_opset_21(tmp_path, name):
    model = tmp_path / f"{name}.onnx"
    try:
        export_zoo.export(name, "dynamo", model, opset=21)
    except export_zoo.ExportFailed as e:
        pytest.skip(f"the dynamo exporter cannot export {name} here: {e}")
    assert onnx.load(str(model)).opset_import[0].version == 21
    inputs = zoo.get(name).example_inputs(batch=96, seed=3)  # one array per input name, label-free
    np.savez(tmp_path / "data.npz", **{k: v.numpy() for k, v in inputs.items()})
    out = tmp_path / "small.onnx"
    result = CliRunner().invoke(main, ["compress", str(model), "--data", f"npz:{tmp_path / 'data.npz'}", "-o", str(out),
                                       "--steps", "20", "--batch-size", "16", "--target-sparsity", "0.3",
                                       "--weight-bits", "4:8", "--batch", "1,8", "--no-plots", "--no-progress",
                                       "--skip-data-check"])
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [21]
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
