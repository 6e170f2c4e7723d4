"""`geta-onnx verify`: will this model work? Four checks, each measured:

1. parity      the bridged module (eval) matches onnxruntime on seeded inputs
2. gradients   backward reaches every trainable parameter with finite values
3. zero-invariance per group
               zeroing one prunable group in the bridged module gives the same outputs
               as onnxruntime running the physically pruned ONNX model
4. half removed the same with a seeded random half of all prunable groups removed at once
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .bridge import OnnxModule, run_bridge, run_onnxruntime, to_torch
from .graph.branches import decide_ifs
from .graph.feeds import example_feeds, runnable_shapes
from .graph.model import OnnxModel
from .prune import prune_model
from .qadg import QADG, analyze
from .qadg.groups import PruneGroup

RTOL = 1e-4  # of the reference output's largest magnitude
ATOL = 1e-5
# A model whose outputs move more than RTOL when onnxruntime itself computes them another way
# (its optimised graph against its unoptimised one: Conv + BatchNorm folded, other kernels) is
# held to NOISE_FACTOR times that difference instead, at most RTOL_CAP: no bridge can match one
# floating-point evaluation order closer than two of onnxruntime's own differ. Weights rounded
# to float16 (graph/half.py) made PP-OCR's detector such a model (docs/realworld.md).
NOISE_FACTOR, RTOL_CAP = 4.0, 1e-2


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, "failures": self.failures}


def _close(got: list[np.ndarray], want: list[np.ndarray], rtol: float = RTOL) -> tuple[bool, float]:
    worst = 0.0
    ok = True
    for g, w in zip(got, want):
        g, w = np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            return False, float("inf")
        if g.size == 0:
            continue
        scale = float(np.max(np.abs(w))) or 1.0
        diff = float(np.max(np.abs(g - w)))
        worst = max(worst, diff / scale)
        ok = ok and diff <= ATOL + rtol * scale
    return ok, worst


class _Zeroer:
    """Zeroes the trainable slices of groups in a bridged module, and restores them."""

    def __init__(self, module: OnnxModule):
        self.module = module

    def tensor(self, name: str) -> torch.Tensor:
        qual = self.module.tensor_of[name]
        return self.module.get_parameter(qual) if qual.startswith("params.") else self.module.get_buffer(qual)

    def zero(self, groups: list[PruneGroup]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        saved = []
        with torch.no_grad():
            for g in groups:
                for m in g.members:
                    if m.role == "state":
                        continue
                    t = self.tensor(m.tensor)
                    saved.append((t, t.detach().clone()))
                    index = [slice(None)] * t.dim()
                    index[m.axis] = list(m.indices)
                    t[tuple(index)] = 0
        return saved

    @staticmethod
    def restore(saved) -> None:
        with torch.no_grad():
            for t, value in reversed(saved):
                t.copy_(value)


def verify_model(model: OnnxModel, *, shapes=None, max_groups: int | None = None, seed: int = 0,
                 progress=None, log=None) -> tuple[list[Check], QADG]:
    """`shapes` fixes inputs' dims; symbolic dims left open take sizes the model runs at
    (graph.feeds.runnable_shapes), said through `log`."""
    shapes, chosen = runnable_shapes(model, shapes)
    if chosen and log is not None:
        log(f"inputs: {chosen}")
    feeds = example_feeds(model, shapes, seed=seed)
    model, decided = decide_ifs(model, feeds)  # If nodes: the branch these inputs take (graph/branches.py)
    for line in decided if log is not None else ():
        log(line)
    module = to_torch(model).eval()
    qadg = analyze(model)
    try:
        got = run_bridge(module, feeds)
    except Exception as e:  # noqa: BLE001 - torch refuses what onnxruntime ran: that is the finding
        shown = ", ".join(f"{n}={'x'.join(map(str, np.asarray(v).shape))}" for n, v in feeds.items())
        return [Check("bridge parity with onnxruntime", False, f"the PyTorch bridge cannot run at {shown}",
                      [f"{type(e).__name__}: {str(e).splitlines()[0][:300]} (onnxruntime runs it; other dims with "
                       "--shape)"])], qadg
    parity, rtol = _parity(model, got, feeds)
    checks = [parity, _gradients(module, feeds, seed)]
    groups = qadg.prunable
    sample = groups if max_groups is None or len(groups) <= max_groups else \
        random.Random(seed).sample(groups, max_groups)
    zeroer = _Zeroer(module)
    failures, worst = [], 0.0
    start = time.perf_counter()
    for k, g in enumerate(sample):
        ok, err, why = _zero_vs_pruned(qadg, zeroer, [g], feeds, rtol)
        worst = max(worst, err)
        if not ok:
            failures.append(f"group {g.id} ({g.kind}, sources {', '.join(g.sources) or '-'}): {why}")
        if progress:
            progress(k + 1, len(sample))
    label = f"{len(sample)} of {len(groups)} prunable groups" if len(sample) < len(groups) else f"{len(groups)} prunable groups"
    checks.append(Check("zero-invariance per group", not failures,
                        f"{label}, worst rel. error {worst:.1e} ({time.perf_counter() - start:.1f} s)", failures))
    if groups:
        half = half_of_each_layer(groups, seed + 1) or groups[:1]
        ok, err, why = _zero_vs_pruned(qadg, zeroer, half, feeds, rtol)
        checks.append(Check("random half removed", ok, f"{len(half)} groups at once, rel. error {err:.1e}",
                            [] if ok else [why]))
    else:
        checks.append(Check("random half removed", True, "no prunable groups"))
    return checks, qadg


def half_of_each_layer(groups: list[PruneGroup], seed: int) -> list[PruneGroup]:
    """A seeded random half of the groups of each layer (groups with the same sources):
    every layer keeps at least one group, as any real pruning must."""
    buckets: dict[tuple[str, ...], list[PruneGroup]] = {}
    for g in groups:
        buckets.setdefault(tuple(g.sources), []).append(g)
    rng = random.Random(seed)
    return [g for key in sorted(buckets) for g in rng.sample(buckets[key], len(buckets[key]) // 2)]


def _parity(model: OnnxModel, got, feeds) -> tuple[Check, float]:
    """(the check, the relative tolerance of every comparison): `got`, the bridge's outputs on
    `feeds`, against onnxruntime's unoptimised run, within RTOL or the model's own noise."""
    want = run_onnxruntime(model.proto, feeds)
    try:
        _, noise = _close(run_onnxruntime(model.proto, feeds, optimize=True), want)
    except Exception:  # noqa: BLE001 - an optimised graph onnxruntime cannot run gives no noise estimate
        noise = 0.0
    rtol = min(max(RTOL, NOISE_FACTOR * noise), RTOL_CAP)
    why = (f"{rtol:.1e} of output scale: {NOISE_FACTOR:g}x the {noise:.1e} by which onnxruntime's optimised run "
           f"differs from its unoptimised one, at most {RTOL_CAP:g}" if rtol > RTOL else f"{RTOL:g} of output scale")
    ok, err = _close(got, want, rtol)
    return Check("bridge parity with onnxruntime", ok, f"max rel. error {err:.1e} (tolerance {why})"), rtol


def _gradients(module: OnnxModule, feeds, seed: int) -> Check:
    module = copy.deepcopy(module).train()  # a train-mode forward updates BatchNorm statistics
    module.zero_grad(set_to_none=True)
    args = [torch.from_numpy(np.asarray(feeds[n])) for n in module.input_names]
    out = module(*args)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point() and o.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs).backward()
    params = dict(module.named_parameters())
    missing = [module.initializer_of[q] for q, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    return Check("gradients reach every parameter", not missing,
                 f"{len(params) - len(missing)} of {len(params)} parameters", missing[:20])


def _zero_vs_pruned(qadg: QADG, zeroer: _Zeroer, groups: list[PruneGroup], feeds,
                    rtol: float = RTOL) -> tuple[bool, float, str]:
    """(passed, relative error, why it failed)."""
    saved = zeroer.zero(groups)
    try:
        got = run_bridge(zeroer.module, feeds)
    finally:
        zeroer.restore(saved)
    try:
        pruned = prune_model(qadg, [g.id for g in groups])
        want = run_onnxruntime(pruned, feeds)
    except Exception as e:  # noqa: BLE001 - a pruning that breaks the graph is a failed check
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return False, float("inf"), f"the pruned model fails: {type(e).__name__}: {first[:300]}"
    ok, err = _close(got, want, rtol)
    return ok, err, f"rel. error {err:.2e} between zeroed and pruned"
