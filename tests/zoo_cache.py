"""Zoo models exported once per test process (both exporters), cached on disk."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

_DIR = Path(tempfile.mkdtemp(prefix="geta-zoo-"))
_DONE: dict[tuple[str, str], Path | str] = {}


def zoo_path(name: str, exporter: str) -> Path:
    """Path of the exported model; skips the test when that exporter cannot export it."""
    from samples import export_zoo

    key = (name, exporter)
    if key not in _DONE:
        path = _DIR / f"{name}.{exporter}.onnx"
        try:
            export_zoo.export(name, exporter, path)
            _DONE[key] = path
        except export_zoo.ExportFailed as e:
            _DONE[key] = str(e)
    value = _DONE[key]
    if isinstance(value, str):
        pytest.skip(f"exporter cannot export this model: {value}")
    return value
