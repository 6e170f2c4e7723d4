"""Running one hostile case and asserting what every case must hold.

A case gets a fresh folder, builds its files there and gives the command line. After the
run: the exit code is the expected one; a failure prints exactly one error line (no
traceback) that names the culprit; every file that existed before is byte-identical; and a
failed run leaves nothing new behind (no partial outputs, no empty folders, no lock).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from geta_onnx.cli import main


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (files) or 'dir' (folders); __pycache__ of py: specs ignored."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(args: list[str]) -> Outcome:
    sys.dont_write_bytecode = True
    result = CliRunner().invoke(main, [str(a) for a in args])
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, exc)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lower().startswith("error:")]


def assert_hostile(folder: Path, args: list[str], code: int, mentions: tuple[str, ...] = (),
                   writes: tuple[str, ...] = ()) -> Outcome:
    """`writes`: folders (relative to `folder`) a successful run may rewrite, e.g. its run folder."""
    before = snapshot(folder)
    out = invoke(args)
    shown = f"args: {args}\nexit {out.code}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert out.exception is None, f"unhandled {type(out.exception).__name__}: {out.exception}\n{shown}"
    assert "Traceback" not in out.stdout + out.stderr, shown
    assert "internal error" not in out.stderr, shown  # the CLI's last line of defence: never expected
    assert out.code == code, shown
    after = snapshot(folder)
    changed = [p for p, h in before.items() if after.get(p) != h and not (code == 0 and p.startswith(writes))]
    assert not changed, f"inputs changed or removed: {changed}\n{shown}"
    if code != 0:
        errors = error_lines(out.stderr)
        assert len(errors) == 1, f"expected one error line\n{shown}"
        assert len(errors[0]) < 600, f"error line too long\n{shown}"
        for m in mentions:
            assert m.lower() in errors[0].lower(), f"error does not mention {m!r}\n{shown}"
        new = sorted(set(after) - set(before))
        assert not new, f"a failed run left {new}\n{shown}"
    return out
