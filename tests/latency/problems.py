"""Small problems shared by the latency and QASSO tests: the tests' ResNet with its quantizers,
a latency model with synthetic layer times (no measurement), and QASSO under a latency budget."""
import numpy as np

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig, ScheduleConfig
from geta_onnx.graph import from_proto
from geta_onnx.graph.probe import probe_shapes
from geta_onnx.latency import LatencyModel, LatencyTable, Target
from geta_onnx.latency.build import _specs
from geta_onnx.latency.model import ModelLayer
from geta_onnx.latency.table import Entry
from geta_onnx.optim import QASSO, quant_targets
from geta_onnx.qadg import analyze
from geta_onnx.quant.sites import attach_quantizers
from geta_onnx.train.schedule import Schedule
from tests.qadg import models

TARGET = Target("onnxruntime test", "test cpu", 1, 4)


def resnet_problem():
    """The tests' two-stage ResNet with a dynamic batch and its quantizers: (model, module, plan, qadg, config)."""
    proto = models.resnet2(batch=1)[0]
    for vi in list(proto.graph.input) + list(proto.graph.output):  # a dynamic batch, as compress trains
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del proto.graph.value_info[:]
    model = from_proto(proto)
    module = to_torch(model)
    config = QuantConfig(float_thin_convs=False)
    plan = attach_quantizers(module, model, config)
    qadg = analyze(model)
    return model, module, plan, qadg, config


def synthetic_latency_model(model, plan, qadg) -> LatencyModel:
    """Layer times proportional to MACs (plus a width-independent part), no measurement."""
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    specs, effects = _specs(model, plan.layers, qadg.prunable, probe_shapes(model, feeds={"x": x}))
    entries = {}
    for spec in specs:
        cin, cout = spec.width_grid(1)
        macs = np.outer(cin, cout) * max(spec.out_elems, 1) * 1e-5
        entries[spec.key] = Entry(cin, cout, {"float": macs + 0.01, "int8": macs / 3 + 0.01})
    table = LatencyTable(TARGET, 0.0, entries)
    full = sum(e.ms["float"][-1, -1] for e in entries.values())
    return LatencyModel([ModelLayer(s, True) for s in specs], table, full * 1.2, effects,
                        int8_original_ms=full / 2)


def latency_qasso(module, plan, qadg, config, lm, budget, steps=30, selection="count"):
    """QASSO under a latency budget of `budget` ms on `lm`, 2 projection and 2 pruning periods in `steps`
    (pruning [0.15, 0.35) of them: 3-step periods in 30 steps, whatever the default schedule)."""
    stages = Schedule.from_config(steps, ScheduleConfig(steps=steps, projection_periods=2, pruning_periods=2,
                                                        warmup=0.05, projection=0.1, pruning_start=0.15, pruning=0.2))
    return QASSO(module, qadg, quant_targets(plan, config), stages, lr=0.01, base="adam", target_sparsity=None,
                 group_divisible=1, target_latency_ms=budget, latency=lm, latency_selection=selection)
