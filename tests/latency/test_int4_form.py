"""The int4 form of a MatMul layer (MatMulNBits): its one-layer graph is what onnxruntime fuses
and computes x @ W; a table from before the form gets it measured (on its own target only);
the latency model keeps a layer from 4 bits where MatMulNBits is slower than int8 and predicts
an int4-exported layer with its int4 time; quant_targets takes int4 away from those layers."""
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from geta_onnx.bridge import to_torch
from geta_onnx.config import QuantConfig
from geta_onnx.graph import from_proto
from geta_onnx.latency import LatencyModel, LatencyTable, Target
from geta_onnx.latency.measure import fill
from geta_onnx.latency.micro import forms, layer_graph
from geta_onnx.latency.model import ModelLayer
from geta_onnx.latency.spec import LayerSpec
from geta_onnx.latency.table import Entry
from geta_onnx.optim import quant_targets
from geta_onnx.quant.sites import attach_quantizers
from tests.helpers import make_model

TARGET = Target("onnxruntime test", "test cpu", 1, 2)


def _matmul(cin=64, cout=48, seq=8, name="mm") -> LayerSpec:
    return LayerSpec(name, "MatMul", (seq, cin), cin, cout, out_elems=seq)


def test_the_int4_graph_runs_as_matmulnbits_and_computes_x_times_w():
    conv = LayerSpec("c", "Conv", (8, 4, 4), 8, 8, kernel=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    assert forms(_matmul()) == ("int8", "float", "int4") and "int4" not in forms(conv)
    proto, feeds = layer_graph(_matmul(), 64, 48, 2, "int4")
    path = Path(tempfile.mkdtemp()) / "optimized.onnx"
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path)
    opts.log_severity_level = 3
    y = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(path)).graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w = inits["w4"].astype(np.float32) * inits["ws"][0]  # one scale per column, repeated over the blocks
    want = feeds["x"] @ w
    assert y.shape == want.shape == (2, 8, 48)
    # MatMulNBits quantizes the activation itself (8 bits per block): within 2 % of the largest output
    assert np.abs(y - want).max() <= 2e-2 * np.abs(want).max()


def test_fill_adds_the_int4_form_to_an_entry_without_it_on_its_own_target_only():
    spec = _matmul()
    table, measured = fill(None, [spec], 16, TARGET, progress=False)
    entry = table.entries[spec.key]
    assert measured == 1 and set(entry.ms) == {"int8", "float", "int4"}
    old = Entry(entry.cin, entry.cout, {f: entry.ms[f] for f in ("int8", "float")})  # a table of before
    table.entries[spec.key] = old
    table, measured = fill(table, [spec], 16, TARGET, progress=False)
    assert measured == 1 and set(table.entries[spec.key].ms) == {"int8", "float", "int4"}
    assert table.entries[spec.key].ms["int8"] is old.ms["int8"]  # the other forms are not measured again
    other = LatencyTable(Target("onnxruntime 0.0", "another cpu", 1, 2), 0.0, {spec.key: old})
    other, measured = fill(other, [spec], 16, TARGET, progress=False)
    assert measured == 0 and set(other.entries[spec.key].ms) == {"int8", "float"}


def _model(int4_ms: float, name="mm") -> LatencyModel:
    spec = _matmul(name=name)
    cin, cout = spec.width_grid(16)
    ones = np.ones((len(cin), len(cout)))
    table = LatencyTable(TARGET, 0.0, {spec.key: Entry(cin, cout, {"float": 2 * ones, "int8": ones,
                                                                    "int4": int4_ms * ones})})
    return LatencyModel([ModelLayer(spec, True)], table, original_ms=3.0, effects={}, int8_original_ms=1.5)


def test_int4_slower_than_int8_is_kept_at_8_bits_and_an_int4_layer_is_predicted_as_int4():
    assert _model(int4_ms=1.4).int4_slower() == ["mm"] and _model(int4_ms=0.6).int4_slower() == []
    lm = _model(int4_ms=1.4)
    before = lm.forms_ms(lm.state(()))["int8"]
    lm.set_int4(["mm"])
    assert lm.forms_ms(lm.state(()))["int8"] == before + 0.4  # scale 1: the whole int8 model is 1.5 ms
    lm.set_int4([])
    assert lm.forms_ms(lm.state(()))["int8"] == before


def test_a_layer_set_to_float_after_training_is_predicted_in_float():
    lm = _model(int4_ms=0.6)
    lm.set_int4(["mm"])
    before = lm.forms_ms(lm.state(()))["int8"]
    lm.set_float(["mm"])  # the quality guard's end check put it in float
    assert lm.forms_ms(lm.state(()))["int8"] == before + 1.4  # 2 ms in float against 0.6 as int4
    assert not lm.layers[0].quantized and not lm.layers[0].int4
    lm.set_int4(["mm"])  # the export's int4 layers are set after: a float layer stays float
    assert lm.forms_ms(lm.state(()))["int8"] == before + 1.4


def _two_matmuls(config: QuantConfig):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    proto = make_model(nodes, {"x": rng.standard_normal((2, 16)).astype(np.float32)}, ["y"],
                       {"w1": rng.standard_normal((16, 32)).astype(np.float32),
                        "w2": rng.standard_normal((32, 8)).astype(np.float32)}, opset=13)
    model = from_proto(proto)
    return attach_quantizers(to_torch(model), model, config)


def test_quant_targets_take_the_int4_width_from_the_layers_kept_at_8_bits():
    config = QuantConfig()
    plan = _two_matmuls(config)

    def widths(int8_only=frozenset()):
        return {t.weight: t.widths for t in quant_targets(plan, config, "ort", int8_only=int8_only) if t.weight}

    assert widths() == {"w1": (4, 8), "w2": (4, 8)}
    assert widths(frozenset({"mm2"})) == {"w1": (4, 8), "w2": (8,)}
    assert {t.weight: t.widths for t in quant_targets(plan, config, "tensorrt", frozenset({"mm2"})) if t.weight} == \
        {"w1": (8,), "w2": (8,)}


def test_int4_matmul_auto_keeps_8_bits_without_a_latency_table_and_lets_one_decide():
    """[quant] int4_matmul: "auto" without a latency budget and "off" keep every MatMul at 8
    bits (MatMulNBits is slower than int8 from 32 rows on, docs/latency.md); "auto" under a
    latency budget keeps those the table times slower; "on" keeps none; tensorrt has no int4."""
    from geta_onnx.config import PruneConfig
    from geta_onnx.geta import _int8_only

    plan = _two_matmuls(QuantConfig())
    sparsity, speed = PruneConfig(target_sparsity=0.5), PruneConfig(target_sparsity=None, target_speedup=2.0)
    table = _model(int4_ms=1.4, name="mm2")  # mm2 timed slower in int4 than in int8; mm1 not in the table

    def kept(mode, prune, latency=None, profile="ort"):
        return set(_int8_only(latency, plan, QuantConfig(int4_matmul=mode), prune, profile))

    assert kept("auto", sparsity) == kept("off", sparsity) == kept("off", speed, table) == {"mm1", "mm2"}
    assert kept("auto", speed, table) == {"mm2"}
    assert kept("on", sparsity) == kept("on", speed, table) == set()
    assert kept("auto", sparsity, profile="tensorrt") == set()  # 8 bits there anyway
