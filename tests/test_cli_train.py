"""`geta-onnx train`: options, config files, outputs and clear errors."""
import json

import pytest
from click.testing import CliRunner

from geta_onnx.cli import main
from tests.e2e.digits import write_problem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return write_problem(tmp_path_factory.mktemp("cli"))


def test_train_writes_checkpoint_and_summary(problem, tmp_path):
    model, npz, _ = problem
    config = tmp_path / "run.toml"
    config.write_text('[quant]\nact_bits = [6, 8]\n[schedule]\nsteps = 160\n[data]\nbatch_size = 32\n')
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(model), "--data", f"npz:{npz}", "-o", str(out),
                                       "--config", str(config), "--target-sparsity", "0.25", "--weight-bits", "4:8",
                                       "--group-divisible", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "checkpoint.safetensors").is_file()
    assert summary["settings"]["quant"]["act_bits"] == [6, 8]  # from the file
    assert summary["settings"]["prune"]["target_sparsity"] == 0.25  # from the command line
    assert summary["removed_groups"] == summary["target_groups"] == round(0.25 * summary["prunable_groups"])
    assert all(4 <= b <= 8 for b in summary["bits"].values())
    assert "groups removed" in result.output


def test_train_model_is_the_library_function_behind_the_command(problem, tmp_path):
    """geta_onnx.train_model, as `geta-onnx train` runs it: the returned summary is the file's,
    and a second run into the same folder is refused without force."""
    import geta_onnx
    from geta_onnx.errors import ConfigError
    from geta_onnx.settings import Settings

    model, npz, _ = problem
    settings = Settings().override("schedule", steps=40).override("data", batch_size=32).override(
        "prune", group_divisible=1).override("train", progress=False)
    out = tmp_path / "lib"
    summary = geta_onnx.train_model(model, f"npz:{npz}", out, settings)
    assert json.loads(json.dumps(summary, default=str)) == json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["removed_groups"] > 0 and (out / "checkpoint.safetensors").is_file()
    with pytest.raises(ConfigError, match="force"):
        geta_onnx.train_model(model, f"npz:{npz}", out, settings)


@pytest.mark.parametrize("text, fragment", [
    ("[prune]\ntarget_sparsty = 0.5\n", "did you mean 'target_sparsity'"),
    ("[pruning]\n", "did you mean 'prune'"),
    ("[quant]\nweight_bits = [8, 4]\n", "weight_bits"),
    ("[prune\n", "run.toml"),
    ("[prune]\nguard_recovery = 1.0\n", "guard_recovery"),
    ("[prune]\nguard_retry = 1.0\n", "guard_retry"),
    ("[prune]\nguard_probe = -0.5\n", "guard_probe"),
    ("[prune]\nguard_regrow = \"yes\"\n", "guard_regrow"),
    ("[prune]\nguard_data = \"test\"\n", "guard_data"),
    ("[quant]\nreduce_range = \"yes\"\n", "quant.reduce_range"),
    ("[quant]\nreduce_range = \"on\"\n[export]\nprofile = \"tensorrt\"\n", "TensorRT's int8 kernels do not saturate"),
])
def test_bad_config_is_one_clear_line(problem, tmp_path, text, fragment):
    model, npz, _ = problem
    config = tmp_path / "run.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["train", str(model), "--data", f"npz:{npz}", "-o", str(tmp_path / "o"),
                                       "--config", str(config)])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_bad_option_value_is_a_usage_error(problem, tmp_path):
    model, npz, _ = problem
    result = CliRunner().invoke(main, ["train", str(model), "--data", f"npz:{npz}", "-o", str(tmp_path / "o"),
                                       "--weight-bits", "four"])
    assert result.exit_code == 2 and "LOW:HIGH" in result.output


def test_bad_data_spec_names_it(problem, tmp_path):
    model, _, _ = problem
    result = CliRunner().invoke(main, ["train", str(model), "--data", "npz:/no/such.npz", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "/no/such.npz" in result.output


def test_yaml_settings_file(tmp_path):
    from geta_onnx.settings import load_settings

    path = tmp_path / "run.yaml"
    path.write_text("prune:\n  target_sparsity: 0.3\nquant:\n  weight_bits: [3, 6]\n")
    s = load_settings(path)
    assert s.prune.target_sparsity == 0.3 and s.quant.weight_bits == (3, 6)
