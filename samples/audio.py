"""Speech-like audio made offline, and the streaming inputs of a stateful voice model.

`speech_like`: voiced syllables (a glottal pulse train at 90-250 Hz through three formant
resonators, 3-5 syllables a second) between pauses, over a noise floor, peak about 0.3: the
level and rhythm voice-activity models see, with no recording needed.

`streaming_samples`: a stateful model (Silero VAD: input [batch, chunk], state [2, batch,
128], sr) run over consecutive chunks the way it is deployed; each sample is one chunk WITH
the state the original model carried into it, so a compressed model is trained and scored on
the states it meets in use, not only on a zero state.
"""
from __future__ import annotations

import numpy as np


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = rng.normal(0, 0.003, n)  # noise floor
    t = 0
    while t < n:
        pause = int(rng.uniform(0.05, 0.6) * sr)
        length = int(rng.uniform(0.12, 0.3) * sr)
        t += pause
        if t >= n:
            break
        length = min(length, n - t)
        f0 = rng.uniform(90, 250)
        pulses = np.zeros(length)
        pulses[(np.arange(0, length, sr / f0)).astype(int)] = 1.0
        voiced = pulses
        for formant, bandwidth in ((rng.uniform(300, 900), 80), (rng.uniform(900, 2200), 120), (2600.0, 200)):
            r = np.exp(-np.pi * bandwidth / sr)
            theta = 2 * np.pi * formant / sr
            voiced = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], voiced)
        envelope = np.sin(np.linspace(0, np.pi, length)) ** 2
        voiced = voiced * envelope
        out[t:t + length] += 0.3 * voiced / (np.abs(voiced).max() + 1e-9)
        t += length
    return out.astype(np.float32)


def streaming_samples(model_path, audio: np.ndarray, chunk: int = 512, context: int = 64, sr: int = 16000,
                      streams: int = 4) -> dict[str, np.ndarray]:
    """{'input': [n, context + chunk], 'state': [n, 2, 128]}: `audio` cut into `streams`
    consecutive streams of chunks, each run through the original model (onnxruntime) one
    chunk at a time from a zero state, each chunk after the last `context` samples of the one
    before (Silero VAD 5+ reads 64 samples of context at 16 kHz); sample k holds chunk k and
    the state the model carried into it (batch-first, as the data gives every input)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: the dynamo export's unused initializers are warned about
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    state_dims = next(i.shape for i in session.get_inputs() if i.name == "state")
    per = len(audio) // (streams * chunk)
    chunks = audio[:streams * per * chunk].reshape(streams, per, chunk)  # [stream, step, chunk]
    state = np.zeros((state_dims[0], streams, state_dims[2]), dtype=np.float32)
    before = np.zeros((streams, context), dtype=np.float32)
    inputs, states = [], []
    for step in range(per):
        x = np.concatenate([before, chunks[:, step]], axis=1)
        inputs.append(x)
        states.append(state.transpose(1, 0, 2))
        _, state = session.run(None, {"input": x, "state": state, "sr": np.array(sr, dtype=np.int64)})
        before = chunks[:, step, chunk - context:]
    return {"input": np.concatenate(inputs).astype(np.float32),
            "state": np.ascontiguousarray(np.concatenate(states)).astype(np.float32)}
