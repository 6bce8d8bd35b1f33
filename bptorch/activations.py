"""The activation functions σ, their derivatives σ', and what each saves for backward.

Every layer's backward needs one product, the factor ``⊙ σ'(z^l)`` of BP1 and BP2:

    δ^l = ∇_{a^l} C ⊙ σ'(z^l)

An :class:`Activation` holds three things for one σ:

* ``fn(z)``: the forward, a = σ(z);
* ``prime(saved)``: σ'(z) written as the book writes it, from the tensor the layer
  saved (``saves`` says which: the output ``"a"`` where σ' is cheapest from it, the
  input ``"z"`` otherwise, or nothing);
* ``delta(grad_output, saved)``: δ = grad_output ⊙ σ'(z), the same product through
  one fused ATen kernel where one exists (one pass over memory instead of three).
  ``tests/test_activations.py`` checks ``delta`` against ``grad_output * prime``.

``prime`` and ``delta`` are built from differentiable torch ops, so a backward that uses them can
itself be differentiated (double backward, gradgradcheck).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

aten = torch.ops.aten


@dataclass(frozen=True)
class Activation:
    """One activation σ: forward, derivative, and the saved tensor both use."""

    name: str
    fn: Callable[[Tensor], Tensor]  # a = σ(z)
    prime: Callable[[Tensor], Tensor]  # σ'(z), from the saved tensor
    delta: Callable[[Tensor, Tensor], Tensor]  # grad_output ⊙ σ'(z), from the saved tensor
    saves: str | None  # "a" (output), "z" (input) or None
    prime_max: float  # max over z of σ'(z); "saturated" means σ'(z) < 1% of this
    elementwise: bool = True  # False for softmax, whose Jacobian is not diagonal
    negative_slope: float | None = None  # leaky_relu's s
    dim: int | None = None  # softmax's dim


# sigmoid: σ(z) = 1/(1+e^{−z}), σ'(z) = σ(z)(1 − σ(z)) = a(1 − a): keep a, not z.
def _sigmoid_prime(a: Tensor) -> Tensor:
    return a * (1 - a)


SIGMOID = Activation(
    "sigmoid",
    fn=torch.sigmoid,
    prime=_sigmoid_prime,
    delta=aten.sigmoid_backward,  # fused g * a * (1 - a)
    saves="a",
    prime_max=0.25,
)


# tanh: σ'(z) = 1 − tanh²(z) = 1 − a²: keep a.
def _tanh_prime(a: Tensor) -> Tensor:
    return 1 - a * a


TANH = Activation(
    "tanh",
    fn=torch.tanh,
    prime=_tanh_prime,
    delta=aten.tanh_backward,  # fused g * (1 - a²)
    saves="a",
    prime_max=1.0,
)


# relu: σ(z) = max(z, 0), σ'(z) = 1 if z > 0 else 0. At the kink z = 0 we use the
# subgradient 0, as torch does. a > 0 exactly when z > 0, so the output suffices.
def _relu_prime(a: Tensor) -> Tensor:
    return (a > 0).to(a.dtype)


def _relu_delta(grad_output: Tensor, a: Tensor) -> Tensor:
    return aten.threshold_backward(grad_output, a, 0)  # fused g where a > 0 else 0


RELU = Activation(
    "relu",
    fn=torch.relu,
    prime=_relu_prime,
    delta=_relu_delta,
    saves="a",
    prime_max=1.0,
)


def _identity_prime(z: Tensor) -> Tensor:
    return torch.ones_like(z)


def _identity_delta(grad_output: Tensor, _saved: Tensor | None) -> Tensor:
    return grad_output


IDENTITY = Activation(
    "identity",
    fn=lambda z: z,
    prime=_identity_prime,
    delta=_identity_delta,
    saves=None,
    prime_max=1.0,
)


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    """σ(z) = z if z > 0 else s·z; σ'(z) = 1 if z > 0 else s (s at the kink, as torch).

    For s ≥ 0, a > 0 exactly when z > 0, so the output is saved; a negative slope
    flips the sign of a and is refused.
    """
    s = float(negative_slope)
    if s < 0:
        raise ValueError(f"leaky_relu expects negative_slope >= 0, got {negative_slope}")

    def prime(a: Tensor) -> Tensor:
        return torch.where(a > 0, 1.0, s).to(a.dtype)

    def delta(grad_output: Tensor, a: Tensor) -> Tensor:
        # fused g where a > 0 else s·g; self_is_result=True says a is the output
        return aten.leaky_relu_backward(grad_output, a, s, True)

    return Activation(
        "leaky_relu",
        fn=lambda z: torch.nn.functional.leaky_relu(z, s),
        prime=prime,
        delta=delta,
        saves="a",
        prime_max=max(1.0, s),
        negative_slope=s,
    )


def softmax(dim: int = -1) -> Activation:
    """a_j = e^{z_j} / Σ_k e^{z_k} along ``dim``.

    Its Jacobian is not diagonal: ∂a_j/∂z_k = a_j(1[j=k] − a_k), so
    δ = a ⊙ (grad_output − Σ_k grad_output_k a_k). ``prime`` returns the diagonal
    a(1 − a), which is what the saturation diagnostics look at.
    """

    def delta(grad_output: Tensor, a: Tensor) -> Tensor:
        return aten._softmax_backward_data(grad_output, a, dim, a.dtype)  # fused form above

    return Activation(
        "softmax",
        fn=lambda z: torch.softmax(z, dim),
        prime=_sigmoid_prime,
        delta=delta,
        saves="a",
        prime_max=0.25,
        elementwise=False,
        dim=dim,
    )


LEAKY_RELU = leaky_relu()
SOFTMAX = softmax()

_BY_NAME = {
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
    "identity": IDENTITY,
}
ACTIVATIONS: tuple[str, ...] = tuple(_BY_NAME)


def get_activation(
    activation: str | Activation, *, negative_slope: float = 0.01, dim: int = -1
) -> Activation:
    """Look up an activation by name (or pass an :class:`Activation` through)."""
    if isinstance(activation, Activation):
        return activation
    if activation == "leaky_relu" and negative_slope != 0.01:
        return leaky_relu(negative_slope)
    if activation == "softmax" and dim != -1:
        return softmax(dim)
    try:
        return _BY_NAME[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None
