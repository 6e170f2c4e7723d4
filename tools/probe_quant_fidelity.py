"""Where quantization error comes from, before any training: the cosine of a model's output
to the fp32 original with only its weights, or only its activations, fake-quantized at fixed
bit widths (activation ranges calibrated on training batches, as `compress` does).

    python tools/probe_quant_fidelity.py assets/minilm/minilm.onnx --data npz:runs/minilm/minilm_text.npz \
        --output 1 --weight-bits 8,6,4 --percentile 99.99

The sentence-embedding model of the MiniLM sample: 8-bit activations alone 0.940, 8-bit
weights alone 0.9996 (docs/measurements.md).
"""
from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geta_onnx.bridge import to_torch  # noqa: E402
from geta_onnx.config import DataConfig, QuantConfig  # noqa: E402
from geta_onnx.graph import load_model  # noqa: E402
from geta_onnx.quant.calibrate import calibrate  # noqa: E402
from geta_onnx.quant.sites import attach_quantizers  # noqa: E402
from geta_onnx.train import load_data, split_batch  # noqa: E402
from geta_onnx.train.losses import pick  # noqa: E402


def cosine(module, reference: torch.Tensor, batches, output: int) -> float:
    with torch.no_grad():
        out = torch.cat([pick(module(*b), output) for b in batches])
    return float(F.cosine_similarity(out.flatten(1), reference.flatten(1)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True, help="data spec; its eval split is scored")
    p.add_argument("--output", type=int, default=0, help="which model output to compare")
    p.add_argument("--weight-bits", default="8,6,4", help="weight bit widths to probe (weights only)")
    p.add_argument("--act-bits", type=int, default=8, help="activation bit width (activations only)")
    p.add_argument("--percentile", type=float, default=99.99, help="activation calibration percentile")
    p.add_argument("--batches", type=int, default=4, help="eval batches scored (and calibration batches: 8)")
    a = p.parse_args()
    torch.manual_seed(0)
    model = load_model(a.model)
    data = load_data(a.data, DataConfig(batch_size=32, shuffle=False), model=model, seed=0)
    names = [i.name for i in model.inputs]
    evals = [tuple(split_batch(b, names)[0]) for b in islice(data.eval, a.batches)]
    calib = [tuple(split_batch(b, names)[0]) for b in islice(data.train, 8)]
    original = to_torch(model).eval()
    with torch.no_grad():
        reference = torch.cat([pick(original(*b), a.output) for b in evals])
    probes = [("activations", a.act_bits)] + [("weights", int(b)) for b in a.weight_bits.split(",")]
    for kind, bits in probes:
        cfg = QuantConfig(weight_bits=(bits, bits) if kind == "weights" else (8, 8), act_bits=(a.act_bits, a.act_bits),
                          weight_bits_start=bits if kind == "weights" else 8, act_bits_start=a.act_bits,
                          per_channel=True, calibration_percentile=a.percentile)
        module = to_torch(model).eval()
        plan = attach_quantizers(module, model, cfg)
        calibrate(module, plan, calib, cfg)
        off = plan.act_quantizers() if kind == "weights" else plan.weight_quantizers()
        for q in off.values():
            q.enabled = False
        print(f"{kind} only at {bits} bits: cosine {cosine(module, reference, evals, a.output):.4f}")


if __name__ == "__main__":
    main()
