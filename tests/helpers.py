"""Tiny ONNX models built in code, and the differential harness (onnxruntime vs bridge).

Tolerances are stated by each caller; the default (atol 1e-5 + rtol 1e-4 of the
reference's largest magnitude) fits float32 ops computed in a different order.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from geta_onnx.bridge import compare_outputs, run_bridge, run_onnxruntime, to_torch
from geta_onnx.graph import from_proto

SEED = 0


def rng(seed: int = SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_model(nodes, inputs: dict[str, np.ndarray], outputs: list[str], initializers: dict[str, np.ndarray] | None = None,
               opset: int = 17, ir_version: int | None = None, extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """A checked model whose graph inputs take their dtype/shape from example arrays and
    whose output types come from shape inference."""
    initializers = initializers or {}
    g_inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.asarray(v).shape)
                for k, v in inputs.items()]
    g_outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = helper.make_graph(nodes, "test", g_inputs, g_outputs, inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version or min(onnx.IR_VERSION, 10)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    for out in model.graph.output:
        if out.name not in types:
            raise ValueError(f"cannot infer the type of output {out.name}; pass a simpler test graph")
        out.type.CopyFrom(types[out.name])
    onnx.checker.check_model(model)
    return model


def bridge_outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], train: bool = False):
    module = to_torch(from_proto(proto))
    module.train(train)
    return module, run_bridge(module, feeds)


def assert_parity(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, atol: float = 1e-5, rtol: float = 1e-4,
                  grad: bool = True, gradcheck: bool = False, check_dtype: bool = True):
    """onnxruntime (optimisations off) vs the bridge in eval mode, output by output.

    grad: backward from every float output reaches every float input and parameter with
    finite values. gradcheck: additionally torch.autograd.gradcheck of the bridged module
    in float64 (finite differences vs autograd) on the float inputs.
    Returns the bridged module for further checks."""
    want = run_onnxruntime(proto, feeds)
    module, got = bridge_outputs(proto, feeds)
    names = [o.name for o in proto.graph.output]
    for d, g, w in zip(compare_outputs(names, got, want), got, want):
        assert d.shape_ok, f"{d.output}: shape {np.shape(g)} != onnxruntime {np.shape(w)}"
        if check_dtype:
            assert np.asarray(g).dtype == np.asarray(w).dtype, f"{d.output}: dtype {np.asarray(g).dtype} != {np.asarray(w).dtype}"
        scale = float(np.nanmax(np.abs(np.asarray(w, dtype=np.float64)))) if np.size(w) and not np.isnan(np.asarray(w, dtype=np.float64)).all() else 0.0
        assert d.max_abs <= atol + rtol * scale, f"{d.output}: max abs diff {d.max_abs:.3g} (scale {scale:.3g})"
    if grad:
        assert_gradients(module, feeds)
    if gradcheck:
        assert_gradcheck(module, feeds)
    return module


def _float_args(module, feeds, dtype=None):
    args = []
    for name in module.input_names:
        t = torch.from_numpy(np.array(feeds[name]))
        if t.is_floating_point():
            t = t.to(dtype or t.dtype).requires_grad_(True)
        args.append(t)
    return args


def assert_gradients(module, feeds, seed: int = SEED):
    module.zero_grad()
    args = _float_args(module, feeds)
    out = module(*args)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
    if not outs:
        return
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    for name, a in zip(module.input_names, args):
        if a.requires_grad:
            assert a.grad is not None and torch.isfinite(a.grad).all(), f"no finite gradient for input {name}"
    for qual, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient for parameter {qual}"


def assert_gradcheck(module, feeds, atol: float = 1e-5, rtol: float = 1e-3):
    m = copy.deepcopy(module).double().eval()
    args = _float_args(m, feeds, dtype=torch.float64)
    float_idx = [i for i, a in enumerate(args) if a.requires_grad]

    def f(*floats):
        full = list(args)
        for i, t in zip(float_idx, floats):
            full[i] = t
        out = m(*full)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o for o in outs if o.is_floating_point())

    assert torch.autograd.gradcheck(f, tuple(args[i] for i in float_idx), atol=atol, rtol=rtol, eps=1e-6)


@torch.jit.script
def _pool_time(h):
    if h.shape[-1] == 1:  # exported as If(Equal(Shape(h)[-1], 1)), with a nested If inside squeeze
        return h.squeeze(-1)
    return h.mean(-1)


class ScriptedCNN(torch.nn.Module):
    """Conv1d x2 and a torch.jit.script pooling helper whose `if` on the length exports as an
    ONNX If node (graph/branches.py decides it on the data)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv1d(4, 16, 3, padding=1), torch.nn.Conv1d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(_pool_time(torch.relu(self.c2(torch.relu(self.c1(x))))))


def export_scripted_cnn(path, classes: int = 3) -> None:
    """ScriptedCNN, seeded, by the legacy exporter with a dynamic batch and length (x: N x 4 x T)."""
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ScriptedCNN(classes).eval(), (torch.randn(2, 4, 6),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "time"}, "y": {0: "batch"}})
