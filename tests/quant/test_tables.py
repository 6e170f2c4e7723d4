"""Embedding tables in int8 (quant/tables.py): which tables qualify, the fake-quant module
against its export (bitwise on the table: the same integers and steps), the quantizer off
giving the original function, the straight-through gradient, a pruned (zero) column, the
export read back as float by integer_ops, and a short compress that ships the int8 table.

The model: ids (B, L) -> Gather(table (V, D)) -> Mul(2) -> y, so that the output is the
gathered rows times an exact factor (a compare of the table's values alone), and a small
classifier (Gather -> ReduceMean -> Gemm) for the compress.
"""
from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from geta_onnx.bridge import to_torch
from geta_onnx.bridge.parity import run_onnxruntime
from geta_onnx.config import QuantConfig
from geta_onnx.export import export_onnx
from geta_onnx.graph import OnnxModel
from geta_onnx.graph.quantized import as_float
from geta_onnx.qadg import analyze
from geta_onnx.quant import attach_quantizers
from geta_onnx.quant.quantizer import quantizers_off
from geta_onnx.quant.tables import TABLE_MIN_ELEMENTS, find_tables, table_int8
from tests.export.helpers import cli_inspect, initializer, short_compress

V, D = 256, 32  # 8,192 weights: above TABLE_MIN_ELEMENTS


def _table(seed: int = 0, rows: int = V, cols: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 2.0, cols)).astype(np.float32)


def _lookup_model(opset: int = 17, table=None, extra=(), const_ids: bool = False) -> OnnxModel:
    """ids -> Gather(table) -> Mul(2) -> y; `extra` nodes / initializers appended."""
    table = _table() if table is None else table
    nodes = [helper.make_node("Gather", ["table", "ids_c" if const_ids else "ids"], ["rows"], name="gather"),
             helper.make_node("Mul", ["rows", "two"], ["y"], name="mul")]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.float32(2.0), "two")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L", table.shape[1]])]
    if const_ids:
        inits.append(numpy_helper.from_array(np.array([[1, 2]], dtype=np.int64), "ids_c"))
    for node, init, out in extra:
        nodes.append(node)
        inits += init
        outputs.append(out)
    graph = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "L"])],
                              outputs, inits)
    return OnnxModel(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _ids(batch: int = 4, length: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, (batch, length)).astype(np.int64)


def _attached(model: OnnxModel, **cfg):
    module = to_torch(model).eval()
    plan = attach_quantizers(module, model, QuantConfig(**cfg))
    return module, plan


def _trainable(model: OnnxModel) -> frozenset[str]:
    module = to_torch(model)
    return frozenset(n for q, n in module.initializer_of.items() if q.startswith("params."))


def test_which_tables_qualify():
    model = _lookup_model()
    assert find_tables(model, _trainable(model)) == [("table", ("gather",))]
    small = _lookup_model(table=_table(rows=16))
    assert 16 * D < TABLE_MIN_ELEMENTS and find_tables(small, _trainable(small)) == []
    # a tied table (also a MatMul weight, an LM head reading it transposed) keeps its float: two grids
    tied = _lookup_model(extra=[(helper.make_node("Transpose", ["table"], ["table_t"], name="t"), [],
                                 helper.make_tensor_value_info("table_t", TensorProto.FLOAT, None)),
                                (helper.make_node("MatMul", ["y", "table_t"], ["logits"], name="head"), [],
                                 helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))])
    assert find_tables(tied, _trainable(tied)) == []
    const = _lookup_model(const_ids=True)  # constant positions: not an embedding lookup to quantize
    assert find_tables(const, frozenset({"table"})) == []


@pytest.mark.parametrize("opset", [17, 11])
def test_export_equals_the_fake_quant_module_bitwise(opset):
    model = _lookup_model(opset)
    module, plan = _attached(model)
    (table,) = plan.tables
    ids = _ids()
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
        with quantizers_off(plan.every_quantizer()):
            original = module(torch.from_numpy(ids)).numpy()
    assert np.array_equal(original, 2 * _table()[ids])  # off: the original function, bitwise
    assert not np.array_equal(want, original)
    ints, steps = table_int8(_table())
    assert steps.shape == (D,) and np.array_equal(want, 2 * (ints.astype(np.float32) * steps)[ids])
    assert np.all(np.abs(want - original) <= steps * (1 + 1e-6))  # half a step per column, times the Mul's 2
    result = type("R", (), {"module": module, "plan": plan, "qadg": analyze(model), "removed_groups": set()})()
    for profile in ("ort", "tensorrt"):
        proto = export_onnx(result, model, profile)
        got = run_onnxruntime(proto, {"ids": ids})[0]
        assert np.array_equal(got, want), profile
        gather = next(n for n in proto.graph.node if n.op_type == "Gather")
        stored = initializer(proto, gather.input[0])
        if profile == "ort":  # Gather(int8) -> Cast -> Mul(steps): the int8 rows gathered, then scaled
            assert stored.dtype == np.int8 and np.array_equal(stored, ints)
            cast = next(n for n in proto.graph.node if gather.output[0] in n.input)
            mul = next(n for n in proto.graph.node if cast.output[0] in n.input)
            assert (cast.op_type, mul.op_type) == ("Cast", "Mul")
            assert np.array_equal(initializer(proto, mul.input[1]), steps)
            back, _ = as_float(OnnxModel(proto))  # read back as float (a compress of this output trains it again)
            table_back = back.array(next(n for n in back.nodes if n.op_type == "Gather").input[0])
            assert np.array_equal(table_back, ints.astype(np.float32) * steps)
            assert [n.op_type for n in back.nodes] == ["Gather", "Mul"]
        else:  # tensorrt: the fake-quant values in float
            assert stored.dtype == np.float32 and np.array_equal(stored, ints.astype(np.float32) * steps)


def test_gradient_passes_straight_through_and_zero_columns_stay_zero():
    table = _table()
    table[:, 3] = 0.0  # a pruned channel
    model = _lookup_model(table=table)
    module, plan = _attached(model)
    ids = torch.from_numpy(_ids())
    upstream = torch.randn(4, 16, D, generator=torch.Generator().manual_seed(0))
    grads = []
    for on in (True, False):
        module.zero_grad()
        plan.quantizer(plan.tables[0].quantizer).enabled = on
        out = module(ids)
        (out * upstream).sum().backward()
        grads.append(module.parameter("table").grad.clone())
        if on:
            assert torch.count_nonzero(out[..., 3]) == 0
    assert torch.equal(grads[0], grads[1])
    _, steps = table_int8(table)
    assert steps[3] == 1.0 and np.all(steps > 0)


def test_tables_off_by_config():
    model = _lookup_model()
    module, plan = _attached(model, quantize_tables=False)
    assert plan.tables == [] and not any(name.startswith("t_") for name, _ in module.quantizers.named_children())


def _classifier(tmp_path):
    """ids (B, 12) -> Gather(table 512 x 32) -> ReduceMean(L) -> Gemm(32 -> 4): labels from a
    fixed random linear rule on the mean embedding."""
    rng = np.random.default_rng(0)
    table, w = _table(rows=512), (rng.standard_normal((32, 4)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
             helper.make_node("ReduceMean", ["rows"], ["mean"], name="mean", axes=[1], keepdims=0),
             helper.make_node("Gemm", ["mean", "w", "b"], ["logits"], name="head")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((table, "table"), (w, "w"), (np.zeros(4, np.float32), "b"))]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 4])], inits)
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    ids = rng.integers(0, 512, (600, 12)).astype(np.int64)
    y = (table[ids].mean(1) @ w).argmax(1).astype(np.int64)
    npz = tmp_path / "data.npz"
    np.savez(npz, x=ids[:500], y=y[:500], eval_x=ids[500:], eval_y=y[500:])
    return path, npz, table


@pytest.mark.parametrize("profile", ["ort", "tensorrt"])
def test_compress_ships_the_table_in_int8(profile, tmp_path):
    """ort: the pruned table as int8 (whichever export ships: the float twin keeps the table's
    Gather -> DequantizeLinear), in the report; tensorrt: trained and exported in float."""
    path, npz, table = _classifier(tmp_path)
    out = tmp_path / "out" / "small.onnx"
    proto, report = short_compress(path, npz, out, profile, group_divisible=8)
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    stored = initializer(proto, gather.input[0])
    if profile == "tensorrt":
        assert stored.dtype == np.float32 and "tables" not in report
        return
    (row,) = report["tables"]
    assert row["name"] == "table" and row["rows"] == 512 and row["total"] == 32 and row["kept"] < 32
    assert stored.dtype == np.int8 and stored.shape == (512, row["kept"])  # the pruned columns gone
    assert report["size_bytes"]["compressed"] < table.nbytes / 2
    assert "Embedding tables in int8" in out.with_suffix(".report.md").read_text()


def test_inspect_names_the_tables_compress_stores_in_int8(tmp_path):
    path, _, _ = _classifier(tmp_path)
    output, report = cli_inspect(path, tmp_path)
    assert "embedding tables  table 512 x 32 (int8" in output
    assert report["embedding_tables"] == [
        {"name": "table", "shape": [512, 32], "gathers": 1}]
