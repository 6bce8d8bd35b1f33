"""The layer Functions: linear, activation and the fused dense layer.

Each is a ``torch.autograd.Function`` in the ``forward`` + ``setup_context`` form
(the form that composes with ``torch.func``) whose ``backward`` is one of the
seed's equations, written with differentiable torch ops so that double backward
works. Rows are examples (batch-first), so the seed's column vectors become rows:

    seed (one example, columns)          code (N examples, rows)
    z^l = W^l a^{l-1} + b^l              z = a_prev @ W.T + b
    δ^l = ∇_a C ⊙ σ'(z^l)   (BP1/BP2)    delta = grad_output * sp
    (W^{l+1})ᵀ δ^{l+1}      (BP2)        grad_input = delta @ W
    ∂C/∂b^l = δ^l           (BP3)        grad_bias = delta.sum(0)
    ∂C/∂W^l = δ^l (a^{l-1})ᵀ (BP4)       grad_weight = delta.T @ a_prev

BP3 and BP4 sum over the rows: the cost of a batch is a sum (or mean) of
per-example costs, and its gradient the same sum of per-example gradients.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from ..activations import Activation
from .. import diagnostics


def _linear_backward(
    ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """BP3, BP4 and the (W)ᵀδ factor of BP2 for z = a_prev Wᵀ + b, given δ = ∂C/∂z."""
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = delta @ weight  # (W^l)ᵀ δ^l, passed down to layer l−1 (BP2)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        delta2d = delta.reshape(-1, delta.shape[-1])  # (*, n_out) -> (N, n_out)
        if ctx.needs_input_grad[1]:
            a_prev2d = a_prev.reshape(-1, a_prev.shape[-1])
            grad_weight = delta2d.t() @ a_prev2d  # BP4: ∂C/∂W = δ (a^{l-1})ᵀ, summed over rows
        if ctx.needs_input_grad[2]:
            grad_bias = delta2d.sum(0)  # BP3: ∂C/∂b = δ, summed over rows
    return grad_input, grad_weight, grad_bias


class LinearFunction(Function):
    """z^l = W^l a^{l-1} + b^l.

    Backward, given grad_output = ∂C/∂z^l = δ^l:
    BP3 ∂C/∂b^l = δ^l, BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ, and (W^l)ᵀ δ^l, the first
    factor of BP2, passed down.

    Batch-first: ``z = a_prev @ W.T + b``; ``grad_weight = delta.T @ a_prev``,
    ``grad_bias = delta.sum(0)``, ``grad_input = delta @ W``. Inputs of shape
    (*, in_features) are flattened to rows for BP3 and BP4.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return torch.nn.functional.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias = inputs
        ctx.save_for_backward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        return _linear_backward(ctx, grad_output, a_prev, weight)


class ActivationFunction(Function):
    """a^l = σ(z^l).

    Backward: ∂C/∂z^l = ∂C/∂a^l ⊙ σ'(z^l), the ``⊙ σ'(z)`` factor of BP1 and BP2.
    σ' comes from what the activation saves (sigmoid and tanh keep a, since
    σ'(z) = a(1 − a) and 1 − a²). Softmax, whose Jacobian is not diagonal, gives
    δ = a ⊙ (grad_output − Σ_k grad_output_k a_k).

    Batch-first: elementwise, so the same formulas on (N, n) tensors.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, activation: Activation, name: str | None = None) -> Tensor:
        return activation.fn(z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        z, activation, name = inputs
        ctx.activation, ctx.name = activation, name
        saved = {"a": output, "z": z}.get(activation.saves)
        ctx.save_for_backward(saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (saved,) = ctx.saved_tensors
        act = ctx.activation
        delta = act.delta(grad_output, saved)  # ∂C/∂z = ∂C/∂a ⊙ σ'(z)
        if diagnostics.active():
            diagnostics.record_delta(ctx.name, act, delta, saved)
        return delta, None, None


class DenseFunction(Function):
    """a^l = σ(W^l a^{l-1} + b^l), the fused linear + activation layer.

    Backward, given grad_output = ∂C/∂a^l:

    * δ^l = ∂C/∂a^l ⊙ σ'(z^l), computed once. When layer l+1 handed down
      (W^{l+1})ᵀ δ^{l+1}, this is BP2; when a cost handed down ∇_a C, it is BP1;
    * BP3 ∂C/∂b^l = δ^l and BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ;
    * (W^l)ᵀ δ^l, passed down to layer l−1.

    Batch-first: ``z = a_prev @ W.T + b``, ``a = σ(z)``; ``delta = grad_output * sp``,
    ``grad_weight = delta.T @ a_prev``, ``grad_bias = delta.sum(0)``,
    ``grad_input = delta @ W``. Saves a_prev, W and what σ' needs (a for sigmoid),
    the same bytes as ``nn.Linear`` followed by ``nn.Sigmoid``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        activation: Activation,
        name: str | None = None,
    ) -> Tensor:
        z = torch.nn.functional.linear(input, weight, bias)
        return activation.fn(z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias, activation, name = inputs
        ctx.activation, ctx.name = activation, name
        if activation.saves == "z":  # recompute z in backward rather than keep it
            ctx.save_for_backward(input, weight, _bias, None)
        else:
            ctx.save_for_backward(input, weight, None, output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight, bias, a = ctx.saved_tensors
        act = ctx.activation
        saved = a if act.saves == "a" else None
        if act.saves == "z":
            saved = torch.nn.functional.linear(a_prev, weight, bias)
        delta = act.delta(grad_output, saved)  # BP1/BP2: δ^l = ∂C/∂a^l ⊙ σ'(z^l)
        if diagnostics.active():
            diagnostics.record_delta(ctx.name, act, delta, saved)
        return (*_linear_backward(ctx, delta, a_prev, weight), None, None)


linear = LinearFunction.apply
activation = ActivationFunction.apply
dense = DenseFunction.apply
