"""The distillation teacher's outputs, remembered per sample.

The teacher is the frozen original: its output for a training sample is the same in every
epoch. A run of E epochs over data without augmentation therefore needs one teacher forward
per sample, not E; on the Fashion-MNIST benchmark's ResNet the teacher was about a fifth of a
training step (docs/measurements.md, "The teacher's outputs, remembered").

Keys are the samples' content, not their positions: a 16-byte BLAKE2b digest of each input
row's bytes, dtype and shape. So a memo cannot serve a wrong row when a loader reorders,
shards or limits its data; an augmented sample, or a sequence padded to another length, is
simply a new key. When more distinct samples come than the data holds (`capacity`: the
data is augmented or drawn at random), or the data's rows would pass `max_bytes`, the memo lets go
of what it holds and turns itself off for the rest of the run: from then on every batch runs
the teacher, as without a memo.

A batch whose every row is remembered is served from the memo; any other batch runs the
teacher on the whole batch (its outputs are the ones used) and remembers its new rows.
Exactness: a remembered row is the teacher's output for that sample in an earlier batch.
onnxruntime's CPU kernels give a row the same bits whatever else shares its batch on the
CNNs, transformers and recurrent models measured (tests/train/test_teacher_memo.py); a
batch of one sample on MiniLM's MatMuls differed by 3e-8. The memo is part of the training
checkpoint (state_dict), so a resumed run reads the rows the uninterrupted run would read.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

MAX_BYTES = 256 << 20  # remembered outputs at most (the checkpoint carries them)


class TeacherMemo:
    """memo(run, inputs) -> run(*inputs), or the remembered outputs of the same samples.

    capacity: distinct samples the data holds (training + held-out); one more turns it off.
    Only CPU tensors whose axis 0 is the batch are remembered; a teacher output without that
    axis, or whose row shape changes between batches, turns it off."""

    def __init__(self, capacity: int, max_bytes: int = MAX_BYTES):
        self.capacity, self.max_bytes = int(capacity), int(max_bytes)
        self.off: str | None = None if self.capacity > 0 else "no sample count"
        self.hits = self.misses = 0  # samples served from the memo / by the teacher
        self._index: dict[bytes, int] = {}  # key -> row of the stored outputs
        self._rows: list[np.ndarray] = []  # per teacher output: (rows, *row shape), grown by doubling
        self._single = True  # the teacher returns one tensor (not a tuple)

    def __call__(self, run, inputs):
        if self.off is not None or not _rows_of(inputs):
            return run(*inputs)
        keys = _keys(inputs)
        found = [self._index.get(k) for k in keys]
        if all(i is not None for i in found):
            self.hits += len(keys)
            return self._served(np.asarray(found, dtype=np.int64))
        outputs = run(*inputs)
        self.misses += len(keys)
        self._remember(run, inputs, keys, found, outputs)
        return outputs

    def summary(self) -> dict:
        """For the report: samples served from the memo and by the teacher, what it holds."""
        return {"hits": self.hits, "misses": self.misses, "samples": len(self._index),
                "megabytes": round(self._bytes() / 2 ** 20, 2), **({"off": self.off} if self.off else {})}

    # ---- storage ---------------------------------------------------------------------------
    def _served(self, rows: np.ndarray):
        outs = tuple(torch.from_numpy(store[rows]) for store in self._rows)
        return outs[0] if self._single else outs

    def _rowwise(self, run, inputs, whole: tuple) -> bool:
        """Checked once, on the first batch of two samples or more: the teacher gives its first
        half the same rows alone as within the whole batch (within float rounding). A graph
        with BatchNorm in training mode (batch statistics), active dropout or another op across
        samples does not, and turns the memo off. A batch of one waits for the next."""
        batch = inputs[0].shape[0]
        if batch < 2:
            return False
        half = run(*(x[:batch // 2] for x in inputs))
        half = (half,) if isinstance(half, torch.Tensor) else tuple(half)
        same = len(half) == len(whole) and all(
            isinstance(h, torch.Tensor) and h.shape == w[:batch // 2].shape
            and (not h.is_floating_point() and torch.equal(h, w[:batch // 2])
                 or h.is_floating_point() and torch.allclose(h.double(), w[:batch // 2].double(), rtol=1e-5,
                                                             atol=1e-5 * max(1.0, float(w.abs().max()))))
            for h, w in zip(half, whole))
        if not same:
            self._turn_off("the teacher's output for a sample depends on the rest of its batch (BatchNorm in "
                           "training mode, active dropout)")
        return same

    def _remember(self, run, inputs, keys: list[bytes], found: list, outputs) -> None:
        single = isinstance(outputs, torch.Tensor)
        outs = (outputs,) if single else tuple(outputs)
        if not self._fits(outs, single, len(keys)) or (not self._rows and not self._rowwise(run, inputs, outs)):
            return
        new, seen = [], set()  # positions of samples not remembered yet (a sample twice in a batch: once)
        for j, (key, at) in enumerate(zip(keys, found)):
            if at is None and key not in seen:
                new.append(j)
                seen.add(key)
        need = len(self._index) + len(new)
        if need > self.capacity:
            return self._turn_off(f"more distinct samples than the data's {self.capacity}: augmented or random data")
        if not self._rows:
            self._single = single
            self._rows = [np.empty((0, *o.shape[1:]), dtype=o.detach().numpy().dtype) for o in outs]
        if self.capacity * self._row_bytes() > self.max_bytes:  # decided before any row is copied
            return self._turn_off(f"the outputs of the data's {self.capacity} samples would pass "
                                  f"{self.max_bytes >> 20} MiB")
        if need > len(self._rows[0]):
            grown = min(max(need, 2 * len(self._rows[0]), 64), self.capacity)
            self._rows = [np.concatenate([s, np.empty((grown - len(s), *s.shape[1:]), s.dtype)]) for s in self._rows]
        at, pick = len(self._index), np.asarray(new, dtype=np.int64)
        for store, o in zip(self._rows, outs):
            store[at:at + len(new)] = o.detach().numpy()[pick]
        for n, j in enumerate(new):
            self._index[keys[j]] = at + n

    def _fits(self, outs: tuple, single: bool, batch: int) -> bool:
        """Every output a CPU tensor numpy can hold, the batch on axis 0, as the earlier batches."""
        if not all(isinstance(o, torch.Tensor) and o.device.type == "cpu" and o.dtype != torch.bfloat16
                   and o.dim() >= 1 and o.shape[0] == batch for o in outs):
            self._turn_off("a teacher output off the CPU, in bfloat16 or without the batch on axis 0")
            return False
        if self._rows and (single != self._single or len(outs) != len(self._rows)
                           or any(tuple(o.shape[1:]) != s.shape[1:] for o, s in zip(outs, self._rows))):
            self._turn_off("teacher outputs whose shape changes between batches")
            return False
        return True

    def _turn_off(self, why: str) -> None:
        self.off, self._index, self._rows = why, {}, []
        log.debug("teacher memo off: %s", why)

    def _row_bytes(self) -> int:
        """Bytes one sample's outputs take."""
        return sum(int(np.prod(s.shape[1:])) * s.itemsize for s in self._rows)

    def _bytes(self) -> int:
        return self._row_bytes() * len(self._index)

    # ---- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        n = len(self._index)  # key k (insertion order) names row k: rows are appended as keys arrive
        keys = np.frombuffer(b"".join(self._index), dtype=np.uint8).reshape(n, 16).copy()
        return {"capacity": self.capacity, "off": self.off or "", "hits": self.hits, "misses": self.misses,
                "single": self._single, "keys": torch.from_numpy(keys),
                "rows": [torch.from_numpy(s[:n].copy()) for s in self._rows]}

    def load_state_dict(self, state: dict) -> None:
        self.off = state["off"] or None
        self.hits, self.misses, self._single = int(state["hits"]), int(state["misses"]), bool(state["single"])
        keys = state["keys"].numpy()
        self._index = {bytes(k): i for i, k in enumerate(keys)}
        self._rows = [r.numpy().copy() for r in state["rows"]]


def teacher_outputs(teacher, inputs, memo: TeacherMemo | None):
    """teacher(*inputs), through `memo` when there is one."""
    return memo(teacher, inputs) if memo is not None else teacher(*inputs)


def _rows_of(inputs) -> bool:
    """CPU tensors with one batch size on axis 0: what the memo can key."""
    if not inputs or not all(isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() >= 1
                             for x in inputs):
        return False
    return (len({x.shape[0] for x in inputs}) == 1 and inputs[0].shape[0] > 0
            and all(x.dtype != torch.bfloat16 for x in inputs))


def _keys(inputs) -> list[bytes]:
    """One 16-byte digest per sample over every input's row (its bytes, dtype and shape)."""
    rows = [x.detach().contiguous().numpy().reshape(x.shape[0], -1) for x in inputs]
    heads = [f"{x.dtype}{tuple(x.shape[1:])}".encode() for x in inputs]
    keys = []
    for i in range(rows[0].shape[0]):
        h = hashlib.blake2b(digest_size=16)
        for head, r in zip(heads, rows):
            h.update(head)
            h.update(r[i].tobytes())
        keys.append(h.digest())
    return keys
