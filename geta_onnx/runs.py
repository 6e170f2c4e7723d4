"""The run folder of a training run (compress's OUT.run/, train's -o DIR): who may use it,
whether it starts afresh or resumes, and what a failed run leaves behind.

    with RunFolder(path, fingerprint, resume=False, force=False, creates=[out.parent]) as run:
        ... train with resume=run.resume, config=fingerprint ...

On entry:
- the folders it needs are created (and remembered: a run that fails removes those it
  created that are still empty, so a failed run leaves no empty folders behind), and each
  is probed with a temporary file: an output location that cannot be written is found
  before training, not after;
- an exclusive lock (fcntl.flock on DIR/.lock, released by the kernel if the process dies)
  refuses a second run on the same folder; the lock file is removed on exit;
- a checkpoint already there is never overwritten silently: without --resume the run is
  refused (--force starts over and deletes it); with --resume the checkpoint's recorded
  settings (the fingerprint: model digest, data spec, training settings) must equal this
  run's, else the run is refused naming the changed keys (--force resumes anyway).
Under torchrun only rank 0 takes the lock and decides; the other ranks follow its files.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import ConfigError, RunError

LOCK = ".lock"
# settings a resumed run may change: they do not touch the trained result
RESUME_FREE = {"train": ("progress", "device"), "data": ("num_workers", "eval_batch_size"), "export": None}


def fingerprint(model_path: str | os.PathLike, data_spec: str, settings) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    recorded = {}
    for section, values in settings.to_dict().items():
        free = RESUME_FREE.get(section, ())
        if free is None:
            continue
        recorded[section] = {k: v for k, v in values.items() if k not in free}
    return json.loads(json.dumps({"model_sha256": digest.hexdigest(), "data": data_spec, "settings": recorded}))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k} ({json.dumps(a)} -> {json.dumps(b)})")
    return keys


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


class RunFolder:
    def __init__(self, path: str | os.PathLike, record: dict | None, *, resume: bool, force: bool,
                 creates: list[Path] = (), option: str = "-o"):
        self.path, self.record = Path(path), record
        self.resume, self.force, self.option = resume, force, option
        self.creates = [Path(c) for c in creates]
        self._made: list[Path] = []
        self._lock_fd: int | None = None

    @property
    def checkpoint(self) -> Path:
        from .train.loop import CHECKPOINT

        return self.path / CHECKPOINT

    def __enter__(self) -> "RunFolder":
        try:
            if self.path.exists() and not self.path.is_dir():
                raise RunError(f"option '{self.option}': '{self.path}' is a file, but the run folder goes there; "
                               "move the file or choose another output")
            for folder in [*self.creates, self.path]:
                self._make(folder)
                self._probe(folder)
            if _is_main_rank():
                self._lock()
                self._decide()
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, kind, value, tb) -> None:
        self._release(failed=kind is not None)

    # ---- entry steps -------------------------------------------------------------------------
    def _make(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise RunError(f"cannot create the folder '{p}' ({e.strerror}); choose an output location you "
                               "can write to") from None
            self._made.append(p)

    def _probe(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ConfigError(f"option '{self.option}': '{folder}' is not a folder")
        try:
            fd, probe = tempfile.mkstemp(prefix=".geta-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise RunError(f"cannot write into '{folder}' ({e.strerror}); choose an output location you can "
                           "write to") from None

    def _lock(self) -> None:
        lock = self.path / LOCK
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"the run folder '{self.path}' is in use by another geta-onnx run (pid {holder}); wait "
                           f"for it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _decide(self) -> None:
        from .train.checkpoint import read_config

        has = self.checkpoint.is_file()
        if not self.resume:
            if has and not self.force:
                raise ConfigError(f"'{self.path}' holds the checkpoint of an earlier run; continue it with --resume, "
                                  "or pass --force to start over (its checkpoint is deleted)")
            if has:
                self.checkpoint.unlink()
            return
        if not has:
            raise ConfigError(f"option '--resume': '{self.path}' holds no checkpoint to resume; drop --resume to "
                              "start a new run")
        if self.record is None or self.force:
            return
        old = read_config(self.checkpoint)
        if old is None:
            raise ConfigError(f"option '--resume': the checkpoint in '{self.path}' records no settings (an older "
                              "geta-onnx wrote it); pass --force to resume it with these settings")
        diff = changed_keys(old, self.record)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise ConfigError(f"option '--resume': the settings differ from the checkpoint's: {shown}; resume with "
                              "the same settings, or pass --force to resume with the new ones")

    # ---- exit ---------------------------------------------------------------------------------
    def _release(self, failed: bool) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(self.path / LOCK)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed:
            for folder in reversed(self._made):  # innermost first; only those still empty
                try:
                    folder.rmdir()
                except OSError:
                    pass
