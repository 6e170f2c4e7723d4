"""QuantPlan: where attach_quantizers put quantizers, for the optimizer, BOPs and export.

A LAYER is a Conv / ConvTranspose / Gemm / MatMul whose weight is a trainable
initializer (directly, or behind one Transpose as the legacy exporter writes W^T): the
candidates for quantization, whether quantized or kept in float (skip_first, skip_last,
exclude, thin stems). A SITE is one quantized input of one layer. Several sites may share one
quantizer: the q, k and v projections reading one activation tensor, or ops sharing a
weight.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from torch import nn

from ..errors import GetaError
from .recurrent import QuantRecurrent
from .tables import QuantTable


@dataclass(frozen=True)
class QuantLayer:
    """One weighted layer: where its weight is in the graph, how it is quantized, and why it
    stays float if it does. The one record of a layer that sites, QASSO, BOPs, the latency
    model, the export and the report read; its quantizers (by name) hold the enforced bit
    bounds (Quantizer.bit_range, see QuantPlan.bit_range)."""

    node: str  # ONNX node name
    op_type: str
    weight: str  # the trainable initializer
    weight_shape: tuple[int, ...]  # in the initializer's layout
    w_slot: int  # node input holding the weight
    act_slot: int | None  # node input holding the activation (None: a constant / parameter there)
    axis: int | None  # output-channel axis of the node's weight input (None: a 1-D MatMul weight)
    out_axis: int | None  # the same axis in the initializer's layout (differs behind a Transpose)
    transpose: str | None  # the Transpose node between initializer and layer (the legacy exporter's W^T)
    perm: tuple[int, ...] | None  # its permutation: the node's weight dim i is the initializer's dim perm[i]
    macs: int | None  # MACs per sample (graph.stats.op_cost); None: unknown shapes
    weight_quantizer: str | None = None  # qualified name; None when kept in float
    act_quantizer: str | None = None
    # why the layer stays in float: "skip_first", "skip_last", "exclude", "thin", "latency" (int8 timed
    # slower), "quality" (the quality guard's per-layer fallback, optim/guard.py), or ""
    skipped: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuantSite:
    """One quantized input of one layer (or a conv output, kind "output"); the layer's
    geometry is in its QuantLayer (QuantPlan.layer(site.node))."""

    node: str  # ONNX node name of the layer (an output site: the conv, or the residual Add)
    kind: str  # "weight" | "act" | "output"
    tensor: str  # weight: the initializer; act: the activation tensor the node reads; output: see below
    input_index: int  # the node input that is quantized (-1 for an output site)
    quantizer: str  # qualified module name, e.g. "quantizers.w_conv1_weight"
    signed: bool
    per_channel: bool = False  # weights: one (d, q_m) per output channel (QuantLayer.axis)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantPlan:
    sites: list[QuantSite]
    layers: list[QuantLayer]
    tables: list[QuantTable] = field(default_factory=list)  # embedding tables in int8 (quant/tables.py)
    recurrent: list[QuantRecurrent] = field(default_factory=list)  # LSTM weights in int8 (quant/recurrent.py)
    # the module the quantizers live on (set by attach_quantizers); not part of equality / repr
    module: nn.Module | None = field(default=None, repr=False, compare=False)

    def bind(self, module: nn.Module) -> "QuantPlan":
        """The same plan for another module with the same quantizers (e.g. a deep copy)."""
        return replace(self, module=module)

    # ---- sites ---------------------------------------------------------------------
    def weight_sites(self) -> list[QuantSite]:
        return [s for s in self.sites if s.kind == "weight"]

    def act_sites(self) -> list[QuantSite]:
        return [s for s in self.sites if s.kind == "act"]

    def output_sites(self) -> list[QuantSite]:
        """Activation quantizers on a conv's output that no layer reads directly (residual
        Add / pooling inputs): `node` is the conv, `tensor` the quantized tensor; or on a
        residual Add's output (sites.residual_outputs): `node` is the Add."""
        return [s for s in self.sites if s.kind == "output"]

    def sites_of(self, node: str) -> list[QuantSite]:
        """The sites of ONNX node `node` (weight first); [] when it is not quantized."""
        return sorted((s for s in self.sites if s.node == node), key=lambda s: s.kind != "weight")

    def layer(self, node: str) -> QuantLayer:
        for layer in self.layers:
            if layer.node == node:
                return layer
        raise KeyError(f"node '{node}' is not a weighted layer of this plan")

    def bit_range(self, quantizer: str | None) -> tuple[int, int] | None:
        """The bounds [b_l, b_u] quantizer `quantizer` is held in (None: no quantizer)."""
        return None if quantizer is None else tuple(int(b) for b in self.quantizer(quantizer).bit_range)

    # ---- quantizer modules ---------------------------------------------------------------
    def quantizer(self, name: str):
        """The Quantizer module with qualified name `name`."""
        if self.module is None:
            raise GetaError("this QuantPlan is not bound to a module (attach_quantizers binds it)")
        return self.module.get_submodule(name)

    def quantizers(self, kind: str | tuple[str, ...] | None = None) -> dict:
        """Unique quantizers in site order, qualified name -> Quantizer (optionally of some kinds)."""
        kinds = (kind,) if isinstance(kind, str) else kind
        names = dict.fromkeys(s.quantizer for s in self.sites if kinds is None or s.kind in kinds)
        return {n: self.quantizer(n) for n in names}

    def every_quantizer(self) -> list:
        """The quantizers of the sites, the embedding tables' and the recurrent weights' ones:
        what quantizers_off turns off for the fp32 model."""
        return [*self.quantizers().values(), *(self.quantizer(t.quantizer) for t in self.tables),
                *(self.quantizer(q) for r in self.recurrent for q in r.quantizers)]

    def weight_quantizers(self) -> dict:
        return self.quantizers("weight")

    def act_quantizers(self) -> dict:
        """Every activation quantizer: layer inputs and conv outputs."""
        return self.quantizers(("act", "output"))

    def only_of(self, nodes) -> list[str]:
        """The quantizers (qualified names, in site order) that only the sites of `nodes` use."""
        users: dict[str, set[str]] = {}
        for s in self.sites:
            users.setdefault(s.quantizer, set()).add(s.node)
        return [name for name, used_by in users.items() if used_by <= set(nodes)]

    def with_float(self, nodes, reason: str) -> "QuantPlan":
        """This plan with layers `nodes` in float after training (the quality guard's end
        check): their weight and input sites go, and every quantizer no remaining site uses
        (a conv's output quantizer, an input quantizer only they read). An input quantizer
        shared with a layer that stays quantized stays: the float layer reads the quantized
        tensor, in the module as in the export. The quantizers that go must already be off
        (Quantizer.enabled), so the module computes what the export of this plan does."""
        nodes = set(nodes)
        gone = set(self.only_of(nodes))
        on = sorted(name for name in gone if self.quantizer(name).enabled)
        if on:
            raise GetaError(f"QuantPlan.with_float: quantizer(s) {', '.join(on)} of the layers going to float are "
                            "still on; turn them off first (Quantizer.enabled = False)")
        sites = [s for s in self.sites if s.quantizer not in gone and not (s.node in nodes and s.kind != "output")]
        layers = [replace(la, weight_quantizer=None, act_quantizer=None, skipped=reason) if la.node in nodes else la
                  for la in self.layers]
        return replace(self, sites=sites, layers=layers)

    def to_dict(self) -> dict:
        return {"sites": [s.to_dict() for s in self.sites], "layers": [la.to_dict() for la in self.layers],
                "tables": [t.to_dict() for t in self.tables], "recurrent": [r.to_dict() for r in self.recurrent]}
