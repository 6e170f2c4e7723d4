"""Which groups to remove: the K lowest-scoring ones, with each layer's kept count a
multiple of a hardware unit (odd widths such as 17 / 35 / 70 made pruned models SLOWER
in onnxruntime, docs/deployment.md). A "cluster" is the set of groups with the same source
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


def _clusters(views: list[GroupView], scores: dict[int, float], unit: int, zeroed: set[int]) -> dict:
    """cluster key -> {"done": zeroed ids, "free": the others by rising score, "options": the
    feasible numbers of removed groups (>= done), "level": index of the current option}."""
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
    return state


def _picked(s: dict, level: int) -> list[int]:
    """The groups a cluster removes at option `level`, beyond those already zeroed."""
    return s["free"][:s["options"][level] - len(s["done"])]


def _chosen(state: dict) -> set[int]:
    chosen: set[int] = set()
    for s in state.values():
        chosen.update(s["done"])
        chosen.update(_picked(s, s["level"]))
    return chosen


def plan(views: list[GroupView], scores: dict[int, float], target: int, unit: int,
         zeroed: set[int]) -> set[int]:
    """The groups to have removed at the end: all of `zeroed` plus the cheapest others,
    as close to `target` groups as the units allow (never above it unless `zeroed`
    forces it). Greedy on the average score of each cluster's next feasible step."""
    state = _clusters(views, scores, unit, zeroed)
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
    return _chosen(state)


LOOKAHEAD = 3  # options ahead a cluster's step may jump to: a width whose kernel is no faster can be crossed


def plan_latency(views: list[GroupView], scores: dict[int, float], budget_ms: float, unit: int,
                 zeroed: set[int], cost) -> set[int]:
    """The groups to have removed at the end under a latency budget (HALP, Shen et al. 2022:
    importance per unit of latency saved, greedy knapsack): all of `zeroed`, then, while the
    predicted time is above `budget_ms`, the cluster step (up to LOOKAHEAD options ahead) of
    lowest summed score per millisecond it saves; steps that save nothing are never taken.
    Stops at the first structure predicted within the budget, or when no step saves time.
    `cost`: latency.LatencyModel (state / ms / delta / apply over group ids)."""
    state = _clusters(views, scores, unit, zeroed)
    current = cost.state(_chosen(state))
    while cost.ms(current) > budget_ms:
        best, best_ratio = None, None
        for key, s in state.items():
            now = _picked(s, s["level"])
            for level in range(s["level"] + 1, min(s["level"] + 1 + LOOKAHEAD, len(s["options"]))):
                extra = _picked(s, level)[len(now):]
                saved = -cost.delta(current, extra)
                if saved <= 1e-9:
                    continue
                ratio = sum(max(scores.get(g, 0.0), 0.0) for g in extra) / saved
                if best_ratio is None or ratio < best_ratio:
                    best, best_ratio = (key, level, extra), ratio
        if best is None:
            break
        key, level, extra = best
        cost.apply(current, extra)
        state[key]["level"] = level
    return _chosen(state)


def max_removal(views: list[GroupView], unit: int, zeroed: set[int]) -> set[int]:
    """Every cluster at its largest feasible removal (one unit kept): the fastest structure."""
    state = _clusters(views, {}, unit, zeroed)
    for s in state.values():
        s["level"] = len(s["options"]) - 1
    return _chosen(state)
