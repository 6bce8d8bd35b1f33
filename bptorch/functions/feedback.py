"""Feedback rules' Functions: B in place of W in BP2's first factor.

A feedback rule (``bptorch.feedback`` builds B) keeps BP1, BP3 and BP4 and changes only
the matrix the error is passed down through:

    backprop                                a feedback rule
    δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)    δ^l = ((B^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)
    grad_input = delta @ W                  grad_input = delta @ B

BP3 and BP4 read W's shape only, never its values, so each Function here is its
backprop twin's backward (:mod:`.linear`, :mod:`.conv`) with B handed in where W was.
Subclasses with one extra input, ``feedback_weight`` = B (W's shape, no gradient), not an
optional argument of the twins: backprop's Functions keep their inputs, saved tensors and
cost exactly as they were. Forward and forward mode (``jvp``) are the layer's own.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..activations import Activation
from .base import DELTA_HOOKS, Padding, Pair, report_delta
from .conv import Conv2dFunction, conv2d_backward, conv2d_forward, conv2d_setup
from .linear import (
    DenseFunction, LinearFunction, dense_bwd, dense_fwd, dense_saved, linear_bwd, linear_fwd,
    linear_jvp, sigma_from,
)


class LinearFeedbackFunction(LinearFunction):
    """z^l = W^l a^{l-1} + b^l, passing down Bᵀ δ^l instead of (W^l)ᵀ δ^l.

    Backward: BP3 ∂C/∂b^l = δ^l and BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ as
    :class:`LinearFunction`; batch-first ``grad_input = delta @ B``.
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None,
                feedback_weight: Tensor) -> Tensor:
        return linear_fwd(input, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias, feedback_weight = inputs
        ctx.save_for_backward(input, weight, feedback_weight)
        ctx.save_for_forward(input, weight, feedback_weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, _weight, feedback_weight = ctx.saved_tensors
        # linear_bwd reads its weight only in BP2's factor (BP4 needs none): hand it B
        return (*linear_bwd(grad_output, a_prev, feedback_weight, ctx.needs_input_grad), None)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias, _dfeedback) -> Tensor:
        a_prev, weight, _ = ctx.saved_tensors
        return linear_jvp(a_prev, weight, da_prev, dweight, dbias)


class DenseFeedbackFunction(DenseFunction):
    """a^l = σ(W^l a^{l-1} + b^l), passing down Bᵀ δ^l instead of (W^l)ᵀ δ^l.

    As :class:`DenseFunction` (δ^l = ∂C/∂a^l ⊙ σ'(z^l), BP3, BP4), with the extra input
    ``feedback_weight`` = B: batch-first ``grad_input = delta @ B``.
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, activation: Activation,
                name: str | None, feedback_weight: Tensor) -> Tensor:
        return dense_fwd(input, weight, bias, activation)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias, activation, name, feedback_weight = inputs
        ctx.activation, ctx.name = activation, name
        saved = (*dense_saved(activation, input, weight, bias, output), feedback_weight)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias, _dactivation, _dname, _dfeedback) -> Tensor:
        """The layer's own forward derivative, as DenseFunction's: B plays no part."""
        a_prev, weight, bias, a, _ = ctx.saved_tensors
        dz = linear_jvp(a_prev, weight, da_prev, dweight, dbias)
        return ctx.activation.delta(dz, sigma_from(ctx.activation, a_prev, weight, bias, a))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight, bias, a, feedback_weight = ctx.saved_tensors
        saved = sigma_from(ctx.activation, a_prev, weight, bias, a)
        # as DenseFunction's, with Bᵀ δ^l passed down instead of (W^l)ᵀ δ^l
        delta, grads = dense_bwd(grad_output, a_prev, feedback_weight, saved, ctx.activation,
                                 ctx.needs_input_grad)
        if DELTA_HOOKS:
            report_delta(ctx.name, ctx.activation, delta, saved, a_prev=a_prev)
        return (*grads, None, None, None)


class Conv2dFeedbackFunction(Conv2dFunction):
    """z^l = W^l ⋆ a^{l-1} + b^l, passing down B's transposed convolution with δ^l instead
    of W's.

    BP3 and BP4 are :class:`Conv2dFunction`'s: they read W's shape only, never its
    values, so the backward is Conv2dFunction's with B saved in W's place (on every
    ``path``).
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair,
                padding: Padding, dilation: Pair, groups: int, path: str,
                feedback_weight: Tensor) -> Tensor:
        return conv2d_forward(input, weight, bias, stride, padding, dilation, groups, path)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        conv2d_setup(ctx, inputs[:-1])
        ctx.save_for_backward(inputs[0], inputs[-1])  # a^{l-1}, and B where W was

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, feedback_weight = ctx.saved_tensors
        # as Conv2dFunction's, B in W's place; no gradient for the five options and B
        return (*conv2d_backward(ctx, grad_output, a_prev, feedback_weight), *(None,) * 6)


__all__ = ["Conv2dFeedbackFunction", "DenseFeedbackFunction", "LinearFeedbackFunction"]
