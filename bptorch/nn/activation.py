"""Activation modules: a = σ(z), backward ∂C/∂z = ∂C/∂a ⊙ σ'(z)."""
from __future__ import annotations

from torch import Tensor, nn

from ..activations import get_activation
from ..functions.layers import ActivationFunction
from .._checks import check_floating


class _Activation(nn.Module):
    name = ""

    def __init__(self) -> None:
        super().__init__()
        self._act = get_activation(self.name)

    def forward(self, input: Tensor) -> Tensor:
        check_floating("input", input)
        return ActivationFunction.apply(input, self._act, getattr(self, "_diag_name", None))


class Sigmoid(_Activation):
    """a = 1 / (1 + e^{−z}); saves a, since σ'(z) = a(1 − a)."""

    name = "sigmoid"


class Tanh(_Activation):
    """a = tanh(z); saves a, since σ'(z) = 1 − a²."""

    name = "tanh"


class ReLU(_Activation):
    """a = max(z, 0); σ'(0) is taken as 0."""

    name = "relu"


class Identity(_Activation):
    """a = z."""

    name = "identity"


class LeakyReLU(_Activation):
    """a = z if z > 0 else negative_slope · z."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        nn.Module.__init__(self)
        self.negative_slope = negative_slope
        self._act = get_activation("leaky_relu", negative_slope=negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softmax(_Activation):
    """a_j = e^{z_j} / Σ_k e^{z_k} along ``dim``."""

    name = "softmax"

    def __init__(self, dim: int = -1) -> None:
        nn.Module.__init__(self)
        self.dim = dim
        self._act = get_activation("softmax", dim=dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
