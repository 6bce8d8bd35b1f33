"""The explicit engine compiled: ``torch.compile`` over several SGD steps at once.

At the book's batch 10 a step of ``Network.update_mini_batch`` on [784, 30, 10] is a few
small GEMMs: Python and dispatch are most of its time. Compiling one step replaces
that with the compiled function's own call overhead (guards, wrapper), which measured no
faster here. Compiling ``steps`` consecutive steps as one function (the loop unrolled by
Dynamo, Inductor's C++ wrapper instead of its Python one) pays that overhead once per
``steps`` mini-batches: about 2× faster than eager at 10 steps a call on this project's
CPU (``python -m benchmarks.run``, section b).

    step = sgd_steps(net, steps=10)
    for xs, ys in chunks:             # xs (steps, m, n_in), ys (steps, m, n_out)
        step(xs, ys, eta, lmbda, n)   # = net.update_mini_batch on each of the steps

The numbers are the eager engine's up to float rounding: Inductor may fuse and reorder
the elementwise work.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .network import Network


def sgd_steps(
    net: Network, steps: int = 10, backend: str = "inductor", cpp_wrapper: bool = True
) -> Callable[[Tensor, Tensor, float, float, int | None], None]:
    """A compiled ``run(xs, ys, eta, lmbda, n)`` doing ``net.update_mini_batch(xs[i], ys[i],
    eta, lmbda, n)`` for i < ``steps``. ``xs`` and ``ys`` stack ``steps`` mini-batches of one
    shape (shapes are static: a short last chunk recompiles, so run it eagerly instead).
    Compilation happens on the first call."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def run(xs: Tensor, ys: Tensor, eta: float, lmbda: float = 0.0, n: int | None = None):
        for i in range(steps):
            net.update_mini_batch(xs[i], ys[i], eta, lmbda, n)

    options = {"cpp_wrapper": cpp_wrapper} if backend == "inductor" else None
    compiled = torch.compile(run, backend=backend, dynamic=False, options=options)

    def checked(xs: Tensor, ys: Tensor, eta: float, lmbda: float = 0.0, n: int | None = None):
        if xs.shape[0] != steps or ys.shape[0] != steps:
            raise ValueError(f"expected {steps} stacked mini-batches (xs of shape "
                             f"({steps}, m, n_in)), got xs {tuple(xs.shape)}, ys {tuple(ys.shape)}")
        compiled(xs, ys, eta, lmbda, n)

    return checked


__all__ = ["sgd_steps"]
