"""Test-session settings that make results independent of the machine's core count and load:
one intra-op thread per test process (pytest-xdist runs one process per core), so reductions
run in the same order everywhere and two workers never oversubscribe the cores."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# latency tables measured by tests go to a throw-away folder, never to the user's ~/.cache
import tempfile  # noqa: E402

os.environ.setdefault("GETA_ONNX_CACHE", tempfile.mkdtemp(prefix="geta-onnx-test-cache-"))

import torch  # noqa: E402  (after the thread variables)

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _full_range_int8_weights():
    """[quant] reduce_range "auto" probes whether this CPU's onnxruntime int8 kernels saturate
    (quant/weight_range.py): pinned to "no" so that every CPU trains the same grids here;
    tests/quant/test_weight_range.py runs the probe itself and sets its answer both ways. For
    the whole session, so that module-scoped fixtures (set up before any function-scoped one)
    train under the pin too: on a CPU whose kernels saturate, tests/test_cli_compress.py's
    module run trained on the 7-bit grid and failed where its int8 export shipped."""
    from geta_onnx.quant import weight_range

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weight_range, "int8_saturates", lambda: False)
        yield
