"""Which layers stay in float, decided on the whole int8 chain (docs/latency.md, "Precision
by latency").

One-layer times call some layers slower in int8 than in float: thin stems
(quant.sites.is_thin_conv) and the layers the table times more than INT8_SLOWER x slower
(LatencyModel.slower_in_int8). But a float layer between int8 ones also makes onnxruntime
leave its int8 chain: a DequantizeLinear, and around a residual Add layout Transposes of whole
activations, which no one-layer time holds (docs/measurements.md, "The last residual Add in
int8"). So the int8 reference is exported twice, with those layers in int8 and in float, and
the two files are timed interleaved; the layers stay in float only when that file is not
slower.

    candidates = float_candidates(model, plan, latency, exclude=keep_float)   # node -> reason
    check = timed_check(candidates, int8_proto, float_proto, feeds, threads)   # plain JSON
    check["kept"]                                                              # "int8" | "float"
"""
from __future__ import annotations

from ..quant.sites import is_thin_conv
from .build import whole_ms

# interleaved rounds of the two references: on the Fashion-MNIST ResNet the float stem measured
# 3-6 % slower in every one of 10 comparisons, on MobileNetV2 0-2 % faster (docs/latency.md)
ROUNDS = 3


def float_candidates(model, plan, latency, exclude=(), thin: bool = True) -> dict[str, str]:
    """node -> "thin" | "latency": the quantized layers of `plan` (quant.QuantPlan) that
    one-layer times call slower in int8, less those in `exclude` (already float for another
    reason). `thin`: thin stems are candidates ([quant] float_thin_convs)."""
    found = {n: "latency" for n in latency.slower_in_int8()}
    if thin:
        found.update({la.node: "thin" for la in plan.layers
                      if la.weight_quantizer is not None and is_thin_conv(model, la)})
    return {n: why for n, why in found.items() if n not in exclude}


def untimed_check(candidates: dict[str, str], why: str) -> dict:
    """The one-layer decision, taken as it is (no whole-model timing possible or wanted)."""
    return {"layers": dict(candidates), "kept": "float", "why": why}


def timed_check(candidates: dict[str, str], int8_proto, float_proto, feeds, threads: int, log_line=print) -> dict:
    """The two int8 references (ModelProtos: the candidates quantized / in float) timed
    interleaved (build.whole_ms); float is kept when it is not slower."""
    if int8_proto is None or float_proto is None:
        return untimed_check(candidates, "an int8 reference could not be exported; the one-layer times decide")
    ms = whole_ms({"int8": int8_proto, "float": float_proto}, feeds, threads, log_line, rounds=ROUNDS)
    kept = "float" if ms["float"] <= ms["int8"] else "int8"
    return {"layers": dict(candidates), "kept": kept, "int8_ms": ms["int8"], "float_ms": ms["float"],
            "why": f"the model ran {ms['int8']:.3f} ms with them in int8 and {ms['float']:.3f} ms in float"}
