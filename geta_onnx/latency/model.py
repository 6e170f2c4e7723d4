"""The latency model: predicted onnxruntime time of the pruned, quantized model.

    model = LatencyModel(layers, table, original_ms, effects)
    state = model.state(removed_group_ids)
    model.ms(state)                  # predicted ms per batch
    model.delta(state, [gid, ...])   # change if these groups went too (negative: time saved)

prediction = min over the two exports compress can ship (bench/choice.py), per form f:
    a_f * sum over layers of t_l(f, kept widths) + F_f + R_f * share
with f = int8 (each quantized layer's int8 kernel, the others float) or float. Both terms are
fitted to one measured whole model at full width, W_f: the original for float, an int8 QDQ
model of the original for int8 (uint8 pooling and the Q / DQ around float ops cost more than
their float versions). When the layers sum to less than W_f, a_f = 1 and R_f = W_f - sum is
the time outside the layers (pooling, adds, activations, Q / DQ of unfused ops), taken to
shrink with the layers' output channels: share = sum_l out_l * kept_cout_l / sum_l out_l *
cout_l (those ops read and write the channels). When they sum to more (a one-layer float conv
pays its NCHWc reorders, which a chain of convs pays once; docs/latency.md), R_f = 0 and
a_f = W_f / sum scales them down.

F_f is the part of the rest that does not shrink (onnxruntime's per-node dispatch, the
input's Q / transposes). One whole model cannot tell it apart from R_f, so a second int8
model is measured: the export with a probe structure removed (probe_removal: about half of
every layer's channels). Its rest W_1 - L_1 = F + R * share_1 splits the full model's rest
W_0 - L_0 = F + R. Below the half probe's share the rest follows a third int8 export, the
narrow probe (every layer cut towards one unit, probe_removal(narrow=True)): from (share_1,
F + R share_1) linearly to its measured rest, flat below it. Narrow layers cost more in a
chain than their one-layer times, which the line through the half probe does not see.
docs/latency.md gives the measured split and the error of this model with and without them.

With onnxruntime's profile of a whole model (latency.attribution.Split: its kernel time split
between the layers, the nodes each layer's outputs feed, and the rest) the rest is not a
difference of two timings taken minutes apart, and it shrinks per layer, not with one share:

    T_f = a_f * sum_l t_l + F_f + sum_l w_l * kept_out_l / cout_l + residual_f(share)

with a_f, F_f and w_l the profile's shares of W_f (a_f = W_f * layer share / sum_l t_l at full
width: the in-chain time of the layers over their one-layer times, and whatever moved the host
since the table was measured). The probes then measure what this misses: their measured minus
predicted time, linear in the share between them, 0 at full width and flat below the narrowest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .spec import LayerSpec
from .table import LatencyTable


# a layer stays in float when its int8 kernel is this much slower than its float kernel: a float
# layer between int8 ones also pays a DequantizeLinear and a QuantizeLinear, which neither timing holds
INT8_SLOWER = 1.2


@dataclass
class ModelLayer:
    spec: LayerSpec
    quantized: bool  # runs as the int8 kernel in the QDQ export
    int4: bool = False  # a MatMul exported with an INT4 weight: runs as MatMulNBits (form "int4")


@dataclass
class State:
    removed_in: np.ndarray  # (layers,) input channels removed
    removed_out: np.ndarray  # (layers,) output channels removed
    t_deployed: np.ndarray = field(default=None)  # (layers,) ms of each layer in the QDQ export
    t_float: np.ndarray = field(default=None)  # (layers,) ms of each layer in float

    def layers_ms(self, form: str) -> float:
        """The layers' one-layer times summed, in the QDQ export ("int8") or in float."""
        return float((self.t_deployed if form == "int8" else self.t_float).sum())


class LatencyModel:
    def __init__(self, layers: list[ModelLayer], table: LatencyTable, original_ms: float,
                 effects: dict[int, list[tuple[int, str, int]]], int8_original_ms: float | None = None,
                 int8_probe: tuple[list[int], float] | None = None,
                 int8_narrow: tuple[list[int], float] | None = None, splits: dict | None = None,
                 reference_ms: float | None = None):
        """`effects`: group id -> [(layer index, "in" | "out", channels removed)].
        `int8_original_ms`: an int8 QDQ model of the original measured (None: R_int8 = R_float).
        `int8_probe`: (groups removed, measured ms) of the int8 export of a pruned structure
        (probe_removal), which splits the int8 rest into F_int8 and R_int8 (None: F = 0).
        `int8_narrow`: the same of the narrow probe (probe_removal(narrow=True)), the int8 rest
        below the half probe's share (None: the line F + R share all the way down).
        `splits`: form -> latency.attribution.Split of the whole model of that form (the
        original for float, the int8 reference for int8); a form without one keeps the fit above.
        `reference_ms`: what a speedup is relative to, where not the original the model fits: the
        user's already-quantized file it was read back from (latency.build._given_file)."""
        self.layers, self.table, self.original_ms, self.effects = layers, table, original_ms, effects
        self.reference_ms = reference_ms if reference_ms is not None else original_ms
        # the measurements this fit is made of (tools/bench_latency_model.py refits without the split)
        self.inputs = {"int8_original_ms": int8_original_ms, "int8_probe": int8_probe, "int8_narrow": int8_narrow,
                       "splits": splits}
        self._entries = [table.entries[la.spec.key] for la in layers]
        self._out = np.array([la.spec.out_elems for la in layers], dtype=np.float64)
        self._cout = np.array([la.spec.cout for la in layers], dtype=np.float64)
        full = self.state(())
        self.layers_float_ms = full.layers_ms("float")
        self.scale, self.remainder = {}, {}
        for form, layers_ms, whole in (("float", self.layers_float_ms, original_ms),
                                       ("int8", full.layers_ms("int8"), int8_original_ms)):
            if whole is None:  # no int8 reference: the int8 layers as measured, the float model's rest
                self.scale[form], self.remainder[form] = 1.0, self.remainder["float"]
            elif layers_ms > whole:
                self.scale[form], self.remainder[form] = whole / layers_ms, 0.0
            else:
                self.scale[form], self.remainder[form] = 1.0, whole - layers_ms
        self.fixed = {"float": 0.0, "int8": 0.0}
        self.narrow: dict[str, tuple[float, float, float]] = {}  # form -> (share_n, rest_n, share_1)
        # with a profile split: form -> (layers,) ms of the rest that shrinks with each layer's kept
        # output channels, and the probes' (share, measured - predicted ms), widest first
        self.weights: dict[str, np.ndarray] = {}
        self.residual: dict[str, list[tuple[float, float]]] = {}
        # which layers one-layer times called slower in int8, and whether the whole model kept
        # them in float (latency.chain; plain JSON, None: nothing to decide), for resume and report
        self.float_check: dict | None = None
        for form, whole in (("float", original_ms), ("int8", int8_original_ms)):
            if whole is not None and (splits or {}).get(form) is not None:
                self._attribute(form, splits[form], whole, full.layers_ms(form))
        if "int8" in self.weights:
            self.residual["int8"] = self._residuals("int8", [p for p in (int8_probe, int8_narrow) if p is not None])
        elif int8_probe is not None and int8_original_ms is not None:
            self._split_rest("int8", *int8_probe)
            if int8_narrow is not None:
                self._narrow_rest("int8", int8_probe[0], *int8_narrow)

    def _attribute(self, form: str, split, whole: float, layers_ms: float) -> None:
        """a_f, F_f and w_l from the profile's shares of the measured whole model. A layer whose
        outputs no group prunes feeds a part of the rest that never shrinks: it counts in F."""
        k = whole / split.total
        weights = k * np.asarray(split.per_layer, dtype=np.float64)
        never = np.array([not la.spec.prune_out for la in self.layers])
        self.scale[form] = k * split.layers / layers_ms if layers_ms > 0 else 1.0
        self.fixed[form] = k * split.fixed + float(weights[never].sum())
        weights[never] = 0.0
        self.weights[form], self.remainder[form] = weights, float(weights.sum())

    def _residuals(self, form: str, probes) -> list[tuple[float, float]]:
        """(share, measured - predicted ms) of each probe (removed groups, measured ms), widest
        first; a probe that keeps nearly everything, or lies within 0.05 of a wider one's share,
        tells nothing new and is left out."""
        points = []
        for removed, measured in probes:
            st = self.state(removed)
            share = self._share(st.removed_out)
            predicted = self._forms(float(st.t_deployed.sum()), float(st.t_float.sum()), st.removed_out)[form]
            points.append((share, measured - predicted))
        kept: list[tuple[float, float]] = []
        for share, r in sorted(points, reverse=True):
            if share < min([0.95] + [s - 0.05 for s, _ in kept]):
                kept.append((share, r))
        return kept

    def _split_rest(self, form: str, removed, measured_ms: float) -> None:
        """F_form and R_form from the rest of the full model (R now) and of the probe: with
        share s, rest_probe = F + R' s and F + R' = R. Clipped to 0 <= F <= R; a probe that
        keeps nearly everything (s > 0.9) cannot tell them apart and leaves F = 0."""
        share, probe_rest = self._probe_rest(form, removed, measured_ms)
        rest = self.remainder[form]
        if share > 0.9 or rest <= 0:
            return
        variable = min(max((rest - probe_rest) / (1.0 - share), 0.0), rest)
        self.fixed[form], self.remainder[form] = rest - variable, variable

    def _probe_rest(self, form: str, removed, measured_ms: float) -> tuple[float, float]:
        """(share, measured rest) of a probe structure's export."""
        probe = self.state(removed)
        return self._share(probe.removed_out), measured_ms - self.scale[form] * probe.layers_ms(form)

    def _narrow_rest(self, form: str, half_removed, removed, measured_ms: float) -> None:
        """The knee below the half probe: kept only where the narrow probe's share lies clearly
        below the half probe's (a model whose layers cannot narrow further has no knee)."""
        half_share = self._share(self.state(half_removed).removed_out)
        share, rest = self._probe_rest(form, removed, measured_ms)
        if share < half_share - 0.05:
            self.narrow[form] = (share, max(rest, 0.0), half_share)

    def rest_of(self, form: str, removed_out: np.ndarray) -> float:
        """The time outside the layers of a structure with these output channels removed."""
        share = self._share(removed_out)
        if form not in self.weights:
            return self.rest(form, share)
        kept = (self._cout - removed_out) / self._cout
        return self.fixed[form] + float(self.weights[form] @ kept) + self._residual(form, share)

    def _residual(self, form: str, share: float) -> float:
        points = [(1.0, 0.0)] + self.residual.get(form, [])
        for (s0, r0), (s1, r1) in zip(points, points[1:]):
            if share >= s1:
                return r1 + (r0 - r1) * (min(share, s0) - s1) / (s0 - s1)
        return points[-1][1]

    def rest(self, form: str, share: float) -> float:
        """The time outside the layers of a structure with this output-channel share (the fit
        without a profile split)."""
        line = self.fixed[form] + self.remainder[form] * share
        knee = self.narrow.get(form)
        if knee is None or share >= knee[2]:
            return line
        share_n, rest_n, share_1 = knee
        at_1 = self.fixed[form] + self.remainder[form] * share_1
        return rest_n + (at_1 - rest_n) * (max(share, share_n) - share_n) / (share_1 - share_n)

    def fit_summary(self) -> dict:
        """Per form, the unpruned model's predicted time as the fit splits it (plain JSON, for the
        report): its layers (scaled), the fixed rest, the rest that shrinks with the pruned
        channels, and whether the rest comes from onnxruntime's profile or from a difference of
        timings (docs/latency.md, "The rest, attributed")."""
        full = self.state(())
        return {form: {"layers_ms": self.scale[form] * full.layers_ms(form), "fixed_ms": self.fixed[form],
                       "shrinking_ms": self.remainder[form],
                       "rest_from": "profile" if form in self.weights else "difference"}
                for form in ("int8", "float")}

    # ---- persistence: a resumed run plans with the numbers it started with -------------
    def snapshot(self) -> dict:
        """The measured numbers (plain JSON) the plans depend on."""
        return {"original_ms": self.original_ms, "reference_ms": self.reference_ms, "remainder": dict(self.remainder),
                "scale": dict(self.scale), "fixed": dict(self.fixed),
                "narrow": {k: list(v) for k, v in self.narrow.items()},
                "weights": {k: [float(x) for x in v] for k, v in self.weights.items()},
                "residual": {k: [list(p) for p in v] for k, v in self.residual.items()},
                "float_check": self.float_check,
                "entries": {la.spec.key: e.to_json() for la, e in zip(self.layers, self._entries)}}

    def restore(self, snap: dict) -> None:
        from .table import Entry

        self.original_ms = float(snap["original_ms"])
        self.reference_ms = float(snap.get("reference_ms", self.original_ms))
        self.remainder = {k: float(v) for k, v in snap["remainder"].items()}
        self.scale = {k: float(v) for k, v in snap["scale"].items()}
        self.fixed = {k: float(v) for k, v in snap.get("fixed", {"float": 0.0, "int8": 0.0}).items()}
        self.narrow = {k: tuple(float(x) for x in v) for k, v in snap.get("narrow", {}).items()}
        # a checkpoint from before the profile split has neither: its run planned without it
        self.weights = {k: np.asarray(v, dtype=np.float64) for k, v in snap.get("weights", {}).items()}
        self.residual = {k: [(float(s), float(r)) for s, r in v] for k, v in snap.get("residual", {}).items()}
        self.float_check = snap.get("float_check", self.float_check)
        self._entries = [Entry.from_json(snap["entries"][la.spec.key], "checkpoint") for la in self.layers]

    # ---- precision ----------------------------------------------------------------------
    def slower_in_int8(self, margin: float = INT8_SLOWER) -> list[str]:
        """Node names of the quantized layers whose int8 kernel the table times more than
        `margin` x slower than their float kernel at full width (e.g. a narrow classifier
        head, docs/latency.md). Raw table times, no fitted scale, so that a resumed run that
        loads the same table decides the same."""
        slow = []
        for la, entry in zip(self.layers, self._entries):
            if not la.quantized or "int8" not in entry.ms:
                continue
            cin, cout = la.spec.widths(la.spec.cin, la.spec.cout)
            if entry.at("int8", cin, cout) > margin * entry.at("float", cin, cout):
                slow.append(la.spec.node)
        return slow

    def int4_slower(self) -> list[str]:
        """Node names of the quantized MatMul layers whose int4 form (MatMulNBits) the table
        times slower than their int8 kernel at full width: a 4-bit weight there buys size and
        costs time (docs/latency.md, "INT4 MatMul"). Raw table times, as slower_in_int8."""
        slow = []
        for la, entry in zip(self.layers, self._entries):
            if la.quantized and "int4" in entry.ms:
                cin, cout = la.spec.widths(la.spec.cin, la.spec.cout)
                if entry.at("int4", cin, cout) > entry.at("int8", cin, cout):
                    slow.append(la.spec.node)
        return slow

    # ---- one layer --------------------------------------------------------------------
    def layer_ms(self, i: int, form: str, removed_in: int = 0, removed_out: int = 0) -> float:
        spec = self.layers[i].spec
        cin, cout = spec.widths(spec.cin - removed_in, spec.cout - removed_out)
        if cout <= 0:
            return 0.0
        return self._entries[i].at(form, cin, cout)

    def _times(self, i: int, rin: int, rout: int) -> tuple[float, float]:
        t_float = self.layer_ms(i, "float", rin, rout)
        la = self.layers[i]
        if not la.quantized:
            return t_float, t_float
        form = "int4" if la.int4 and "int4" in self._entries[i].ms else "int8"
        return self.layer_ms(i, form, rin, rout), t_float

    def set_float(self, nodes) -> None:
        """The layers that went to float after training (the quality guard's end check)."""
        nodes = set(nodes)
        for la in self.layers:
            if la.spec.node in nodes:
                la.quantized = la.int4 = False

    def set_int4(self, nodes) -> None:
        """The layers exported with an INT4 weight (after training: the learned widths decide)."""
        nodes = set(nodes)
        for la in self.layers:
            la.int4 = la.quantized and la.spec.node in nodes

    # ---- whole model ------------------------------------------------------------------
    def state(self, removed) -> State:
        n = len(self.layers)
        s = State(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
        for gid in removed:
            for i, role, count in self.effects.get(gid, ()):
                (s.removed_in if role == "in" else s.removed_out)[i] += count
        times = [self._times(i, int(s.removed_in[i]), int(s.removed_out[i])) for i in range(n)]
        s.t_deployed = np.array([t[0] for t in times], dtype=np.float64)
        s.t_float = np.array([t[1] for t in times], dtype=np.float64)
        return s

    def _share(self, removed_out: np.ndarray) -> float:
        total = float((self._out * self._cout).sum())
        return float((self._out * (self._cout - removed_out)).sum()) / total if total else 1.0

    def forms_ms(self, s: State) -> dict[str, float]:
        return self._forms(float(s.t_deployed.sum()), float(s.t_float.sum()), s.removed_out)

    def _forms(self, deployed: float, flt: float, removed_out: np.ndarray) -> dict[str, float]:
        return {"int8": self.scale["int8"] * deployed + self.rest_of("int8", removed_out),
                "float": self.scale["float"] * flt + self.rest_of("float", removed_out)}

    def ms(self, s: State) -> float:
        return min(self.forms_ms(s).values())

    def _changed(self, s: State, groups) -> dict[int, tuple[int, int]]:
        touched: dict[int, list[int]] = {}
        for gid in groups:
            for i, role, count in self.effects.get(gid, ()):
                rin_rout = touched.setdefault(i, [int(s.removed_in[i]), int(s.removed_out[i])])
                rin_rout[0 if role == "in" else 1] += count
        return {i: (v[0], v[1]) for i, v in touched.items()}

    def delta(self, s: State, groups) -> float:
        """Predicted ms after also removing `groups`, minus the ms now."""
        changed = self._changed(s, groups)
        if not changed:
            return 0.0
        dep, flt, rout = float(s.t_deployed.sum()), float(s.t_float.sum()), s.removed_out.copy()
        for i, (rin, ro) in changed.items():
            new_dep, new_flt = self._times(i, rin, ro)
            dep += new_dep - s.t_deployed[i]
            flt += new_flt - s.t_float[i]
            rout[i] = ro
        return min(self._forms(dep, flt, rout).values()) - self.ms(s)

    def apply(self, s: State, groups) -> None:
        for i, (rin, rout) in self._changed(s, groups).items():
            s.removed_in[i], s.removed_out[i] = rin, rout
            s.t_deployed[i], s.t_float[i] = self._times(i, rin, rout)


def probe_removal(effects: dict[int, list[tuple[int, str, int]]], layers: list[ModelLayer], unit: int = 1,
                  narrow: bool = False) -> list[int]:
    """Groups, taken in id order, whose removal takes from every layer at most the multiple of
    `unit` nearest below half of its input and output channels: a structure about half as
    wide, spread over the model, at widths on the unit (as QASSO keeps them), for the probe
    measurement (LatencyModel's int8_probe). `narrow`: at most all but the last (partial)
    unit of each, the narrowest structure QASSO could keep (int8_narrow). Deterministic, so a
    resumed run measures the same."""
    def cap(c: int) -> int:
        return unit * ((c - 1) // unit) if narrow else unit * (c // (2 * unit))

    cap_in = [cap(la.spec.cin) for la in layers]
    cap_out = [cap(la.spec.cout) for la in layers]
    removed_in = [0] * len(layers)
    removed_out = [0] * len(layers)
    chosen = []
    for gid in sorted(effects):
        rin, rout = {}, {}
        for i, role, count in effects[gid]:
            target = rin if role == "in" else rout
            target[i] = target.get(i, removed_in[i] if role == "in" else removed_out[i]) + count
        if all(n <= cap_in[i] for i, n in rin.items()) and all(n <= cap_out[i] for i, n in rout.items()):
            for i, n in rin.items():
                removed_in[i] = n
            for i, n in rout.items():
                removed_out[i] = n
            chosen.append(gid)
    return chosen
