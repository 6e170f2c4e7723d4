"""Atomic file writes: outputs appear whole or not at all, and never replace an input; and
the per-machine cache folder (cache_root).

The file gets the mode a plain open() would give it (0666 less the umask; the old file's mode
when one is replaced), not the 0600 of the temporary file it is written as."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _mode_for(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def cache_root() -> Path:
    """What geta-onnx keeps per machine (latency tables, the compiled fake-quant kernel):
    $GETA_ONNX_CACHE, else ~/.cache/geta-onnx."""
    return Path(os.environ.get("GETA_ONNX_CACHE") or Path.home() / ".cache" / "geta-onnx")
