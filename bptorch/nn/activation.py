"""Activation modules: a = σ(z), backward ∂C/∂z = ∂C/∂a ⊙ σ'(z).

Each has ``torch.nn``'s signature, attributes and ``extra_repr``, and reads its
attributes at every call, as torch's do (setting ``m.negative_slope`` after
construction changes the next forward). The σ itself lives in
:mod:`bptorch.activations`; ``_act`` is the one these attributes select.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn.functional import _get_softmax_dim

from .. import functional as F
from ..activations import Activation, get_activation, gelu


class _Activation(nn.Module):
    name = ""

    @property
    def _act(self) -> Activation:
        return get_activation(self.name)

    def forward(self, input: Tensor) -> Tensor:
        # Only ReLU, LeakyReLU and SiLU have `inplace`, as in torch; `_diag_name` is set
        # by diagnostics. Read from __dict__: a missing attribute would cost nn.Module's
        # __getattr__ an exception (µs) on every call.
        attrs = self.__dict__
        return F.activation(input, self._act, attrs.get("_diag_name"),
                            attrs.get("inplace", False))


class Sigmoid(_Activation):
    """a = 1 / (1 + e^{−z}); saves a, since σ'(z) = a(1 − a)."""

    name = "sigmoid"


class Tanh(_Activation):
    """a = tanh(z); saves a, since σ'(z) = 1 − a²."""

    name = "tanh"


class ReLU(_Activation):
    """a = max(z, 0); σ'(0) is taken as 0. Saves a (a > 0 exactly where z > 0).

    Args:
        inplace: overwrite the input with a and return it (backward needs only a).
    """

    name = "relu"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Identity(_Activation):
    """a = z. As ``torch.nn.Identity``, any arguments are accepted and ignored."""

    name = "identity"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()


class LeakyReLU(_Activation):
    """a = z if z > 0 else negative_slope · z.

    Args:
        negative_slope: s, any float as in torch. For s ≥ 0 the output a is saved
            (a > 0 exactly where z > 0); for s < 0 a > 0 on both sides of the kink,
            so z is saved instead (and ``inplace=True`` cannot keep it: backward
            then raises, as torch's does).
        inplace: overwrite the input with a and return it.
    """

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    @property
    def _act(self) -> Activation:
        return get_activation("leaky_relu", negative_slope=self.negative_slope)

    def extra_repr(self) -> str:
        inplace_str = ", inplace=True" if self.inplace else ""
        return f"negative_slope={self.negative_slope}{inplace_str}"


class Softmax(_Activation):
    """a_j = e^{z_j} / Σ_k e^{z_k} along ``dim``; saves a.

    Args:
        dim: the dimension that sums to 1. ``None`` (torch's default, deprecated
            there) picks 0 for 0-, 1- and 3-dim input, else 1, with torch's warning.
    """

    name = "softmax"

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
            raise TypeError(f"dim must be an int or None, got {type(dim)}")
        self.dim = dim

    @property
    def _act(self) -> Activation:
        return get_activation("softmax", dim=self.dim)

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim
        if dim is None:  # stacklevel 5: the warning points at the caller of the module
            dim = _get_softmax_dim("softmax", input.dim(), 5)
        act = get_activation("softmax", dim=dim)
        return F.activation(input, act, self.__dict__.get("_diag_name"))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GELU(_Activation):
    """a = z Φ(z), Φ the standard normal CDF; saves z, since σ'(z) = Φ(z) + z φ(z).

    Args:
        approximate: "none" (exact, erf) or "tanh" (torch's tanh approximation).
    """

    name = "gelu"

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        gelu(approximate)  # a bad value fails here, naming the two valid ones
        self.approximate = approximate

    @property
    def _act(self) -> Activation:
        return get_activation("gelu", approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(_Activation):
    """a = z s(z), s the sigmoid; saves z, since σ'(z) = s(z)(1 + z(1 − s(z))).

    Args:
        inplace: overwrite the input with a and return it; a copy of z is kept for
            backward, as torch's ``silu_`` keeps one.
    """

    name = "silu"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
