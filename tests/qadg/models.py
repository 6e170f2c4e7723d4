"""Small ONNX models built in code whose pruning groups are known by hand."""
from __future__ import annotations

import numpy as np
from onnx import helper

from tests.helpers import make_model, rng


class _Weights:
    def __init__(self, seed: int = 0):
        self.r = rng(seed)
        self.inits: dict[str, np.ndarray] = {}

    def __call__(self, name: str, *shape: int, positive: bool = False) -> str:
        v = self.r.standard_normal(shape).astype(np.float32) * 0.5
        self.inits[name] = np.abs(v) + 0.5 if positive else v
        return name

    def bn(self, prefix: str, c: int) -> list[str]:
        return [self(f"{prefix}.g", c), self(f"{prefix}.b", c), self(f"{prefix}.m", c), self(f"{prefix}.v", c, positive=True)]


def resnet2(batch: int = 2):
    """stem conv 3->8, block 1 (8->8, identity shortcut), block 2 (8->16, stride 2, 1x1
    projection shortcut), global pool, Gemm 16->10."""
    w = _Weights()
    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("stem.w", 8, 3, 3, 3), w("stem.bias", 8)], ["s"], pads=[1, 1, 1, 1], name="stem"),
        n("Relu", ["s"], ["s1"], name="stem_relu"),
        n("Conv", ["s1", w("b1a.w", 8, 8, 3, 3)], ["a"], pads=[1, 1, 1, 1], name="b1a"),
        n("BatchNormalization", ["a"] + w.bn("b1a.bn", 8), ["a1"], name="b1a_bn"),
        n("Relu", ["a1"], ["a2"], name="b1a_relu"),
        n("Conv", ["a2", w("b1b.w", 8, 8, 3, 3)], ["b"], pads=[1, 1, 1, 1], name="b1b"),
        n("BatchNormalization", ["b"] + w.bn("b1b.bn", 8), ["b1"], name="b1b_bn"),
        n("Add", ["b1", "s1"], ["r1"], name="b1_add"),
        n("Relu", ["r1"], ["r1a"], name="b1_relu"),
        n("Conv", ["r1a", w("b2a.w", 16, 8, 3, 3)], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="b2a"),
        n("BatchNormalization", ["c"] + w.bn("b2a.bn", 16), ["c1"], name="b2a_bn"),
        n("Relu", ["c1"], ["c2"], name="b2a_relu"),
        n("Conv", ["c2", w("b2b.w", 16, 16, 3, 3)], ["d"], pads=[1, 1, 1, 1], name="b2b"),
        n("BatchNormalization", ["d"] + w.bn("b2b.bn", 16), ["d1"], name="b2b_bn"),
        n("Conv", ["r1a", w("b2s.w", 16, 8, 1, 1)], ["e"], strides=[2, 2], name="b2s"),
        n("BatchNormalization", ["e"] + w.bn("b2s.bn", 16), ["e1"], name="b2s_bn"),
        n("Add", ["d1", "e1"], ["r2"], name="b2_add"),
        n("Relu", ["r2"], ["r2a"], name="b2_relu"),
        n("GlobalAveragePool", ["r2a"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flatten"),
        n("Gemm", ["f", w("fc.w", 10, 16), w("fc.b", 10)], ["y"], transB=1, name="fc"),
    ]
    x = rng(1).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}


def concat_model(batch: int = 2):
    """conv A (3->4) and conv B (3->6) concatenated on channels, then conv C (10->5):
    C's input channels 0-3 belong to A's groups, 4-9 to B's."""
    w = _Weights(2)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("A.w", 4, 3, 1, 1), w("A.b", 4)], ["a"], name="A"),
        n("Relu", ["a"], ["a1"], name="A_relu"),
        n("Conv", ["x", w("B.w", 6, 3, 3, 3), w("B.b", 6)], ["b"], pads=[1, 1, 1, 1], name="B"),
        n("Concat", ["a1", "b"], ["cat"], axis=1, name="cat"),
        n("Conv", ["cat", w("C.w", 5, 10, 3, 3), w("C.b", 5)], ["c"], pads=[1, 1, 1, 1], name="C"),
        n("Relu", ["c"], ["c1"], name="C_relu"),
        n("ReduceMean", ["c1"], ["y"], axes=[2, 3], keepdims=0, name="mean"),
    ]
    x = rng(3).standard_normal((batch, 3, 6, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits, opset=17), {"x": x}


def depthwise_model(batch: int = 2):
    """pointwise 3->8, depthwise 3x3 (group 8), SE-style gate (Sigmoid x Mul), pointwise 8->4."""
    w = _Weights(4)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("pw1.w", 8, 3, 1, 1), w("pw1.b", 8)], ["a"], name="pw1"),
        n("Clip", ["a", w("lo", 1), w("hi", 1)], ["a1"], name="relu6") if False else n("Relu", ["a"], ["a1"], name="relu"),
        n("Conv", ["a1", w("dw.w", 8, 1, 3, 3), w("dw.b", 8)], ["d"], group=8, pads=[1, 1, 1, 1], name="dw"),
        n("GlobalAveragePool", ["d"], ["p"], name="se_pool"),
        n("Conv", ["p", w("se.w", 8, 8, 1, 1), w("se.b", 8)], ["q"], name="se_fc"),
        n("Sigmoid", ["q"], ["gate"], name="se_gate"),
        n("Mul", ["d", "gate"], ["m"], name="se_mul"),
        n("Conv", ["m", w("pw2.w", 4, 8, 1, 1), w("pw2.b", 4)], ["y"], name="pw2"),
    ]
    w.inits.pop("lo", None), w.inits.pop("hi", None)
    x = rng(5).standard_normal((batch, 3, 6, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}


def unknown_op_model(batch: int = 2):
    """conv A (3->4) -> custom op (no pruning rule) -> conv B (4->5); conv C (3->6) beside it."""
    w = _Weights(6)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("A.w", 4, 3, 1, 1), w("A.b", 4)], ["a"], name="A"),
        n("Det", ["a"], ["a1"], name="mystery") if False else n("LpNormalization", ["a"], ["a1"], axis=1, name="mystery"),
        n("Conv", ["a1", w("B.w", 5, 4, 1, 1), w("B.b", 5)], ["b"], name="B"),
        n("Conv", ["x", w("C.w", 6, 3, 1, 1), w("C.b", 6)], ["c"], name="C"),
        n("Relu", ["c"], ["c1"], name="C_relu"),
        n("Conv", ["c1", w("D.w", 5, 6, 1, 1), w("D.b", 5)], ["d"], name="D"),
        n("Add", ["b", "d"], ["y0"], name="add"),
        n("Relu", ["y0"], ["y"], name="out_relu"),
    ]
    x = rng(7).standard_normal((batch, 3, 4, 4)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}


def offset_model(batch: int = 2):
    """PP-LCNet-style: pointwise 3->8, Sigmoid, a learnable affine (x * s + b, scalars: a
    zeroed channel becomes sigmoid(0) * s + b, not 0), depthwise 3x3 (group 8), HardSigmoid,
    pointwise 8->4. Every channel can still go: the depthwise conv's own weights and the last
    conv's input columns are zeroed with it."""
    w = _Weights(8)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("pw1.w", 8, 3, 1, 1), w("pw1.b", 8)], ["a"], name="pw1"),
        n("Sigmoid", ["a"], ["a1"], name="gate"),
        n("Mul", ["a1", w("affine.s", 1)], ["a2"], name="affine_mul"),
        n("Add", ["a2", w("affine.b", 1)], ["a3"], name="affine_add"),
        n("Conv", ["a3", w("dw.w", 8, 1, 3, 3), w("dw.b", 8)], ["d"], group=8, pads=[1, 1, 1, 1], name="dw"),
        n("HardSigmoid", ["d"], ["h"], name="hsig"),
        n("Conv", ["h", w("pw2.w", 4, 8, 1, 1), w("pw2.b", 4)], ["y"], name="pw2"),
    ]
    x = rng(9).standard_normal((batch, 3, 6, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}


def offset_layernorm_model(batch: int = 2):
    """MatMul 6->8 (+ bias), + 1.0, LayerNorm over the 8 channels, MatMul 8->4: a zeroed
    channel is 1 where LayerNorm takes its mean and variance, so removing it would change the
    statistics of the others; those channels cannot go."""
    w = _Weights(10)
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", w("fc1.w", 6, 8)], ["a"], name="fc1"),
        n("Add", ["a", w("fc1.b", 8)], ["a1"], name="fc1_bias"),
        n("Add", ["a1", w("one", 1)], ["a2"], name="offset"),
        n("LayerNormalization", ["a2", w("ln.g", 8), w("ln.b", 8)], ["l"], axis=-1, name="ln"),
        n("MatMul", ["l", w("fc2.w", 8, 4)], ["y"], name="fc2"),
    ]
    x = rng(11).standard_normal((batch, 5, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}


def _sum_layernorm(w: "_Weights", x: str, c: int, prefix: str, centered: bool) -> tuple[list, str]:
    """LayerNorm over the last axis of `x` (c channels) written out with ReduceSum and a
    constant 1/c, as tf2onnx writes a Keras / JAX LayerNorm. centered=False takes the
    variance as E[x^2] - E[x]^2 (JAX); centered=True as E[(x - E[x])^2] (torch's
    decomposition), where a zeroed channel is -E[x] inside the sum."""
    n = helper.make_node
    p = prefix
    w.inits[f"{p}.axes"] = np.array([-1], dtype=np.int64)
    w.inits[f"{p}.inv_c"] = np.array([1.0 / c], dtype=np.float32)
    w.inits[f"{p}.eps"] = np.array([1e-6], dtype=np.float32)
    w.inits[f"{p}.zero"] = np.array([0.0], dtype=np.float32)
    sq_in = f"{p}.d" if centered else x
    nodes = [
        n("ReduceSum", [x, f"{p}.axes"], [f"{p}.s"], name=f"{p}_sum"),
        n("Mul", [f"{p}.s", f"{p}.inv_c"], [f"{p}.mean"], name=f"{p}_mean"),
        n("Sub", [x, f"{p}.mean"], [f"{p}.d"], name=f"{p}_center"),
        n("Mul", [sq_in, sq_in], [f"{p}.sq"], name=f"{p}_square"),
        n("ReduceSum", [f"{p}.sq", f"{p}.axes"], [f"{p}.s2"], name=f"{p}_sum2"),
        n("Mul", [f"{p}.s2", f"{p}.inv_c"], [f"{p}.m2"], name=f"{p}_mean2"),
    ]
    if centered:
        nodes.append(n("Identity", [f"{p}.m2"], [f"{p}.var"], name=f"{p}_var"))
    else:
        nodes += [n("Mul", [f"{p}.mean", f"{p}.mean"], [f"{p}.mm"], name=f"{p}_mean_sq"),
                  n("Sub", [f"{p}.m2", f"{p}.mm"], [f"{p}.v0"], name=f"{p}_var0"),
                  n("Max", [f"{p}.zero", f"{p}.v0"], [f"{p}.var"], name=f"{p}_var")]
    nodes += [
        n("Add", [f"{p}.var", f"{p}.eps"], [f"{p}.ve"], name=f"{p}_eps"),
        n("Sqrt", [f"{p}.ve"], [f"{p}.std"], name=f"{p}_sqrt"),
        n("Reciprocal", [f"{p}.std"], [f"{p}.rstd"], name=f"{p}_rsqrt"),
        n("Mul", [f"{p}.rstd", w(f"{p}.g", c)], [f"{p}.scale"], name=f"{p}_gamma"),  # [B, T, 1] * [C]
        n("Mul", [f"{p}.d", f"{p}.scale"], [f"{p}.n"], name=f"{p}_norm"),
        n("Add", [f"{p}.n", w(f"{p}.b", c)], [f"{p}.y"], name=f"{p}_beta"),
    ]
    return nodes, f"{p}.y"


def sum_layernorm_model(batch: int = 2, centered: bool = False):
    """MatMul 6->8 (+ bias), Relu, a LayerNorm written out with ReduceSum (_sum_layernorm),
    MatMul 8->4. JAX's E[x^2] - E[x]^2: a zeroed channel adds 0 to both sums and the
    divisor is a constant, so the 8 channels can go. torch's centered variance: the zeroed
    channel adds E[x]^2, so they cannot."""
    w = _Weights(12)
    n = helper.make_node
    ln, y = _sum_layernorm(w, "a2", 8, "ln", centered)
    nodes = [
        n("MatMul", ["x", w("fc1.w", 6, 8)], ["a"], name="fc1"),
        n("Add", ["a", w("fc1.b", 8)], ["a1"], name="fc1_bias"),
        n("Relu", ["a1"], ["a2"], name="relu"),
        *ln,
        n("MatMul", [y, w("fc2.w", 8, 4)], ["y"], name="fc2"),
    ]
    x = rng(13).standard_normal((batch, 5, 6)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}


def patch_fold_model(batch: int = 2):
    """magika-style: MatMul 3->4 per time step of x [B, 8, 3], Relu, a Reshape that folds 4
    steps into the features ([B, 8, 4] -> [B, 2, 16]: feature c sits at 16 positions' c, c+4,
    c+8, c+12), a per-time-step offset [1, 2, 1], Transpose, Conv1d 16->5. The offset is
    not per channel; each of the 4 channels can go with its 4 input columns of the conv."""
    w = _Weights(14)
    n = helper.make_node
    w.inits["fold"] = np.array([0, 2, 16], dtype=np.int64)
    nodes = [
        n("MatMul", ["x", w("fc.w", 3, 4)], ["a"], name="fc"),
        n("Relu", ["a"], ["a1"], name="relu"),
        n("Reshape", ["a1", "fold"], ["f"], name="fold"),
        n("Add", ["f", w("time.b", 1, 2, 1)], ["f1"], name="time_offset"),
        n("Transpose", ["f1"], ["t"], perm=[0, 2, 1], name="to_nct"),
        n("Conv", ["t", w("conv.w", 5, 16, 1), w("conv.b", 5)], ["y"], name="conv"),
    ]
    x = rng(15).standard_normal((batch, 8, 3)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], w.inits), {"x": x}
