"""Dropout and reshape: layers whose backward moves δ without any weights.

    dropout    a = z ⊙ m,  m_i = 1/(1 − p) kept, 0 dropped     ∂C/∂z = ∂C/∂a ⊙ m
    flatten    a = z.reshape(N, C·H·W)                          ∂C/∂z = ∂C/∂a.reshape(z.shape)

No weights, so no BP3/BP4; each backward is BP2's first factor for a fixed linear map
(a diagonal one for dropout, a permutation-free reshape for flatten). A dropped unit
passes no error down.

Channel-wise dropout (Dropout1d/2d/3d) is the same equation with one m per example and
channel, (N, C, 1, ..., 1), broadcast over the spatial axes: a whole feature map is kept
or dropped, and ∂C/∂z = ∂C/∂a ⊙ m drops its whole error map with it. Alpha dropout
(AlphaDropout, for SELU) adds a constant shift, a = z ⊙ m + b with m_i = A·keep_i and
b_i = λα·A·(keep_i − 1 + p) (λα from SELU), so that the mean and variance of SELU's
output survive: the shift does not depend on z, and ∂C/∂z = ∂C/∂a ⊙ m still.

The mask is an input, drawn by the caller with torch's RNG (:func:`dropout_mask`,
:func:`feature_dropout_mask`, :func:`alpha_dropout_mask`), so the Function is
deterministic and ``torch.manual_seed`` controls the draw; attention's dropout draws its
mask here too. Both run in their input's dtype under ``torch.autocast``, as torch's.
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


def feature_dropout_mask(input: Tensor, p: float, batched: bool = True) -> Tensor:
    """Channel-wise m: one Bernoulli(1 − p) / (1 − p) per example and channel, shaped
    (N, C, 1, ..., 1) to broadcast over the spatial axes ((C, 1, ..., 1) when not
    ``batched``), drawn as torch's CPU feature dropout draws it (the same values, in
    the same order, from the same seed); for p = 1 all zeros, drawing nothing."""
    keep = 2 if batched else 1
    shape = (*input.shape[:keep], *([1] * (input.dim() - keep)))
    if p == 1.0:
        return input.new_zeros(shape)
    return input.new_empty(shape).bernoulli_(1 - p).div_(1 - p)


# SELU's λα (−λα is SELU's saturation value, what a dropped unit stands for), torch's constant
ALPHA = 1.7580993408473766


def alpha_dropout_mask(input: Tensor, p: float, feature: bool = False,
                       batched: bool = True) -> tuple[Tensor, Tensor | None]:
    """(m, b) of alpha dropout's a = z ⊙ m + b, drawn as torch's CPU alpha dropout draws
    them: keep ~ Bernoulli(1 − p), A = 1/√(((λα)²p + 1)(1 − p)), m = A·keep and
    b = λα·A·(keep − 1 + p); per element, or per example and channel with ``feature``
    (FeatureAlphaDropout). For p = 1 (m, b) = (0, None), as torch's zeros."""
    keep = 2 if batched else 1
    shape = (*input.shape[:keep], *([1] * (input.dim() - keep))) if feature else input.shape
    if p == 1.0:
        return input.new_zeros(shape), None
    noise = input.new_empty(shape).bernoulli_(1 - p)
    a = 1.0 / ((ALPHA * ALPHA * p + 1) * (1 - p)) ** 0.5
    shift = noise.add(-1).mul_(ALPHA * a).add_(ALPHA * a * p)  # torch's order of operations
    return noise.mul_(a), shift


def dropout_bwd(delta: Tensor, z: Tensor | None, mask: Tensor,
                need: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂z, ∂C/∂m) of a = z ⊙ m, given δ = ∂C/∂a; m may broadcast (channel-wise)."""
    grad_input = grad_mask = None
    if need[0]:
        grad_input = delta * mask  # a = z ⊙ m  →  BP2's factor: dz = δ ⊙ m
    if need[1]:
        # a = z ⊙ m  →  dm = δ ⊙ z, summed over the axes m was broadcast along
        grad_mask = (delta * z).sum_to_size(mask.shape)
    return grad_input, grad_mask


class DropoutFunction(BPFunction):
    """a = z ⊙ m, with m_i = 1/(1 − p) for kept units and 0 for dropped ones.

    Backward: ∂C/∂z = ∂C/∂a ⊙ m, the same mask (a dropped unit passes no error down).
    ``inplace=True`` overwrites z with a (``mark_dirty``); the mask then gets no gradient,
    since z is gone. m may be a channel mask (N, C, 1, ..., 1), broadcast over the
    spatial axes (Dropout1d/2d/3d).
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


class AlphaDropoutFunction(BPFunction):
    """a = z ⊙ m + b, alpha dropout: m = A·keep, b = λα·A·(keep − 1 + p), per element or
    per (example, channel) (broadcast over the spatial axes).

    Backward: ∂C/∂z = ∂C/∂a ⊙ m, as dropout's (b does not depend on z); ∂C/∂m = Σ δ ⊙ z
    and ∂C/∂b = Σ δ over the axes each was broadcast along (none in practice).
    ``inplace=True`` overwrites z with a, as :class:`DropoutFunction`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, mask: Tensor, shift: Tensor, inplace: bool = False) -> Tensor:
        return (input.mul_(mask) if inplace else input * mask).add_(shift)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, mask, shift, inplace = inputs
        if inplace:
            if ctx.needs_input_grad[1]:
                raise RuntimeError("in-place alpha dropout overwrites the input, so the mask "
                                   "cannot get a gradient; use inplace=False")
            ctx.mark_dirty(input)
        ctx.shift_shape = shift.shape
        keep_input = ctx.needs_input_grad[1] and not inplace
        ctx.save_for_backward(input if keep_input else None, mask)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        input, mask = ctx.saved_tensors
        # a = z ⊙ m + b  →  dz = δ ⊙ m and dm = δ ⊙ z, as dropout's
        grad_input, grad_mask = dropout_bwd(grad_output, input, mask, ctx.needs_input_grad)
        grad_shift = None
        if ctx.needs_input_grad[2]:  # a = z ⊙ m + b  →  db = δ, summed where b broadcast
            grad_shift = grad_output.sum_to_size(ctx.shift_shape)
        return grad_input, grad_mask, grad_shift, None


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


__all__ = ["ALPHA", "AlphaDropoutFunction", "DropoutFunction", "FlattenFunction",
           "alpha_dropout_mask", "dropout_bwd", "dropout_mask", "feature_dropout_mask"]
