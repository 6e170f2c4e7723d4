"""Atomic writes keep the mode a plain write gives (not mkstemp's 0600), and the progress
bar shows bit widths a user can read."""
from __future__ import annotations

import os

import pytest

from geta_onnx.io import write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "report.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_replaced_files_keep_their_mode(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    path.chmod(0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".*tmp"))
