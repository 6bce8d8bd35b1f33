"""Which code computes each layer: the written-out reference (torch ops) or the Triton
kernels, each of which computes the same equations in one launch.

Three names:

* ``"reference"``: torch ops, the code each family's file opens with; the CPU path;
* ``"triton"``: the Triton kernels (CUDA tensors; CPU tensors when ``TRITON_INTERPRET=1``
  was set before triton was imported, Triton's interpreter, which the tests use);
* ``"auto"``, the default: Triton on CUDA tensors where triton is installed, the reference
  elsewhere.

::

    import bptorch
    with bptorch.kernels.use("reference"):
        ...                       # every layer in torch ops
    bptorch.kernels.set_default("auto")
    bptorch.kernels.current()     # 'auto'

The starting choice is ``$BPTORCH_KERNELS`` where set (``BPTORCH_KERNELS=reference python
-m benchmarks.layers --device cuda`` times the reference on a GPU), else "auto".

A Function decides when its forward runs and its backward follows that decision. Layers
with kernels: LayerNorm and BatchNorm (forward statistics, backward), the activations'
σ'(z) ⊙ g (Dense and the activation layers); the others run the reference under any name.
Double backward (``create_graph=True``) and ``torch.func`` transforms always take the
reference, whose torch ops are differentiable and batchable.

More layers with kernels: scaled_dot_product_attention with no mask or the causal one and
no dropout (flash-style forward saving the row log-sum-exp, tiled backward), the gate
products of LSTM and GRU steps (layers and cells), and Embedding's scatter-add.
Conv2d (its default path, and its feedback-rule twin) has kernels too: BP4 and BP2 as
implicit-GEMM kernels over the whole batch (``functions/conv.py``'s end), under "triton"
only until a GPU has timed them against cuDNN (``conv.CONV_KERNELS_IN_AUTO``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .functions.base import KERNEL_LAUNCHES, KERNEL_NAMES, kernel_choice, set_kernel_choice

NAMES = KERNEL_NAMES
LAUNCHES = KERNEL_LAUNCHES  # kernel name -> launches so far, counted for the tests


def current() -> str:
    """The current choice: "reference", "triton" or "auto"."""
    return kernel_choice()


def set_default(name: str) -> None:
    """Make ``name`` the choice from now on (ValueError for an unknown name)."""
    set_kernel_choice(name)


@contextmanager
def use(name: str) -> Iterator[str]:
    """Run the ``with`` block under ``name``, then restore the previous choice."""
    previous = set_kernel_choice(name)
    try:
        yield name
    finally:
        set_kernel_choice(previous)


__all__ = ["LAUNCHES", "NAMES", "current", "set_default", "use"]
