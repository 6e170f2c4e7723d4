"""Differential tests (onnxruntime vs bridge) for MatMul and Einsum.

Tolerance: assert_parity's default (atol 1e-5 + rtol 1e-4 of the largest reference
value); integer products must match exactly. Float cases run a float64 gradcheck; an
initializer operand on either side must become a trainable parameter.
"""
import numpy as np
import pytest

from tests.bridge.test_ops_math import check
from tests.helpers import rng


def normal(seed, shape, dtype=np.float32):
    return np.asarray(rng(seed).standard_normal(shape), dtype=dtype)


# numpy.matmul shapes: 1-D operands are promoted then squeezed, batch dims broadcast
MATMUL_SHAPES = [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5))]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes, opset):
    check("MatMul", {"a": normal(0, shapes[0]), "b": normal(1, shapes[1])}, opset=opset, gradcheck=True)


@pytest.mark.parametrize("side", [0, 1])
def test_matmul_weight_on_either_side(side):
    x = normal(2, (2, 3, 4) if side == 1 else (4, 5))
    w = normal(3, (4, 5) if side == 1 else (3, 4))
    inputs = ["x", "w"] if side == 1 else ["w", "x"]  # x @ W, or W @ x
    m = check("MatMul", {"x": x}, inits={"w": w}, inputs=inputs, opset=13, gradcheck=True)
    assert m.parameter("w").grad is not None


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32])
def test_matmul_integers(dtype):
    r = rng(4)
    low = 0 if dtype == np.uint32 else -5
    check("MatMul", {"a": r.integers(low, 5, (2, 3, 4)).astype(dtype), "b": r.integers(low, 5, (4, 2)).astype(dtype)})


def test_matmul_double():
    check("MatMul", {"a": normal(5, (3, 4), np.float64), "b": normal(6, (4, 2), np.float64)}, gradcheck=True)


EINSUM = [  # (equation, operand shapes)
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhid,bhjd->bhij", [(1, 2, 3, 4), (1, 2, 5, 4)]),  # attention scores
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output: labels seen once, alphabetical
    ("ba,ac", [(3, 4), (4, 5)]),  # implicit output "bc"
    ("...ij,jk", [(2, 3, 4), (4, 2)]),  # implicit with ellipsis: "...ik"
    ("ii->i", [(4, 4)]),  # diagonal
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("i,i", [(4,), (4,)]),  # dot product, implicit scalar output
    ("i,j->ij", [(3,), (4,)]),  # outer product
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("ij , jk -> ik", [(3, 4), (4, 5)]),  # spaces are allowed
    ("Ab,bC->AC", [(3, 4), (4, 2)]),  # upper-case labels
]


@pytest.mark.parametrize("equation, shapes", EINSUM, ids=[e for e, _ in EINSUM])
def test_einsum(equation, shapes):
    feeds = {f"x{i}": normal(10 + i, s) for i, s in enumerate(shapes)}
    check("Einsum", feeds, attrs={"equation": equation}, opset=12, gradcheck=True)


def test_einsum_weight_and_integers():
    x = normal(20, (2, 3, 4))
    m = check("Einsum", {"x": x}, inits={"w": normal(21, (4, 5))}, attrs={"equation": "bij,jk->bik"}, opset=17)
    assert m.parameter("w").grad is not None
    a = rng(22).integers(-4, 4, (3, 4)).astype(np.int64)
    check("Einsum", {"a": a, "b": a.T.copy()}, attrs={"equation": "ij,jk->ik"}, opset=21)
