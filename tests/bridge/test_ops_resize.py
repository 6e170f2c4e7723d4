"""Differential tests, onnxruntime vs bridge, of ops/resize.py (Resize, Upsample) and
ops/spatial.py (Pad, DepthToSpace, SpaceToDepth).

Tolerances: Pad / DepthToSpace / SpaceToDepth / nearest Resize move values: exact (atol 0).
Linear and cubic Resize weight 2 or 4 taps per axis, summed axis by axis here and in
another order by onnxruntime: atol 1e-5 + rtol 1e-5 of the largest magnitude.
Resize runs two ways, F.interpolate where it is exact and the generic per-axis path; the
tests run the generic path too (`allow_fast = False`) and require both to agree.
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from geta_onnx.bridge import run_bridge, run_onnxruntime, to_torch
from geta_onnx.errors import ConversionError
from geta_onnx.graph import OnnxModel, from_proto
from geta_onnx.graph.normalize import name_nodes
from tests.bridge.test_ops_shape import assert_legacy_parity
from tests.helpers import assert_parity, make_model, rng

EXACT = dict(atol=0.0, rtol=0.0)
SMOOTH = dict(atol=1e-5, rtol=1e-5)
I64 = np.int64
F32 = np.float32


def rand(*shape, seed=0):
    return rng(seed).standard_normal(shape).astype(F32)


def ints(*values):
    return np.array(values, dtype=I64)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


# ---- Pad --------------------------------------------------------------------------------------

PADS_4D = {  # pads over (N, C, H, W): begins then ends
    "spatial": [0, 0, 1, 2, 0, 0, 2, 1],  # F.pad fast path for every mode
    "channels": [0, 1, 1, 0, 0, 2, 0, 1],  # padding C: generic path
    "crop": [0, 0, -1, 1, 0, 0, 2, -2],  # negative pads crop
}


@pytest.mark.parametrize("opset,mode", [(o, m) for o in (11, 13, 18, 19, 21)
                                         for m in ("constant", "reflect", "edge", "wrap")
                                         if m != "wrap" or o >= 19])  # wrap exists from Pad-19
@pytest.mark.parametrize("case", list(PADS_4D))
def test_pad(opset, mode, case):
    x = rand(2, 3, 4, 5)
    inits = {"pads": ints(*PADS_4D[case])}
    names = ["x", "pads"]
    if mode == "constant":
        names.append("value")
        inits["value"] = np.array(1.5, F32)
    m = make_model([node("Pad", names, ["y"], mode=mode)], {"x": x}, ["y"], inits, opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_axes_input_and_2d(mode):
    # Pad-18 axes (negative too) on a 2-D tensor (never the F.pad fast path for non-constant)
    x = rand(4, 5)
    m = make_model([node("Pad", ["x", "pads", "", "axes"], ["y"], mode=mode)], {"x": x}, ["y"],
                   {"pads": ints(2, -1, 3, 1), "axes": ints(-1, 0)}, opset=19)
    assert_parity(m, {"x": x}, **EXACT)


def test_pad_runtime_pads_and_value_int_input():
    x = rng(1).integers(-9, 9, size=(2, 3)).astype(np.int32)
    feeds = {"x": x, "pads": ints(1, 0, 0, 2), "value": np.array(7, np.int32)}
    assert_parity(make_model([node("Pad", ["x", "pads", "value"], ["y"])], feeds, ["y"], opset=13), feeds, **EXACT)


def test_pad_reflect_gradcheck():
    x = rand(1, 2, 3, 4).astype(np.float64)
    m = make_model([node("Pad", ["x", "pads"], ["y"], mode="reflect")], {"x": x}, ["y"], {"pads": ints(0, 1, 2, 1, 0, 0, 1, 3)})
    assert_parity(m, {"x": x}, gradcheck=True, **EXACT)


def test_pad_legacy_attribute():
    x = rand(2, 3)
    assert_legacy_parity(make_model([node("Pad", ["x"], ["y"], pads=[1, 0, 0, 2], value=2.0)], {"x": x}, ["y"], opset=9), {"x": x})


# ---- DepthToSpace / SpaceToDepth ------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("block", [2, 3])
def test_depth_to_space(opset, mode, block):
    x = rand(2, 2 * block * block, 2, 3)
    m = make_model([node("DepthToSpace", ["x"], ["y"], blocksize=block, mode=mode)], {"x": x}, ["y"], opset=opset)
    assert_parity(m, {"x": x}, **EXACT)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("block", [2, 3])
def test_space_to_depth_round_trip(opset, block):
    x = rand(2, 3, 2 * block, 3 * block)
    nodes = [node("SpaceToDepth", ["x"], ["s"], blocksize=block), node("DepthToSpace", ["s"], ["y"], blocksize=block)]
    assert_parity(make_model(nodes, {"x": x}, ["s", "y"], opset=opset), {"x": x}, **EXACT)


# ---- Resize -----------------------------------------------------------------------------------

COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SCALES = {  # for a (1, 2, 5, 6) input
    "x2": [1, 1, 2, 2],  # F.interpolate for nearest (floor / round modes) and linear
    "x4_x0.5": [1, 1, 4, 0.5],  # power-of-two down and up
    "odd": [1, 1, 1.5, 0.7],  # generic path; out != in * scale
    "down": [1, 1, 0.6, 0.34],
}


def resize_model(x, *, scales=None, sizes=None, opset=13, roi=None, **attrs):
    inits = {"roi": np.array(roi if roi is not None else [], F32)}
    names = ["x", "roi", "scales" if scales is not None else ""]
    if scales is not None:
        inits["scales"] = np.array(scales, F32)
    if sizes is not None:
        names.append("sizes")
        inits["sizes"] = ints(*sizes)
    if opset < 13 and scales is None:  # Resize-11 needs a (possibly empty) scales input
        names[2], inits["scales"] = "scales", np.zeros(0, F32)
    return make_model([node("Resize", names, ["y"], **attrs)], {"x": x}, ["y"], inits, opset=opset)


def check_resize(proto, x, tol):
    """Parity with onnxruntime, then the generic path must give the same as the fast one."""
    module = assert_parity(proto, {"x": x}, **tol)
    fast = run_bridge(module, {"x": x})[0]
    for m in module.modules():
        if hasattr(m, "allow_fast"):
            m.allow_fast = False
    slow = run_bridge(module, {"x": x})[0]
    np.testing.assert_allclose(slow, fast, atol=1e-5 if tol is SMOOTH else 0, rtol=0)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest", NEAREST)
@pytest.mark.parametrize("scales", list(SCALES))
def test_resize_nearest(coord, nearest, scales):
    x = rand(1, 2, 5, 6)
    m = resize_model(x, scales=SCALES[scales], mode="nearest", coordinate_transformation_mode=coord, nearest_mode=nearest)
    check_resize(m, x, EXACT)


@pytest.mark.parametrize("opset", [11, 13, 18, 19])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("sizes", [[1, 2, 10, 12], [1, 2, 3, 9], [1, 2, 1, 4]])
def test_resize_sizes_default_modes(opset, mode, sizes):
    x = rand(1, 2, 5, 6)
    check_resize(resize_model(x, sizes=sizes, opset=opset, mode=mode), x, EXACT if mode == "nearest" else SMOOTH)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("scales", list(SCALES))
def test_resize_linear(coord, scales):
    x = rand(2, 3, 5, 6)
    m = resize_model(x, scales=SCALES[scales], mode="linear", coordinate_transformation_mode=coord)
    check_resize(m, x, SMOOTH)


@pytest.mark.parametrize("coord", ["half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2, 2], [1, 1, 0.5, 1.5, 3]])
def test_resize_trilinear(coord, scales):
    x = rand(1, 2, 3, 4, 5)
    check_resize(resize_model(x, scales=scales, mode="linear", coordinate_transformation_mode=coord), x, SMOOTH)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("a,exclude", [(-0.75, 0), (-0.5, 0), (-0.75, 1)])
@pytest.mark.parametrize("scales", ["x2", "odd", "down"])
def test_resize_cubic(coord, a, exclude, scales):
    x = rand(1, 2, 5, 6)
    m = resize_model(x, scales=SCALES[scales], mode="cubic", coordinate_transformation_mode=coord, cubic_coeff_a=a,
                     exclude_outside=exclude)
    check_resize(m, x, SMOOTH)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("scales", ["x2", "odd", "down"])
def test_resize_half_pixel_symmetric(mode, scales):
    x = rand(1, 2, 5, 6)
    m = resize_model(x, scales=SCALES[scales], opset=19, mode=mode, coordinate_transformation_mode="half_pixel_symmetric")
    check_resize(m, x, EXACT if mode == "nearest" else SMOOTH)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(mode):
    x = rand(1, 2, 5, 6)
    roi = [0, 0, -0.2, 0.3, 1, 1, 0.8, 1.4]  # part of the crop lies outside: extrapolation_value
    m = resize_model(x, sizes=[1, 2, 4, 7], roi=roi, mode=mode, coordinate_transformation_mode="tf_crop_and_resize",
                     extrapolation_value=-3.0)
    check_resize(m, x, EXACT if mode == "nearest" else SMOOTH)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_axes_and_aspect_ratio_policy(policy, mode):
    x = rand(1, 2, 5, 6)
    m = make_model([node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode, axes=[2, 3], keep_aspect_ratio_policy=policy)],
                   {"x": x}, ["y"], {"sizes": ints(8, 9)}, opset=18)
    check_resize(m, x, EXACT if mode == "nearest" else SMOOTH)
    m = make_model([node("Resize", ["x", "", "scales"], ["y"], mode=mode, axes=[3, 2])], {"x": x}, ["y"],
                   {"scales": np.array([0.5, 3.0], F32)}, opset=18)
    check_resize(m, x, EXACT if mode == "nearest" else SMOOTH)


@pytest.mark.parametrize("opset", [11, 13, 18, 19])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_scales_across_opsets(opset, mode):
    x = rand(1, 2, 5, 6)
    check_resize(resize_model(x, scales=SCALES["odd"], opset=opset, mode=mode), x, EXACT if mode == "nearest" else SMOOTH)


@pytest.mark.parametrize("mode,coord,nearest,scales,fast", [
    ("nearest", "asymmetric", "floor", [1, 1, 2, 4], "nearest"),  # torch nn.Upsample(scale_factor=2) exports
    ("nearest", "half_pixel", "round_prefer_ceil", [1, 1, 2, 2], "nearest-exact"),
    ("nearest", "asymmetric", "floor", [1, 1, 3, 2], None),  # 1 / 3 is not exact in float
    ("linear", "half_pixel", None, [1, 1, 2, 2], "bilinear"),
    ("linear", "align_corners", None, [1, 1, 0.5, 1.5], "bilinear"),
    ("linear", "asymmetric", None, [1, 1, 2, 2], None),
    ("cubic", "half_pixel", None, [1, 1, 2, 2], "bicubic"),
])
def test_resize_fast_path_is_taken(monkeypatch, mode, coord, nearest, scales, fast):
    calls = []
    real = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: calls.append(k["mode"]) or real(*a, **k))
    x = rand(1, 2, 4, 6)
    attrs = {"nearest_mode": nearest} if nearest else {}
    check_resize(resize_model(x, scales=scales, mode=mode, coordinate_transformation_mode=coord, **attrs), x,
                 EXACT if mode == "nearest" else SMOOTH)
    assert calls[:1] == ([fast] if fast else [])


def test_resize_runtime_sizes_from_shape():
    # sizes = concat(x.shape[:2], [7, 4]), computed at run time
    x = rand(2, 3, 5, 6)
    nodes = [node("Shape", ["x"], ["nc"], end=2), node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")]
    check_resize(make_model(nodes, {"x": x}, ["y"], {"hw": ints(7, 4)}, opset=18), x, SMOOTH)


def test_resize_runtime_scales_graph_input():
    x, scales = rand(1, 2, 3, 4), np.array([1, 1, 2, 1.5], F32)
    m = make_model([node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], {"x": x, "scales": scales}, ["y"],
                   opset=13)
    ort = run_onnxruntime(m, {"x": x, "scales": scales})[0]
    got = run_bridge(to_torch(from_proto(m)).eval(), {"x": x, "scales": scales})[0]
    np.testing.assert_array_equal(got, ort)


def test_resize_nearest_integer_tensor():
    x = rng(1).integers(0, 50, size=(1, 1, 3, 4)).astype(np.uint8)  # onnxruntime: float, int8, uint8
    check_resize(resize_model(x, scales=[1, 1, 2, 1.5], mode="nearest"), x, EXACT)


@pytest.mark.parametrize("mode,coord", [("linear", "half_pixel"), ("cubic", "align_corners"), ("linear", "asymmetric")])
def test_resize_gradcheck(mode, coord):
    x = rand(1, 1, 3, 4)  # onnxruntime's Resize has no float64 kernel; gradcheck casts to float64
    m = resize_model(x, scales=[1, 1, 1.5, 2], mode=mode, coordinate_transformation_mode=coord)
    assert_parity(m, {"x": x}, gradcheck=True, **SMOOTH)


def test_resize_antialias_is_refused():
    x = rand(1, 1, 4, 4)
    m = resize_model(x, scales=[1, 1, 0.5, 0.5], opset=18, mode="linear", antialias=1)
    with pytest.raises(ConversionError, match="antialias"):
        to_torch(from_proto(m))


def test_resize_legacy_opset_10():
    # Resize-10: asymmetric coordinates; nearest truncates up and rounds up (ceil) down
    x = rand(1, 2, 4, 6)
    for mode in ("nearest", "linear"):
        m = make_model([node("Resize", ["x", "scales"], ["y"], mode=mode)], {"x": x}, ["y"],
                       {"scales": np.array([1, 1, 1.5, 0.6], F32)}, opset=10)
        assert_legacy_parity(m, {"x": x}, atol=1e-6)


# ---- Upsample -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_opset_9(mode):
    x = rand(1, 2, 3, 4)
    m = make_model([node("Upsample", ["x", "scales"], ["y"], mode=mode)], {"x": x}, ["y"],
                   {"scales": np.array([1, 1, 2, 1.5], F32)}, opset=9)
    assert_legacy_parity(m, {"x": x}, atol=1e-6)


@pytest.mark.parametrize("opset", [10, 11, 13, 21])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_deprecated_opsets_match_opset_9(opset, mode):
    # Upsample is deprecated from opset 10: onnxruntime and the onnx checker refuse it, so
    # the converter runs on an unchecked proto and is compared with onnxruntime's Upsample-9
    x = rand(1, 2, 3, 4)
    inits = {"scales": np.array([1, 1, 2, 2.5], F32)}
    ref = make_model([node("Upsample", ["x", "scales"], ["y"], mode=mode)], {"x": x}, ["y"], inits, opset=9)
    want = run_onnxruntime(ref, {"x": x})[0]
    proto = helper.make_model(ref.graph, opset_imports=[helper.make_opsetid("", opset)])
    got = run_bridge(to_torch(OnnxModel(name_nodes(proto))).eval(), {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_resize_modules_hold_no_tensors():
    x = rand(1, 1, 2, 2)
    module = to_torch(from_proto(resize_model(x, scales=[1, 1, 2, 2], mode="nearest")))
    assert not list(module.ops.parameters()) and not list(module.ops.buffers())
    assert not list(module.parameters())  # scales / roi are static constants, never trained
    assert isinstance(module(torch.from_numpy(x)), torch.Tensor)


def test_pad_and_upsample_opset_1_forms():
    # onnxruntime no longer runs opset 1: numpy is the reference
    x = rand(1, 1, 2, 3)
    nodes = [node("Pad", ["x"], ["p"], paddings=[0, 0, 1, 0, 0, 0, 0, 2], mode="edge"),
             node("Upsample", ["x"], ["u"], height_scale=2.0, width_scale=3.0)]
    proto = helper.make_model(helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", 1, x.shape)],
                                                [helper.make_value_info(o, onnx.TypeProto()) for o in ("p", "u")]),
                              opset_imports=[helper.make_opsetid("", 1)])
    p, u = run_bridge(to_torch(OnnxModel(name_nodes(proto))).eval(), {"x": x})
    np.testing.assert_array_equal(p, np.pad(x, [(0, 0), (0, 0), (1, 0), (0, 2)], mode="edge"))
    np.testing.assert_array_equal(u, x.repeat(2, axis=2).repeat(3, axis=3))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_opset_7_scales_attribute(mode):
    x = rand(1, 2, 3, 4)
    m = make_model([node("Upsample", ["x"], ["y"], mode=mode, scales=[1.0, 1.0, 2.0, 1.5])], {"x": x}, ["y"], opset=8)
    assert_legacy_parity(m, {"x": x}, atol=1e-6)
