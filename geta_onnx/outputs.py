"""Output paths that never land on an input.

Every command that writes (compress's model, report, plots and run folder; train's run
folder; --json of inspect / verify / eval / bench) checks its outputs against what it reads
before it reads or trains anything:
- the model files, with their external-data files (an exporter may name those `weights.onnx`),
- the data (an npz or .py file, or any file inside a data folder),
- other inputs named on the command line (a reference model, a config file).
Paths are compared resolved (symlinks, '..') and by inode (hard links), so no alias slips by.
A clash is a usage error (ConfigError, exit 2) naming the option and the input.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model file and the external-data files it references (unreadable models: the
    file alone; loading it reports what is wrong)."""
    path = Path(path)
    found = [path]
    if not path.is_file():
        return found
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a broken model is load_model's to report, not ours
        return found
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        for entry in t.external_data:
            if entry.key == "location" and entry.value:
                found.append(path.parent / entry.value)
    return list(dict.fromkeys(found))


def data_files(spec: str) -> list[Path]:
    """The file or folder a data spec reads (npz:FILE[:KEYS], idx:DIR, folder:DIR, py:FILE.py:FN)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "npz":
        path = Path(rest)
        return [path if path.exists() or ":" not in rest else Path(rest.rpartition(":")[0])]
    if scheme in ("idx", "folder"):
        return [Path(rest)]
    if scheme == "py":
        module = rest.rpartition(":")[0]
        return [Path(module)] if module.endswith(".py") else []
    return [Path(spec)] if Path(spec).exists() else []


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.is_dir() and path.resolve().is_relative_to(folder.resolve())


def refuse_overlap(outputs: dict[str, str | os.PathLike], *, models=(), data=(), files=()) -> None:
    """ConfigError when an output (option -> path) is, or is inside, one of the inputs:
    `models` (with their external data), `data` specs, other `files`. An output folder (the
    run folder) must not hold an input either."""
    inputs: list[tuple[Path, str]] = []
    for m in models:
        main = Path(m)
        inputs += [(f, "the input model" if f == main else f"external data of '{main}'") for f in model_files(m)]
    for spec in data:
        inputs += [(f, f"data of '{spec}'") for f in data_files(spec)]
    inputs += [(Path(f), "an input file") for f in files]
    for option, out in outputs.items():
        out = Path(out)
        for path, what in inputs:
            if _same(out, path) or _inside(out, path) or (out.is_dir() and _inside(path, out)):
                raise ConfigError(f"option '{option}': '{out}' would overwrite {what} ('{path}'); choose another "
                                  "output path (geta-onnx never writes over its inputs)")
