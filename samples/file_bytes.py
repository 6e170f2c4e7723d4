"""Real files' bytes as model input, made offline from this machine's Python installation
(text, source, ELF libraries, archives...): the data of magika-style content-type models
(tests/test_realworld_files.py, tools/realworld_report.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def file_byte_features(n: int, size: int = 1024, pad: int = 256, seed: int = 0) -> np.ndarray:
    """Magika's input for `n` real files of this machine (the Python installation's modules,
    libraries and data: text, source, ELF, archives...): the first `size` bytes after
    leading whitespace, then the last `size` bytes before trailing whitespace, each padded
    with `pad` (magika's features, [n, 2 * size] int32)."""
    root = Path(os.__file__).parent
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size >= 16)
    rows = []
    for i in np.random.default_rng(seed).permutation(len(paths)):
        if len(rows) == n:
            break
        try:
            data = paths[i].read_bytes()
        except OSError:  # unreadable here: take another file
            continue
        beg, end = data.lstrip()[:size], data.rstrip()[-size:]
        row = np.full(2 * size, pad, dtype=np.int32)
        row[:len(beg)] = np.frombuffer(beg, dtype=np.uint8)
        row[2 * size - len(end):] = np.frombuffer(end, dtype=np.uint8)
        rows.append(row)
    return np.stack(rows)
