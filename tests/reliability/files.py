"""The hostile corpus's raw material: tiny models, data sets and config files written in code.

Each builder writes into a folder and returns the path; nothing is downloaded. The good
model is a 2-conv classifier on (N, 1, 8, 8) images with 4 classes, the good data 64
samples of it whose labels the model's own (seeded, random) weights predict, so the
original scores 100 % and the near-chance check stays quiet.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 4
SHAPE = (1, 8, 8)
N = 160  # samples: 144 train / 16 held out


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _conv_graph(nodes_after=(), out="logits", batch="N"):
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 0.5, (CLASSES, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(16, np.float32), "b2"),
             numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fcb")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1, name="fc"),
             *nodes_after]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *SHAPE])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, CLASSES])
    return nodes, inits, x, y


def _model(graph, opset=17) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def good_model(folder: Path, name="model.onnx") -> Path:
    nodes, inits, x, y = _conv_graph()
    return _save(_model(helper.make_graph(nodes, "good", [x], [y], inits)), folder / name)


def external_model(folder: Path) -> tuple[Path, Path]:
    """model_ext.onnx whose initializers live in weights.bin beside it."""
    from onnx.external_data_helper import convert_model_to_external_data

    nodes, inits, x, y = _conv_graph()
    m = _model(helper.make_graph(nodes, "ext", [x], [y], inits))
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save_model(m, str(folder / "model_ext.onnx"))
    return folder / "model_ext.onnx", folder / "weights.bin"


def model_variant(folder: Path, kind: str) -> Path:
    """A model that is broken, odd or unusable in the way `kind` says."""
    path = folder / f"{kind}.onnx"
    good = good_model(folder, "_good_for_variants.onnx").read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "no_inputs":
        const = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones((1, 4), np.float32)))
        g = helper.make_graph([const], "noin", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        _save(_model(g), path)
    elif kind == "no_outputs":
        nodes, inits, x, _ = _conv_graph()
        _save(_model(helper.make_graph(nodes, "noout", [x], [], inits)), path)
    elif kind == "string_input":
        s = helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])
        o = helper.make_tensor_value_info("o", TensorProto.STRING, ["N"])
        g = helper.make_graph([helper.make_node("Identity", ["s"], ["o"])], "str", [s], [o])
        _save(_model(g), path)
    elif kind == "hardmax":
        nodes, inits, x, _ = _conv_graph([helper.make_node("Hardmax", ["logits"], ["hard"], axis=1, name="hardmax")],
                                         out="hard")
        y = helper.make_tensor_value_info("hard", TensorProto.FLOAT, ["N", CLASSES])
        _save(_model(helper.make_graph(nodes, "hard", [x], [y], inits)), path)
    elif kind == "argmax_output":
        nodes, inits, x, _ = _conv_graph([helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0)])
        y = helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"])
        _save(_model(helper.make_graph(nodes, "argmax", [x], [y], inits)), path)
    elif kind == "no_weights":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *SHAPE])
        _save(_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", [x], [y])), path)
    elif kind == "unsupported_op":
        nodes, inits, x, _ = _conv_graph([helper.make_node("Frobnicate", ["logits"], ["z"], domain="com.example")])
        y = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", CLASSES])
        m = helper.make_model(helper.make_graph(nodes, "unsup", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
        m.ir_version = 8
        _save(m, path)
    elif kind == "opset_too_new":
        nodes, inits, x, y = _conv_graph()
        _save(_model(helper.make_graph(nodes, "new", [x], [y], inits), opset=99), path)
    elif kind == "opset_too_old":
        nodes, inits, x, y = _conv_graph()
        _save(_model(helper.make_graph(nodes, "old", [x], [y], inits), opset=7), path)
    elif kind == "checker_rejects":  # a node reads a tensor nobody produces
        nodes, inits, x, y = _conv_graph()
        nodes[1].input[0] = "nowhere"
        _save(_model(helper.make_graph(nodes, "dangling", [x], [y], inits)), path)
    elif kind in ("ext_missing", "ext_traversal", "ext_absolute"):
        from onnx.external_data_helper import convert_model_to_external_data

        nodes, inits, x, y = _conv_graph()
        m = _model(helper.make_graph(nodes, "ext", [x], [y], inits))
        location = {"ext_missing": "gone.bin", "ext_traversal": "../outside.bin", "ext_absolute": "/etc/hostname"}[kind]
        convert_model_to_external_data(m, all_tensors_to_one_file=True, location="placeholder.bin", size_threshold=0)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        path.write_bytes(m.SerializeToString())  # the data file itself is never written
    else:
        raise ValueError(kind)
    return path


MODEL_VARIANTS = ("empty", "truncated", "garbage", "text", "directory", "no_inputs", "no_outputs", "string_input",
                  "unsupported_op", "opset_too_new", "opset_too_old", "checker_rejects", "ext_missing",
                  "ext_traversal", "ext_absolute")


def label_with(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].argmax(1).astype(np.int64)


def good_npz(folder: Path, model: Path, n=N, name="data.npz") -> Path:
    x = np.random.default_rng(0).normal(0, 1, (n, *SHAPE)).astype(np.float32)
    np.savez(folder / name, x=x, y=label_with(model, x))
    return folder / name


def data_variant(folder: Path, model: Path, kind: str) -> str:
    """A data spec that is broken or unusable in the way `kind` says."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (N, *SHAPE)).astype(np.float32)
    y = label_with(model, x)
    npz = folder / f"{kind}.npz"
    arrays = None
    if kind == "strings":
        arrays = {"x": np.array(["a"] * N).reshape(N, 1, 1, 1), "y": y}
    elif kind == "complex":
        arrays = {"x": x.astype(np.complex64), "y": y}
    elif kind == "bool":
        arrays = {"x": x > 0, "y": y}
    elif kind == "float_labels":
        arrays = {"x": x, "y": y.astype(np.float32) + 0.5}
    elif kind == "labels_2d":
        arrays = {"x": x, "y": np.stack([y, y], 1)}
    elif kind == "string_labels":
        arrays = {"x": x, "y": np.array([str(v) for v in y])}
    elif kind == "zero_samples":
        arrays = {"x": x[:0], "y": y[:0]}
    elif kind == "five_samples":
        arrays = {"x": x[:5], "y": y[:5]}
    elif kind == "nan_inputs":
        x[3, 0, 2, 2] = np.nan
        arrays = {"x": x, "y": y}
    elif kind == "inf_inputs":
        x[5, 0, 1, 1] = np.inf
        arrays = {"x": x, "y": y}
    elif kind == "labels_out_of_range":
        y[0] = CLASSES + 3
        arrays = {"x": x, "y": y}
    elif kind == "negative_labels":
        y[0] = -1
        arrays = {"x": x, "y": y}
    elif kind == "length_mismatch":
        arrays = {"x": x, "y": y[:10]}
    elif kind == "wrong_shape":
        arrays = {"x": rng.normal(0, 1, (N, 3, 9, 9)).astype(np.float32), "y": y}
    elif kind == "scalar_samples":
        arrays = {"x": rng.normal(0, 1, N).astype(np.float32), "y": y}
    elif kind == "no_x":
        arrays = {"images": x, "y": y}
    elif kind == "object_array":
        np.savez(npz, x=np.array([object()] * 3, dtype=object), y=y[:3])
        return f"npz:{npz}"
    elif kind == "not_a_zip":
        npz.write_text("not an npz file")
        return f"npz:{npz}"
    elif kind == "eval_shape_mismatch":
        arrays = {"x": x, "y": y, "eval_x": x[:, :, :4, :4], "eval_y": y}
    elif kind == "constant_inputs":  # every sample the same: the original's outputs are degenerate
        arrays = {"x": np.zeros_like(x), "y": rng.integers(0, CLASSES, N)}
    elif kind == "random_labels":  # the model scores near chance on it: wrong data preparation
        arrays = {"x": x, "y": rng.permutation(np.arange(N) % CLASSES).astype(np.int64)}
    elif kind == "missing_file":
        return f"npz:{folder / 'nope.npz'}"
    elif kind == "unknown_scheme":
        return f"s3:{folder}/x"
    elif kind == "empty_spec":
        return "npz:"
    elif kind.startswith("py_"):
        return _py_variant(folder, kind)
    elif kind.startswith("folder_"):
        return _folder_variant(folder, kind)
    elif kind.startswith("idx_"):
        return _idx_variant(folder, kind)
    else:
        raise ValueError(kind)
    np.savez(npz, **arrays)
    return f"npz:{npz}"


def _py_variant(folder: Path, kind: str) -> str:
    body = {
        "py_raises": "def data(batch_size):\n    raise RuntimeError('boom in user code')\n",
        "py_returns_none": "def data(batch_size):\n    return None\n",
        "py_returns_int": "def data(batch_size):\n    return 42\n",
        "py_empty_loader": "def data(batch_size):\n    return [], None\n",
        "py_syntax_error": "def data(batch_size)\n    return 1\n",
        "py_bad_batches": "def data(batch_size):\n    return [('a', 'b')], None\n",
        "py_import_error": "import not_a_module_anywhere\ndef data():\n    pass\n",
        "py_wrong_signature": "def data(a, b, c):\n    return [], None\n",
    }
    if kind == "py_missing_file":
        return f"py:{folder / 'nope.py'}:data"
    if kind == "py_missing_function":
        (folder / "nofn.py").write_text("x = 1\n")
        return f"py:{folder / 'nofn.py'}:data"
    f = folder / f"{kind}.py"
    f.write_text(body[kind])
    return f"py:{f}:data"


def _folder_variant(folder: Path, kind: str) -> str:
    root = folder / kind
    root.mkdir()
    if kind == "folder_empty":
        pass
    elif kind == "folder_fake_png":
        for c in ("a", "b"):
            (root / c).mkdir()
            for i in range(3):
                (root / c / f"{i}.png").write_bytes(b"not really a png")
    elif kind == "folder_no_images":
        for c in ("a", "b"):
            (root / c).mkdir()
            (root / c / "readme.txt").write_text("nothing here")
    return f"folder:{root}"


def _idx_variant(folder: Path, kind: str) -> str:
    root = folder / kind
    root.mkdir()
    if kind == "idx_truncated":
        header = bytes([0, 0, 8, 3]) + np.array([100, 8, 8], ">u4").tobytes()
        (root / "train-images-idx3-ubyte").write_bytes(header + bytes(50))
    elif kind == "idx_bad_magic":
        (root / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(64))
    return f"idx:{root}"


DATA_VARIANTS = ("strings", "complex", "bool", "float_labels", "labels_2d", "string_labels", "zero_samples",
                 "five_samples", "nan_inputs", "inf_inputs", "labels_out_of_range", "negative_labels",
                 "length_mismatch", "wrong_shape", "scalar_samples", "no_x", "object_array", "not_a_zip",
                 "eval_shape_mismatch", "constant_inputs", "random_labels", "missing_file", "unknown_scheme",
                 "empty_spec", "py_raises", "py_returns_none", "py_returns_int", "py_empty_loader", "py_syntax_error",
                 "py_bad_batches", "py_import_error", "py_wrong_signature", "py_missing_file", "py_missing_function",
                 "folder_empty", "folder_fake_png", "folder_no_images", "idx_truncated", "idx_bad_magic")
