"""The compiled fake-quant kernel (geta_onnx/quant/kernel.py, fakequant.c) against the torch
path of the linear quantizer:
- forward and the input gradient bitwise equal, on values chosen to hit every edge: exact
  bounds, ties at half a step, NaN, +-inf, |x / d| past 2^22 and 2^23, signed and unsigned;
- the d and q_m gradients (sums in another order) within 1e-5 relative, and the same bits
  on 1 and 2 threads (the per-block sums do not depend on the thread count);
- the fallback: GETA_ONNX_KERNEL=off and a machine without a C compiler run the torch path,
  and status() says so; the library is built once into the cache, atomically.
"""
from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from geta_onnx.quant import kernel
from geta_onnx.quant.quantizer import GetaQuantize, Quantizer

HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
N = 3 * 65536 + 1234  # several blocks and a ragged tail


@pytest.fixture
def torch_path(monkeypatch):
    """A context in which the kernel declines every call (the torch path runs)."""
    def use():
        monkeypatch.setattr(kernel, "usable", lambda *a: False)
    return use


def _edge_values(d: float, q: float, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(N, generator=gen) * 2 * q
    specials = torch.tensor([q, -q, q * 1.0000001, -q * 0.9999999, 0.0, -0.0, float("nan"), float("inf"),
                             float("-inf"), 0.5 * d, -0.5 * d, 1.5 * d, 2.5 * d, -2.5 * d, 3.5 * d])
    x[: len(specials)] = specials
    ties = (torch.randint(-200, 200, (1000,), generator=gen) + 0.5) * d  # exactly half a step, as floats allow
    x[100:1100] = ties
    return x


def _run(x, d, q, signed, grad):
    xx = x.clone().requires_grad_(True)
    dd = torch.tensor(d, requires_grad=True)
    qq = torch.tensor(q, requires_grad=True)
    y = GetaQuantize.apply(xx, dd, qq, None, signed)
    gx, gd, gq = torch.autograd.grad(y, (xx, dd, qq), grad)
    return y.detach(), gx, gd, gq


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine: the torch path is the only one")
def test_kernel_builds_where_a_compiler_is():
    assert kernel.status() == "compiled"
    assert kernel.usable(torch.zeros(N), torch.tensor(0.1), torch.tensor(1.0))


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine: the torch path is the only one")
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("d,q", [(0.05, 3.0), (1e-6, 40.0), (0.37, 0.9)])  # 1e-6: |x / d| past 2^22 and 2^23
def test_kernel_matches_torch_path(signed, d, q, torch_path):
    gen = torch.Generator().manual_seed(0)
    x = _edge_values(d, q, gen)
    grad = torch.randn(N, generator=gen)
    finite = x.nan_to_num(0.0, posinf=4 * q, neginf=-4 * q)  # the sums: one NaN makes both NaN
    fused = _run(x, d, q, signed, grad), _run(finite, d, q, signed, grad)
    torch_path()
    plain = _run(x, d, q, signed, grad), _run(finite, d, q, signed, grad)
    for f, p in zip(fused, plain):
        assert torch.equal(f[0].nan_to_num(7.0), p[0].nan_to_num(7.0))  # bitwise; NaN where torch has NaN
        assert torch.equal(f[0].isnan(), p[0].isnan())
        assert torch.equal(f[1], p[1])
    assert fused[0][0].isnan().sum() == 1 and fused[0][2].isnan() and plain[0][2].isnan()
    for a, b in zip(fused[1][2:], plain[1][2:]):
        assert a.shape == b.shape == ()
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(grad.abs().sum())), (float(a), float(b))


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine: the torch path is the only one")
def test_kernel_sums_do_not_depend_on_threads():
    gen = torch.Generator().manual_seed(1)
    x, grad = torch.randn(N, generator=gen), torch.randn(N, generator=gen)
    was = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run(x, 0.02, 1.5, True, grad))
    finally:
        torch.set_num_threads(was)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine: the torch path is the only one")
def test_quantizer_module_takes_the_kernel_for_large_per_tensor_inputs(monkeypatch):
    calls = []
    real = kernel.forward
    monkeypatch.setattr(kernel, "forward", lambda *a: calls.append(a[0].shape) or real(*a))
    q = Quantizer("act", signed=False)
    q.set_range(2.0, 8)
    q(torch.rand(2, 16, 32, 32))  # 32,768 elements: the kernel
    q(torch.rand(2, 4, 8, 8))  # small: the torch path
    assert calls == [torch.Size([2, 16, 32, 32])]
    w = Quantizer("weight", channels=16, axis=0)  # per-channel: always the torch path
    w(torch.randn(16, 64, 32))
    assert len(calls) == 1


def test_kernel_off_runs_the_torch_path(monkeypatch):
    monkeypatch.setattr(kernel, "_lib", None)
    monkeypatch.setenv("GETA_ONNX_KERNEL", "off")
    assert kernel.status() == "torch (GETA_ONNX_KERNEL=off)"
    assert not kernel.usable(torch.zeros(N), torch.tensor(0.1), torch.tensor(1.0))
    y = GetaQuantize.apply(torch.linspace(-2, 2, N), torch.tensor(0.25), torch.tensor(1.0), None, True)
    assert set(torch.unique(y).tolist()) == {-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0}


def test_no_compiler_falls_back_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel, "_lib", None)
    monkeypatch.delenv("GETA_ONNX_KERNEL", raising=False)
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run on PATH
    assert kernel.status().startswith("torch (not built: no C compiler")
    assert not (tmp_path / "kernels").exists()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path))
    first = kernel._built()
    stamp = first.stat().st_mtime_ns
    assert first.parent == tmp_path / "kernels" and first.name.startswith("fakequant-")
    assert kernel._built() == first and first.stat().st_mtime_ns == stamp  # not built again
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [first.name]  # no temporary file left


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_failed_build_leaves_nothing(monkeypatch, tmp_path):
    fake_cc = tmp_path / "cc"
    fake_cc.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo fake 1.0 && exit 0\necho broken >&2; exit 1\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(fake_cc))
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="broken"):
        kernel._built()  # with OpenMP, then without: both fail
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_a_compiler_without_openmp_builds_the_one_thread_kernel(monkeypatch, tmp_path):
    real = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    fake_cc = tmp_path / "cc"
    fake_cc.write_text(f"#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -fopenmp ] && echo no openmp >&2 && exit 1; done\n"
                       f"exec {real} \"$@\"\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(fake_cc))
    monkeypatch.setenv("GETA_ONNX_CACHE", str(tmp_path / "cache"))
    lib = kernel._bind(ctypes.CDLL(str(kernel._built())))
    x = torch.linspace(-2, 2, N)
    out = torch.empty_like(x)
    lib.geta_fq_forward(x.data_ptr(), out.data_ptr(), N, 0.25, 1.0, -1.0, 2)
    assert torch.equal(out, torch.round(x.clamp(-1, 1) / 0.25) * 0.25)
