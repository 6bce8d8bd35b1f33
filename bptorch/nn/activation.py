"""Activation modules: a = σ(z), backward ∂C/∂z = ∂C/∂a ⊙ σ'(z).

Each has ``torch.nn``'s signature, attributes and ``extra_repr``, and reads its
attributes at every call, as torch's do (setting ``m.negative_slope`` after
construction changes the next forward). The σ itself lives in
:mod:`bptorch.activations`; ``_act`` is the one these attributes select.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
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
        # Only the modules torch gives `inplace` have it (ReLU, SiLU, ELU, ...);
        # `_diag_name` is set by diagnostics. Read from __dict__: a missing attribute
        # would cost nn.Module's __getattr__ an exception (µs) on every call.
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


# ---------------------------------------------------------------- torch's other activations
class _InplaceRepr(_Activation):
    """An activation whose only argument is ``inplace``."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace


class Hardtanh(_Activation):
    """a = min(max(z, min_val), max_val); σ' = 1 strictly inside, 0 outside and at the
    kinks (as torch). Saves a (strictly inside exactly where z is).

    Args:
        min_val, max_val: the two bounds, min_val < max_val.
        inplace: overwrite the input with a and return it.
        min_value, max_value: torch's deprecated names of min_val, max_val (a warning).
    """

    name = "hardtanh"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False,
                 min_value: float | None = None, max_value: float | None = None) -> None:
        super().__init__()
        if min_value is not None:
            warnings.warn("keyword argument `min_value` is deprecated and rename to `min_val`",
                          FutureWarning, stacklevel=2)
            min_val = min_value
        if max_value is not None:
            warnings.warn("keyword argument `max_value` is deprecated and rename to `max_val`",
                          FutureWarning, stacklevel=2)
            max_val = max_value
        if not max_val > min_val:
            raise ValueError(f"Hardtanh expects max_val > min_val, got min_val={min_val}, "
                             f"max_val={max_val}")
        self.min_val, self.max_val, self.inplace = min_val, max_val, inplace

    @property
    def _act(self) -> Activation:
        return get_activation("hardtanh", min_val=self.min_val, max_val=self.max_val)

    def extra_repr(self) -> str:
        inplace_str = ", inplace=True" if self.inplace else ""
        return f"min_val={self.min_val}, max_val={self.max_val}{inplace_str}"


class ReLU6(Hardtanh):
    """a = min(max(z, 0), 6), torch's Hardtanh(0, 6); saves a.

    Args:
        inplace: overwrite the input with a and return it.
    """

    name = "relu6"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(0.0, 6.0, inplace)

    @property
    def _act(self) -> Activation:
        return get_activation("relu6")

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Hardsigmoid(_InplaceRepr):
    """a = relu6(z + 3)/6; σ' = 1/6 on (−3, 3), 0 elsewhere. Saves a.

    Args:
        inplace: overwrite the input with a and return it.
    """

    name = "hardsigmoid"


class Hardswish(_InplaceRepr):
    """a = z relu6(z + 3)/6 (MobileNetV3); σ' = 0 below −3, z/3 + 1/2 on [−3, 3], 1 above.
    Saves z (σ is not monotone).

    Args:
        inplace: overwrite the input with a and return it (a copy of z is kept).
    """

    name = "hardswish"


class ELU(_Activation):
    """a = z for z > 0, α(e^z − 1) else; σ' = 1 or a + α. Saves a (z for α < 0).

    Args:
        alpha: α, the value a tends to as z → −∞ is −α.
        inplace: overwrite the input with a and return it (with α < 0 its backward
            raises, as torch's).
    """

    name = "elu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__()
        self.alpha, self.inplace = alpha, inplace

    @property
    def _act(self) -> Activation:
        return get_activation("elu", alpha=self.alpha)

    def extra_repr(self) -> str:
        inplace_str = ", inplace=True" if self.inplace else ""
        return f"alpha={self.alpha}{inplace_str}"


class SELU(_InplaceRepr):
    """a = λ elu(z, α) with torch's fixed λ ≈ 1.0507, α ≈ 1.6733; σ' = λ or a + λα.
    Saves a.

    Args:
        inplace: overwrite the input with a and return it.
    """

    name = "selu"

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Softplus(_Activation):
    """a = (1/β) ln(1 + e^{βz}), and z where βz > threshold; σ' = sigmoid(βz). Saves z.

    Args:
        beta: β.
        threshold: above βz = threshold the layer is the identity (torch's switch).
    """

    name = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta, self.threshold = beta, threshold

    @property
    def _act(self) -> Activation:
        return get_activation("softplus", beta=self.beta, threshold=self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Mish(_InplaceRepr):
    """a = z tanh(softplus(z)); σ' = t + z s(z)(1 − t²), t = tanh(softplus(z)). Saves z.

    Args:
        inplace: overwrite the input with a and return it (a copy of z is kept).
    """

    name = "mish"

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class PReLU(nn.Module):
    r"""a = max(z, 0) + α_c min(z, 0), α learned: one slope, or one per channel (dim 1).

    Backward: ∂C/∂z = ∂C/∂a ⊙ (1 or α_c), and the slope's BP4,
    ∂C/∂α_c = Σ ∂C/∂a ⊙ min(z, 0) over the batch and positions of channel c.

    Args:
        num_parameters: 1 (one slope) or the number of channels C of (N, C, *) input.
        init: the initial value of every slope.

    Attributes:
        weight: the slopes, shape (num_parameters,), initialised to ``init``.
    """

    __constants__ = ["num_parameters"]

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device=None,
                 dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_parameters = num_parameters
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.empty(num_parameters, **factory_kwargs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init)

    def forward(self, input: Tensor) -> Tensor:
        return F.prelu(input, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"
