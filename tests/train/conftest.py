import pytest

from tests.train.models import bridged, cnn_model, token_model


@pytest.fixture(scope="session")
def cnn_path(tmp_path_factory):
    """(N, 1, 8, 8) -> (N, 3) with Conv, BatchNorm (unfused), Dropout, Gemm."""
    return cnn_model(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="session")
def token_path(tmp_path_factory):
    """(N, 5) int64 token ids -> (N, 5, 6)."""
    return token_model(tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def cnn(cnn_path):
    """A fresh (OnnxModel, OnnxModule) per test: training mutates the module."""
    return bridged(cnn_path)
