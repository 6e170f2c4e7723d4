"""The whole-model float check of latency.chain, repeated: the int8 reference of MODEL with its
float candidates (thin stems, layers the latency table times slower in int8) quantized and in
float, timed as compress times them, several times over, printed as float / int8 ratios.
A ratio above 1 keeps them in int8.

    python tools/bench_chain.py MODEL --data SPEC [--config FILE] [--batch 32] [--threads 2]
                                [--compare 5] [--rounds 2,5]

Measured figures: docs/latency.md, "Precision by latency". Run it alone on the machine: a
second job on the cores is what the ratios would measure.
"""
from __future__ import annotations

import argparse
import statistics

from geta_onnx.geta import _chain_decides_thin, _quantized
from geta_onnx.latency.build import whole_ms
from geta_onnx.latency.reference import int8_export
from geta_onnx.preflight import first_samples, prepare_run
from geta_onnx.qadg import analyze
from geta_onnx.quant.sites import is_thin_conv
from geta_onnx.settings import Settings, load_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", help="settings file of the run (e.g. the benchmark's resize / mean / std)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", type=int, default=5, help="comparisons per round count")
    ap.add_argument("--rounds", default="2,5", help="interleaved rounds per comparison, comma-separated")
    args = ap.parse_args()

    settings = load_settings(args.config) if args.config else Settings()
    model, data, _, _, settings = prepare_run(args.model, args.data, settings, judge=False)
    quant, qadg = _chain_decides_thin(settings.quant), analyze(model)
    module, plan = _quantized(model, data, None, {}, quant, False)
    thin = {la.node: "thin" for la in plan.layers if la.weight_quantizer is not None and is_thin_conv(model, la)}
    if not thin:
        raise SystemExit(f"{args.model}: no thin stem to compare")
    floated, floated_plan = _quantized(model, data, None, thin, quant, False)
    protos = {"int8": int8_export(module, plan, qadg, model), "float": int8_export(floated, floated_plan, qadg, model)}
    feeds = {k: v.repeat(args.batch, axis=0) for k, v in first_samples(model, data, 1).items()}
    print(f"{args.model}: {', '.join(thin)} in int8 / in float, batch {args.batch}, {args.threads} threads")
    for rounds in (int(r) for r in args.rounds.split(",")):
        ratios = []
        for _ in range(args.compare):
            ms = whole_ms(protos, feeds, args.threads, print, rounds=rounds)
            ratios.append(ms["float"] / ms["int8"])
        print(f"{rounds} rounds: float / int8 {' '.join(f'{r:.3f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.3f}; int8 kept {sum(r > 1 for r in ratios)} of {len(ratios)})")


if __name__ == "__main__":
    main()
