"""Channel identities: a union-find over single channels, and the per-tensor map of which
channel sits at which position of which axis.

Every output channel a layer creates gets an integer id. Ops move ids around (a Reshape
spreads one channel over a block of features, a Concat stacks id lists, a Transpose
permutes axes); ops that tie channels together (a residual Add, the Q.K^T contraction)
union their ids. The connected components at the end are the pruning groups.
Position value FIXED (-1) marks a position no layer owns (it comes from a graph input or
a constant): a channel tied to such a position can never be removed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIXED = -1


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra > rb:
                ra, rb = rb, ra
            self.parent[rb] = ra  # the oldest id stays the root: groups keep their source order
        return ra

    def __len__(self) -> int:
        return len(self.parent)


@dataclass(frozen=True)
class Tracked:
    """Which channel ids sit along which axes of one tensor.

    axes: tensor axes (non-negative, ascending) that carry channels
    ids:  array with one dim per tracked axis; ids[i, j] is the channel id at position
          (i along axes[0], j along axes[1]); FIXED where no channel is owned
    rank: the tensor's rank
    zero_ok: True when zeroing a group provably makes its positions exactly 0 here
    """

    axes: tuple[int, ...]
    ids: np.ndarray
    rank: int
    zero_ok: bool = True

    def __post_init__(self):
        assert self.ids.ndim == len(self.axes), (self.axes, self.ids.shape)

    def full(self) -> np.ndarray:
        """ids broadcastable against the whole tensor: size-1 dims on untracked axes."""
        shape = [1] * self.rank
        for a, n in zip(self.axes, self.ids.shape):
            shape[a] = n
        return self.ids.reshape(shape)

    def with_zero_ok(self, ok: bool) -> "Tracked":
        return Tracked(self.axes, self.ids, self.rank, ok)
