"""Linear and Dense modules, with ``torch.nn.Linear``'s names, shapes and state_dict keys."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import feedback as _feedback
from .. import functional as F
from ..activations import Activation, get_activation


class Linear(nn.Module):
    r"""z = a_prev Wᵀ + b, with the seed's BP3 and BP4 in its backward.

    A drop-in for ``torch.nn.Linear``: same arguments, parameters and state_dict
    keys, so state_dicts load both ways.

    Args:
        in_features: size of each input row, n_{l−1}.
        out_features: size of each output row, n_l.
        bias: if False, the layer learns no b.
        feedback: keyword-only, what the backward passes down in place of (W^l)ᵀ δ^l
            (``bptorch.feedback``): "backprop" (default), "fa", "usf", "brsf", "frsf".

    Shape:
        input (*, in_features) -> output (*, out_features).

    Attributes:
        weight: (out_features, in_features), W^l, initialised U(−k, k), k = 1/√in_features.
        bias: (out_features,), b^l, initialised the same way.
        feedback_weight: buffer, fa: the fixed B, U(−k, k); frsf: the fixed |R|, R U(−k, k).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        feedback: str = "backprop",
    ) -> None:
        super().__init__()
        _feedback.check_rule(feedback)  # a bad name fails before any allocation
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        _feedback.setup(self, feedback, self.weight)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(−1/√n_in, 1/√n_in) for W and b, as ``torch.nn.Linear``."""
        k = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -k, k)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -k, k)
        _feedback.reset(self, self.weight)  # fa's B, frsf's |R|: W's distribution

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias, feedback_weight=self.bp2_weight())

    def bp2_weight(self) -> Tensor | None:
        """The feedback rule's B that BP2 passes δ down through in place of W, for this
        call, or None for backprop (``bptorch.feedback.in_backward``): the one dispatch
        of Linear, Dense and a Network's output layer."""
        return _feedback.in_backward(self, self.weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        ) + _feedback.extra_repr(self)


class Dense(Linear):
    r"""a = σ(a_prev Wᵀ + b), the fused layer: its backward computes
    δ^l = ∂C/∂a^l ⊙ σ'(z^l) once, then BP3, BP4 and (W^l)ᵀ δ^l passed down.

    Args:
        in_features, out_features, bias, device, dtype: as :class:`Linear`.
        activation: one of ``bptorch.activations.ACTIVATIONS`` ("sigmoid", "tanh",
            "relu", "leaky_relu", "softmax", "identity", "gelu", "silu") or an
            ``Activation`` (e.g. ``bptorch.activations.gelu("tanh")``).
        negative_slope: the slope for "leaky_relu" (negative slopes save z, not a).
        feedback: as :class:`Linear`.

    Shape:
        input (*, in_features) -> output (*, out_features).

    Attributes:
        weight, bias, feedback_weight: as :class:`Linear` (the same state_dict keys).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | Activation = "sigmoid",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        negative_slope: float = 0.01,
        feedback: str = "backprop",
    ) -> None:
        # Look the activation up first: a bad name fails before any allocation.
        self.activation = get_activation(activation, negative_slope=negative_slope)
        super().__init__(in_features, out_features, bias, device, dtype, feedback=feedback)

    def forward(self, input: Tensor) -> Tensor:
        # `_diag_name` is set by diagnostics.record and Network
        return F.dense(input, self.weight, self.bias, self.activation,
                       name=self.__dict__.get("_diag_name"), feedback_weight=self.bp2_weight())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation.name!r}"
