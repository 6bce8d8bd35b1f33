"""Dropout and reshape: layers whose backward moves δ without any weights.

    dropout    a = z ⊙ m,  m_i = 1/(1 − p) kept, 0 dropped     ∂C/∂z = ∂C/∂a ⊙ m
    flatten    a = z.reshape(N, C·H·W)                          ∂C/∂z = ∂C/∂a.reshape(z.shape)

No weights, so no BP3/BP4; each backward is BP2's first factor for a fixed linear map
(a diagonal one for dropout, a permutation-free reshape for flatten). A dropped unit
passes no error down. The mask is an input, drawn by the caller with torch's RNG
(:func:`dropout_mask`), so the Function is deterministic and ``torch.manual_seed``
controls the draw; attention's dropout draws its mask here too. Both run in their
input's dtype under ``torch.autocast``, as torch's.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import BPFunction


# ---------------------------------------------------------------- the reference pairs
def dropout_mask(input: Tensor, p: float) -> Tensor:
    """m = Bernoulli(1 − p) / (1 − p), drawn as torch's CPU dropout draws it; for p = 1
    all zeros, drawing nothing (as torch, which multiplies by zero)."""
    if p == 1.0:
        return torch.zeros_like(input)
    return torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)


def dropout_bwd(delta: Tensor, z: Tensor | None, mask: Tensor,
                need: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂z, ∂C/∂m) of a = z ⊙ m, given δ = ∂C/∂a."""
    grad_input = grad_mask = None
    if need[0]:
        grad_input = delta * mask  # a = z ⊙ m  →  BP2's factor: dz = δ ⊙ m
    if need[1]:
        grad_mask = delta * z  # a = z ⊙ m  →  dm = δ ⊙ z
    return grad_input, grad_mask


class DropoutFunction(BPFunction):
    """a = z ⊙ m, with m_i = 1/(1 − p) for kept units and 0 for dropped ones.

    Backward: ∂C/∂z = ∂C/∂a ⊙ m, the same mask (a dropped unit passes no error down).
    ``inplace=True`` overwrites z with a (``mark_dirty``); the mask then gets no gradient,
    since z is gone.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, mask: Tensor, inplace: bool = False) -> Tensor:
        return input.mul_(mask) if inplace else input * mask

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, mask, inplace = inputs
        if inplace:
            if ctx.needs_input_grad[1]:
                raise RuntimeError("in-place dropout overwrites the input, so the mask "
                                   "cannot get a gradient; use inplace=False")
            ctx.mark_dirty(input)
        keep_input = ctx.needs_input_grad[1] and not inplace
        ctx.save_for_backward(input if keep_input else None, mask)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        input, mask = ctx.saved_tensors
        return (*dropout_bwd(grad_output, input, mask, ctx.needs_input_grad), None)


class FlattenFunction(BPFunction):
    """a = z reshaped to (N, C·H·W) (dims start_dim..end_dim merged); δ reshaped back."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
        return input.flatten(start_dim, end_dim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.input_shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        # a = z.flatten(start, end)  →  dz = δ.reshape(z.shape)
        return grad_output.reshape(ctx.input_shape), None, None


__all__ = ["DropoutFunction", "FlattenFunction", "dropout_bwd", "dropout_mask"]
