"""The fused fake-quant kernel (fakequant.c): built once per machine with the system C
compiler, loaded through ctypes, used by quantizer.py for per-tensor linear quantizers of
float32 CPU tensors.

Why: the torch path of the linear quantizer makes about nine passes over x forward and six
backward; on CNNs those passes over large activations were the largest cost a geta-onnx
step has over plain PyTorch (docs/measurements.md, "A fused fake-quant kernel"). The
kernel makes one pass each way, on torch's intra-op thread count.

How it is built (as NNCF builds its quantization kernels at run time, but with no torch
headers: a plain C file, about a second with gcc):
- `$CC` (else cc, gcc, clang) -O3 -shared -fPIC -fno-trapping-math -fopenmp, never
  -ffast-math; without -fopenmp where the compiler has no OpenMP (one thread then);
- into kernels/fakequant-<key>.so of the cache root (io.cache_root: $GETA_ONNX_CACHE, else
  ~/.cache/geta-onnx), key = a hash of the source, the flags, the compiler's version and the
  machine, written atomically, so several processes (torchrun ranks) may build it at once;
- `GETA_ONNX_KERNEL=off` keeps the torch path; without a compiler the torch path is used
  too (logged once). `status()` says which one runs, for the report.
The forward is bitwise the torch path's; the parameter gradients are sums in another order
(per 65,536-element block in double, then over the blocks: the same on any thread count).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..io import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fakequant.c")
FLAGS = ("-O3", "-shared", "-fPIC", "-fno-fast-math", "-fno-trapping-math")
OPENMP = "-fopenmp"  # tried first; a compiler without OpenMP builds the one-thread kernel
MIN_ELEMENTS = 16384  # smaller tensors stay on the torch path: the kernel saves passes over memory,
# and a call adds fixed costs of its own (ctypes, an OpenMP region)

_lib = None  # the loaded library, False once building failed, None before the first try
_why = "not built yet"


def status() -> str:
    """'compiled' or 'torch (<why>)': which fake-quant path this process runs."""
    _load()
    return "compiled" if _lib else f"torch ({_why})"


def usable(x: torch.Tensor, d: torch.Tensor, q_m: torch.Tensor) -> bool:
    """Whether the kernel takes this call: float32 CPU tensors, per-tensor d and q_m, large x."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() >= MIN_ELEMENTS
            and d.numel() == 1 and q_m.numel() == 1 and bool(_load()))


def forward(x: torch.Tensor, d: float, q: float, signed: bool) -> torch.Tensor:
    """Q(x) for contiguous float32 x (see fakequant.c)."""
    out = torch.empty_like(x)
    _lib.geta_fq_forward(_ptr(x), _ptr(out), x.numel(), d, q, -q if signed else 0.0, torch.get_num_threads())
    return out


def backward(grad: torch.Tensor, x: torch.Tensor, d: float, q: float, signed: bool,
             need_x: bool, need_d: bool, need_q: bool):
    """(gx or None, gd or None, gq or None): gx shaped like x, gd and gq 0-dim float32."""
    n = x.numel()
    blocks = _lib.geta_fq_blocks(n)
    gx = torch.empty_like(x) if need_x else None
    gd = torch.empty(blocks, dtype=torch.float64) if need_d else None
    gq = torch.empty(blocks, dtype=torch.float64) if need_q else None
    _lib.geta_fq_backward(_ptr(grad), _ptr(x), _ptr(gx), _ptr(gd), _ptr(gq), n, d, q,
                          -q if signed else 0.0, torch.get_num_threads())
    # a few hundred block sums at most: torch adds them on one thread, the same on any thread count
    total = (lambda p: None if p is None else p.sum().to(torch.float32))
    return gx, total(gd), total(gq)


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _load():
    global _lib, _why
    if _lib is not None:
        return _lib
    if os.environ.get("GETA_ONNX_KERNEL", "").lower() in ("off", "0", "no", "false"):
        _lib, _why = False, "GETA_ONNX_KERNEL=off"
        return _lib
    try:
        lib = ctypes.CDLL(str(_built()))
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        _lib, _why = False, f"not built: {e}"
        log.info("fake-quant kernel not available (%s): the torch path runs", e)
        return _lib
    _lib, _why = _bind(lib), ""
    return _lib


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The C signatures of fakequant.c's entry points on a loaded library."""
    c_float, c_int64, ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
    lib.geta_fq_blocks.argtypes, lib.geta_fq_blocks.restype = [c_int64], c_int64
    lib.geta_fq_forward.argtypes = [ptr, ptr, c_int64, c_float, c_float, c_float, ctypes.c_int]
    lib.geta_fq_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, c_int64, c_float, c_float, c_float, ctypes.c_int]
    return lib


def _compiler() -> tuple[str, str]:
    """The C compiler to use and its version line; RuntimeError when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = name and shutil.which(name)
        if path:
            run = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            return path, (run.stdout.splitlines() or [""])[0]
    raise RuntimeError("no C compiler (cc, gcc, clang or $CC) on PATH")


def _built() -> Path:
    """The library with OpenMP, else without; the last error when neither builds."""
    try:
        return _build((*FLAGS, OPENMP))
    except RuntimeError as e:
        log.info("fake-quant kernel without OpenMP (%s)", e)
        return _build(FLAGS)


def _build(flags: tuple[str, ...]) -> Path:
    """The compiled library, built into the cache on the first call on this machine."""
    cc, version = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     platform.machine().encode(), platform.system().encode()])).hexdigest()[:16]
    root = cache_root() / "kernels"
    target = root / f"fakequant-{key}.so"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=root)
    os.close(fd)
    try:
        run = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {run.stderr.strip()[-300:]}")
        os.replace(tmp, target)  # atomic: another process sees no half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
