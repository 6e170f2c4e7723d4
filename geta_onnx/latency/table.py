"""The latency table: measured kernel times per layer signature and kept widths, on one target.

File format (JSON, docs/latency.md), format "geta-onnx-latency/1":

    {"format": "geta-onnx-latency/1",
     "target": {"runtime": "onnxruntime 1.32.0", "cpu": "Intel(R) Xeon(R) ...", "threads": 2, "batch": 32},
     "overhead_ms": 0.004,                       # session.run's fixed cost, already taken off below
     "int8_saturates": false,                    # optional: the target's int8 kernels clip full-range weights
     "entries": {
       "Conv|x=Cx28x28|k=3x3|s=1x1|p=1x1x1x1|d=1x1|g=1|ci=32|co=64": {
          "cin": [16, 32], "cout": [16, 32, 48, 64],          # the measured kept widths
          "int8":  [[ms, ms, ms, ms], [ms, ms, ms, ms]],       # [len(cin)][len(cout)]
          "float": [[...], [...]]}}}

Times are milliseconds per batch (median of timed runs). A table measured elsewhere (another
CPU, a TensorRT engine timed by its own tool) loads as it is with `--latency-table`: the
target it names is reported, never checked against this machine. Its `int8_saturates` (the
probe of quant/weight_range.py, run where the table was measured) decides `[quant]
reduce_range = "auto"` for that target; a table without it leaves the decision to this CPU.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import cache_root, write_text_atomic
from .micro import FORMS

FORMAT = "geta-onnx-latency/1"


@dataclass(frozen=True)
class Target:
    runtime: str
    cpu: str
    threads: int
    batch: int

    @classmethod
    def here(cls, threads: int, batch: int) -> "Target":
        import onnxruntime

        return cls(f"onnxruntime {onnxruntime.__version__}", cpu_name(), threads, batch)

    @property
    def slug(self) -> str:
        """A file name for the cache: every field, made safe."""
        text = f"{self.runtime}-{self.cpu}-t{self.threads}-b{self.batch}"
        return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Entry:
    cin: list[int]
    cout: list[int]
    ms: dict[str, np.ndarray]  # form -> (len(cin), len(cout))

    def at(self, form: str, cin: float, cout: float) -> float:
        """Bilinear interpolation between measured widths (clamped to the measured range)."""
        grid = self.ms[form]
        i0, i1, fi = _bracket(self.cin, cin)
        j0, j1, fj = _bracket(self.cout, cout)
        top = grid[i0, j0] * (1 - fj) + grid[i0, j1] * fj
        bottom = grid[i1, j0] * (1 - fj) + grid[i1, j1] * fj
        return float(top * (1 - fi) + bottom * fi)

    def to_json(self) -> dict:
        return {"cin": self.cin, "cout": self.cout, **{f: self.ms[f].round(6).tolist() for f in self.ms}}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "Entry":
        try:
            cin, cout = [int(c) for c in data["cin"]], [int(c) for c in data["cout"]]
            ms = {f: np.asarray(data[f], dtype=np.float64) for f in FORMS if f in data}
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: malformed entry ({e}); expected cin, cout and int8 / float grids") from None
        if not ms or any(m.shape != (len(cin), len(cout)) for m in ms.values()):
            raise ConfigError(f"{where}: each grid must be [len(cin)][len(cout)] milliseconds")
        if cin != sorted(cin) or cout != sorted(cout):
            raise ConfigError(f"{where}: widths must be in increasing order")
        return cls(cin, cout, ms)


def _bracket(points: list[int], x: float) -> tuple[int, int, float]:
    """Indices (i0, i1) around x and the fraction of the way from points[i0] to points[i1]."""
    if len(points) == 1 or x <= points[0]:
        return 0, 0, 0.0
    if x >= points[-1]:
        n = len(points) - 1
        return n, n, 0.0
    i1 = int(np.searchsorted(points, x))
    i0 = i1 - 1
    return i0, i1, (x - points[i0]) / (points[i1] - points[i0])


@dataclass
class LatencyTable:
    target: Target
    overhead_ms: float
    entries: dict[str, Entry]
    # whether the target's int8 kernels depart from the QDQ math with full-range int8 weights
    # (quant.weight_range.int8_saturates, run on the target); None: not recorded
    int8_saturates: bool | None = None

    def to_json(self) -> dict:
        probe = {} if self.int8_saturates is None else {"int8_saturates": self.int8_saturates}
        return {"format": FORMAT, "target": asdict(self.target), "overhead_ms": self.overhead_ms, **probe,
                "entries": {k: e.to_json() for k, e in sorted(self.entries.items())}}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        where = f"latency table '{path}'"
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"{where}: cannot read it ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: not JSON ({e}); give a file written by geta-onnx") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{where}: format {data.get('format') if isinstance(data, dict) else None!r}, "
                              f"expected '{FORMAT}' (docs/latency.md)")
        try:
            target = Target(**data["target"])
            overhead = float(data.get("overhead_ms", 0.0))
            entries = {str(k): Entry.from_json(v, f"{where}, entry '{k}'") for k, v in data["entries"].items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{where}: malformed ({e}); see docs/latency.md for the format") from None
        saturates = data.get("int8_saturates")
        if saturates is not None and not isinstance(saturates, bool):
            raise ConfigError(f"{where}: int8_saturates must be true or false (or absent), got {saturates!r}")
        return cls(target, overhead, entries, saturates)


def cache_path(target: Target) -> Path:
    """Where tables measured on this machine are kept: latency/<target>.json in the cache root
    (io.cache_root: $GETA_ONNX_CACHE, else ~/.cache/geta-onnx)."""
    return cache_root() / "latency" / f"{target.slug}.json"
