"""Which groups to remove: the K lowest-scoring ones, with each layer's kept count a
multiple of a hardware unit (odd widths such as 17 / 35 / 70 made pruned models SLOWER
in onnxruntime, deployment.md). A "cluster" is the set of groups with the same source
layers (one conv's channels, one residual stream, one layer's heads); heads are whole
units already, so head clusters use a unit of 1. Every cluster keeps at least one unit.
"""
from __future__ import annotations

from .slices import GroupView


def allowed_removals(n: int, unit: int) -> list[int]:
    """Numbers of groups that may be removed from a cluster of n groups."""
    if unit <= 1:
        return list(range(0, n))  # keep at least one
    kept = [k for k in range(unit, n, unit)]  # multiples of the unit below n
    return sorted({0} | {n - k for k in kept})


def plan(views: list[GroupView], scores: dict[int, float], target: int, unit: int,
         zeroed: set[int]) -> set[int]:
    """The groups to have removed at the end: all of `zeroed` plus the cheapest others,
    as close to `target` groups as the units allow (never above it unless `zeroed`
    forces it). Greedy on the average score of each cluster's next feasible step."""
    by_cluster: dict[tuple[str, ...], list[GroupView]] = {}
    for v in views:
        by_cluster.setdefault(v.cluster, []).append(v)
    state = {}
    for key, members in by_cluster.items():
        cluster_unit = 1 if members[0].group.kind == "head" else unit
        done = [v.id for v in members if v.id in zeroed]
        free = sorted((v.id for v in members if v.id not in zeroed), key=lambda g: scores.get(g, 0.0))
        options = [r for r in allowed_removals(len(members), cluster_unit) if r >= len(done)]
        if not options:  # zeroed beyond every feasible level: keep what is zeroed
            options = [len(done)]
        state[key] = {"done": done, "free": free, "options": options, "level": 0}
    total = sum(s["options"][0] for s in state.values())
    while True:
        best, best_cost = None, None
        for key, s in state.items():
            if s["level"] + 1 >= len(s["options"]):
                continue
            now, nxt = s["options"][s["level"]], s["options"][s["level"] + 1]
            extra = nxt - now
            if total + extra > target:
                continue
            picked = s["free"][now - len(s["done"]):nxt - len(s["done"])]
            cost = sum(scores.get(g, 0.0) for g in picked) / max(extra, 1)
            if best_cost is None or cost < best_cost:
                best, best_cost = key, cost
        if best is None:
            break
        s = state[best]
        total += s["options"][s["level"] + 1] - s["options"][s["level"]]
        s["level"] += 1
    chosen: set[int] = set()
    for s in state.values():
        count = s["options"][s["level"]]
        chosen.update(s["done"])
        chosen.update(s["free"][:count - len(s["done"])])
    return chosen
