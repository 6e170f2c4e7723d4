"""What a sample ends with: `geta-onnx compress` with its settings file, then `geta-onnx gate`
on the report, each echoed and run as a user would type it."""
from __future__ import annotations

import subprocess
from pathlib import Path


def compress_and_gate(model: Path, data_spec: str, out: Path, config: str, extra: list[str], *,
                      max_accuracy_drop: float, min_speedup: float) -> int:
    """Exit code of the first command that fails, else 0. `extra`: more compress options."""
    compress = ["geta-onnx", "compress", str(model), "--data", data_spec, "-o", str(out), "--config", config,
                "--no-progress", *extra]
    gate = ["geta-onnx", "gate", str(out.with_suffix(".report.json")), "--max-accuracy-drop", str(max_accuracy_drop),
            "--min-speedup", str(min_speedup)]
    for cmd in (compress, gate):
        print("$ " + " ".join(cmd), flush=True)
        code = subprocess.call(cmd)
        if code:
            return code
    return 0
