"""Small builders shared by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]


def away_from_zero(*shape, margin: float = 0.1, **kw) -> torch.Tensor:
    """Random values with |x| ≥ margin: keeps ReLU's kink at 0 out of finite differences."""
    x = torch.randn(*shape, **kw)
    return torch.where(x >= 0, x + margin, x - margin)


def dense_inputs(n, n_in, n_out, dtype=torch.float64, device="cpu", margin=0.05):
    """(a_prev, W, b) whose pre-activations z = a_prev Wᵀ + b all satisfy |z| ≥ margin."""
    g = torch.Generator().manual_seed(1234)
    for _ in range(1000):
        a = torch.randn(n, n_in, generator=g, dtype=dtype)
        w = torch.randn(n_out, n_in, generator=g, dtype=dtype) / n_in**0.5
        b = torch.randn(n_out, generator=g, dtype=dtype)
        if (a @ w.T + b).abs().min() >= margin:
            return (a.to(device).requires_grad_(), w.to(device).requires_grad_(),
                    b.to(device).requires_grad_())
    raise RuntimeError("no kink-free draw found")


def probabilities(n, k, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Values in (0.1, 0.9), safely inside (0, 1) for ln a and ln(1 − a)."""
    return (0.1 + 0.8 * torch.rand(n, k, dtype=dtype)).to(device)


def soft_targets(n, k, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Rows that sum to 1."""
    return torch.softmax(torch.randn(n, k, dtype=dtype), -1).to(device)


def book_sgd_step(net, eta: float, lmbda: float, n: int) -> None:
    """The book's update from .grad, by hand: W ← (1 − ηλ/n) W − η ∂C/∂W, b ← b − η ∂C/∂b."""
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(1 - eta * lmbda / n).sub_(eta * layer.weight.grad)
            layer.bias.sub_(eta * layer.bias.grad)


# -- float64 leaves and the comparison with torch ------------------------------------------
def randn64(*shape, seed: int | None = None) -> torch.Tensor:
    """A float64 leaf of standard normals that requires grad; torch's seed set first to
    ``seed`` where one is given."""
    if seed is not None:
        torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64).requires_grad_()


def same_grads(ours, theirs, inputs) -> None:
    """Forward equal, and the gradients of a random upstream gradient equal."""
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(theirs)
    mine = torch.autograd.grad(ours, inputs, g, retain_graph=True)
    for a, b in zip(mine, torch.autograd.grad(theirs, inputs, g)):
        torch.testing.assert_close(a, b)


def same_under_cpu_autocast(pairs, x, y) -> None:
    """Each pair (ours, theirs) of functions of (x, y) under CPU autocast in bfloat16: the
    same output dtype, and the gradients of a random upstream gradient of the same dtypes
    and close (to bfloat16's precision)."""
    for ours, theirs in pairs:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o, t = ours(x, y), theirs(x, y)
        assert o.dtype == t.dtype
        g = torch.randn_like(t)
        kw = {"allow_unused": True, "materialize_grads": True}
        for a, b in zip(torch.autograd.grad(o, (x, y), g, **kw),
                        torch.autograd.grad(t, (x, y), g, **kw)):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


# -- the Triton kernels' tests (tests/test_kernels*.py, tests/test_conv_gemm.py) -----------
# Triton's interpreter runs kernels on CPU tensors only when TRITON_INTERPRET=1 is set
# before triton is imported: the kernel tests run in one child pytest process that sets it
# (run_in_interpreter) and skip in the parent; on a GPU they run on CUDA tensors in the
# parent (the ``kdevice`` fixture of tests/conftest.py).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreter_only = pytest.mark.usefixtures("kdevice")
KERNEL_TOL = {torch.float32: dict(rtol=1e-5, atol=2e-5),
              torch.float64: dict(rtol=1e-10, atol=1e-11)}


def run_in_interpreter(test_file: str, *pytest_args: str) -> None:
    """Run ``test_file``'s tests (those ``pytest_args`` select) in a child pytest process
    with TRITON_INTERPRET=1, and assert that they passed."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        str(Path(test_file)), *pytest_args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout, r.stdout[-2000:]


def upstream_grads(y, inputs, g):
    """The gradients of ⟨y, g⟩ with respect to the ``inputs`` that are not None."""
    return torch.autograd.grad(y, [t for t in inputs if t is not None], g)


def assert_all_close(got, want, dtype) -> None:
    """Each pair close to :data:`KERNEL_TOL` of ``dtype``."""
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **KERNEL_TOL[dtype])


def clip_at_median(per_example: dict) -> tuple[Tensor, float, Tensor]:
    """Per-example gradients {name: (N, *shape)} → (‖g_n‖ over all of them, a clipping bound C
    at their median, each example's factor min(1, C/‖g_n‖)): some examples clipped, some
    not, so a test of the clipped sum sees both."""
    norms = torch.stack([g.flatten(1).square().sum(1) for g in per_example.values()])
    norms = norms.sum(0).sqrt()
    bound = float(norms.median())
    clip = (bound / (norms + 1e-6)).clamp(max=1.0)
    assert (clip < 1).any() and (clip == 1).any()
    return norms, bound, clip
