"""The bundled sample of the README's first command: the committed files load, and the
committed fp32 model has the accuracy make.py reported (99.44 %) on the npz's eval split."""
from pathlib import Path

import pytest

from geta_onnx.bench import evaluate_onnx
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.settings import load_settings
from geta_onnx.train import load_data

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "digits"


def test_bundled_digits_sample_is_a_trained_model():
    model = load_model(SAMPLE / "digits_cnn.onnx")
    data = load_data(f"npz:{SAMPLE / 'digits.npz'}", DataConfig(batch_size=128, shuffle=False), model=model)
    assert data.n_eval == 360 and data.has_labels
    result = evaluate_onnx(SAMPLE / "digits_cnn.onnx", data)
    assert result["split"] == "eval" and result["accuracy"] >= 0.99


@pytest.mark.parametrize("config", sorted((SAMPLE.parent).glob("*/compress.toml")), ids=lambda p: p.parent.name)
def test_sample_settings_files_load(config):
    settings = load_settings(config)  # unknown keys and bad values raise ConfigError
    assert settings.prune.target_sparsity is not None and settings.quant.weight_bits[1] <= 8
