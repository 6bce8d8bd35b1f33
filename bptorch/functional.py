"""Lowercase functional forms, as ``torch.nn.functional``: check the input, then apply
the Function. The Functions themselves live in :mod:`bptorch.functions`."""
from __future__ import annotations

from torch import Tensor
from torch.nn.modules.utils import _pair

from ._checks import check_cost_inputs, check_floating, check_linear
from .activations import Activation, get_activation
from .functions import conv as _conv
from .functions.costs import CostFunction, get_cost
from .functions.layers import ActivationFunction, DenseFunction, LinearFunction


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """z = a_prev Wᵀ + b for input (*, in_features), weight (out, in), bias (out,)."""
    check_linear(input, weight, bias)
    return LinearFunction.apply(input, weight, bias)


def dense(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | Activation = "sigmoid",
    *,
    name: str | None = None,
) -> Tensor:
    """a = σ(a_prev Wᵀ + b), the fused layer; ``name`` labels it for diagnostics."""
    act = get_activation(activation)
    check_linear(input, weight, bias)
    return DenseFunction.apply(input, weight, bias, act, name)


def _activation(z: Tensor, act: Activation, name: str | None = None) -> Tensor:
    check_floating("input", z)
    return ActivationFunction.apply(z, act, name)


def apply_activation(
    input: Tensor, activation: str | Activation, *, name: str | None = None
) -> Tensor:
    """a = σ(z) for an activation given by name or object."""
    return _activation(input, get_activation(activation), name)


def sigmoid(input: Tensor) -> Tensor:
    """a = 1 / (1 + e^{−z})."""
    return _activation(input, get_activation("sigmoid"))


def tanh(input: Tensor) -> Tensor:
    """a = tanh(z)."""
    return _activation(input, get_activation("tanh"))


def relu(input: Tensor) -> Tensor:
    """a = max(z, 0)."""
    return _activation(input, get_activation("relu"))


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """a = z if z > 0 else negative_slope · z."""
    return _activation(input, get_activation("leaky_relu", negative_slope=negative_slope))


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """a_j = e^{z_j} / Σ_k e^{z_k} along ``dim``."""
    return _activation(input, get_activation("softmax", dim=dim))


def identity(input: Tensor) -> Tensor:
    """a = z (σ' = 1), for a linear output layer."""
    return _activation(input, get_activation("identity"))


def _cost(
    name: str, output: Tensor, target: Tensor, logits: bool, reduction: str
) -> Tensor:
    c = get_cost(name, logits)
    y = check_cost_inputs(output, target, "input" if logits else "output")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    scale = 1.0 / max(output.shape[0], 1) if reduction == "mean" else 1.0
    return CostFunction.apply(output, y, c, scale)


def quadratic_cost(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """C = ½‖a − y‖² summed over outputs, averaged over the batch."""
    return _cost("quadratic", output, target, False, reduction)


def cross_entropy_cost(
    output: Tensor, target: Tensor, logits: bool = False, reduction: str = "mean"
) -> Tensor:
    """C = −Σ[y ln a + (1 − y) ln(1 − a)]; with ``logits=True`` ``output`` is z^L, a = σ(z)."""
    return _cost("cross_entropy", output, target, logits, reduction)


def log_likelihood_cost(
    output: Tensor, target: Tensor, logits: bool = False, reduction: str = "mean"
) -> Tensor:
    """C = −ln a_y; with ``logits=True`` ``output`` is z^L and a = softmax(z)."""
    return _cost("log_likelihood", output, target, logits, reduction)


# ---- convolutional layers (Functions in bptorch/functions/conv.py)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> Tensor:
    """z = W ⋆ a_prev + b for input (N, C_in, H, W), weight (C_out, C_in, k_h, k_w)."""
    stride, padding = _pair(stride), _pair(padding)
    _conv.check_conv2d(input, weight, bias, stride, padding)
    return _conv.Conv2dFunction.apply(input, weight, bias, stride, padding, False)


def max_pool2d(input: Tensor, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = None) -> Tensor:
    """a_j = max over window j; stride defaults to kernel_size."""
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None else k
    _conv.check_pool2d(input, k, s)
    return _conv.MaxPool2dFunction.apply(input, k, s)[0]


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """a = z ⊙ m, m_i ∈ {0, 1/(1 − p)}; the identity when not training."""
    p = _conv.check_dropout_p(p)
    if not training or p == 0.0:
        return input
    return _conv.DropoutFunction.apply(input, _conv.dropout_mask(input, p))


def flatten(input: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """Merge dims start_dim..end_dim; the backward reshapes δ back."""
    return _conv.FlattenFunction.apply(input, start_dim, end_dim)
