"""The costs C(a^L, y) and their gradients ∇_a C, the first factor of BP1.

Shapes: the output is (*, C), classes last (the book's convention), one C_x per
leading position x (an example, or a step of a sequence). With the book's scaling a
cost is a sum over the C outputs of a position and a mean over the positions:
C = (1/n) Σ_x C_x. Each :class:`Cost` pairs ``fn`` (the terms of C_x, one per output
j, so that C_x = Σ_j fn_j) with ``grad`` (∇_a C_x, one row per position), as
Nielsen's cost classes pair ``fn`` with ``delta``.

The two *logits* forms take z^L instead of a^L and fold the output activation
into the cost. Their gradient is BP1 in closed form, δ^L = ∇_a C ⊙ σ'(z^L) = a − y:
the σ'(z^L) of the output layer cancels, which is the cure for the slow learning
of saturated output neurons the seed ends on. They stay finite at any |z|.

The two *probability* forms (cross-entropy and log-likelihood on a^L) use torch's
BCELoss safeguards, so they too stay finite when a = σ(z) rounds to exactly 1 or 0
(z ≳ 17 or z ≲ −89 in float32; 37 and −710 in float64), where ln a or ln(1 − a) is −∞
and (a − y)/(a(1 − a)) is 0/0 or ±∞:

    ln a  →  max(ln a, −100),        ∇_a C_x = (a − y) / max(a(1 − a), ε),  ε = 1e-12

the value as ``torch.nn.functional.binary_cross_entropy`` computes it, and the gradient
as its backward does, so the two agree at saturation too (log-likelihood: the same floor,
∇_a C_x = −y / max(a, ε)). The floor −100 (e^−100 ≈ 4e−44) is met only by saturated
outputs; ε bounds |∇_a C_x| by 1e12 and is met where a(1 − a) < 1e-12, |z| ≳ 27.6.
Behind a separate sigmoid, σ'(z) = a(1 − a) is then 0 or below ε, so δ^L = ∇_a C ⊙ σ'(z)
is 0 or tiny: slow learning, never NaN. The logits forms need neither safeguard and keep
δ^L = a − y at any |z|: they are the cure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .base import FLOAT32, LOW_PRECISION, BPFunction, narrow

# torch's BCELoss safeguards (aten binary_cross_entropy and its backward): the floor
# on ln a and ln(1 − a), and the floor on the denominator of the gradient.
LOG_FLOOR = -100.0
EPS = 1e-12


def _log(a: Tensor) -> Tensor:
    """max(ln a, −100): finite at a = 0."""
    return torch.log(a).clamp(min=LOG_FLOOR)


def _log1m(a: Tensor) -> Tensor:
    """max(ln(1 − a), −100): finite at a = 1."""
    return torch.log1p(-a).clamp(min=LOG_FLOOR)


@dataclass(frozen=True)
class Cost:
    """One cost: its terms, gradient in the output and gradient in the target."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]  # terms of C_x, (*, C): C_x = fn(a, y).sum(-1)
    grad: Callable[[Tensor, Tensor], Tensor]  # ∇_a C_x, (*, C); for logits forms, δ^L
    grad_target: Callable[[Tensor, Tensor], Tensor]  # ∇_y C_x, (*, C)
    logits: bool = False  # takes z^L rather than a^L
    probabilities: bool = False  # a^L must lie in [0, 1] (checked by the functional forms)


# quadratic: C_x = ½‖a − y‖², ∇_a C_x = a − y.
QUADRATIC = Cost(
    "quadratic",
    fn=lambda a, y: 0.5 * (a - y) ** 2,
    grad=lambda a, y: a - y,
    grad_target=lambda a, y: y - a,
)

# cross-entropy: C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)],
# ∇_a C_x = (a − y) / (a(1 − a)); both with the safeguards above, in torch's order.
CROSS_ENTROPY = Cost(
    "cross_entropy",
    fn=lambda a, y: (y - 1) * _log1m(a) - y * _log(a),
    grad=lambda a, y: (a - y) / torch.clamp(a * (1 - a), min=EPS),
    grad_target=lambda a, y: _log1m(a) - _log(a),
    probabilities=True,
)

# log-likelihood: C_x = −Σ_j y_j ln a_j (= −ln a_y for a one-hot y), ∇_a C_x = −y / a;
# with the same safeguards: ln a floored at −100, a at ε in the denominator.
LOG_LIKELIHOOD = Cost(
    "log_likelihood",
    fn=lambda a, y: -y * _log(a),
    grad=lambda a, y: -y / torch.clamp(a, min=EPS),
    grad_target=lambda a, y: -_log(a),
    probabilities=True,
)

# cross-entropy of a = σ(z): C_x = Σ_j [softplus(z_j) − y_j z_j] (the same value,
# without ln 0 when σ(z) rounds to 0 or 1). BP1 in closed form: δ^L = σ(z) − y.
CROSS_ENTROPY_LOGITS = Cost(
    "cross_entropy",
    fn=lambda z, y: softplus(z) - y * z,
    grad=lambda z, y: torch.sigmoid(z) - y,
    grad_target=lambda z, y: -z,
    logits=True,
)

# log-likelihood of a = softmax(z): C_x = −Σ_j y_j ln softmax(z)_j
# = (Σ_j y_j) logsumexp(z) − Σ_j y_j z_j. BP1 in closed form:
# δ^L = (Σ_j y_j) softmax(z) − y, which is a − y when y sums to 1 (one-hot or soft).
LOG_LIKELIHOOD_LOGITS = Cost(
    "log_likelihood",
    fn=lambda z, y: -y * torch.log_softmax(z, -1),
    grad=lambda z, y: y.sum(-1, keepdim=True) * torch.softmax(z, -1) - y,
    grad_target=lambda z, y: -torch.log_softmax(z, -1),
    logits=True,
)

COSTS: dict[str, tuple[Cost, Cost | None]] = {  # name -> (on a^L, on z^L)
    "quadratic": (QUADRATIC, None),
    "cross_entropy": (CROSS_ENTROPY, CROSS_ENTROPY_LOGITS),
    "log_likelihood": (LOG_LIKELIHOOD, LOG_LIKELIHOOD_LOGITS),
}


def one_hot(target: Tensor, n_out: int, dtype: torch.dtype) -> Tensor:
    """Class indices (*) as one-hot rows (*, n_out) of ``dtype``; a float target as it is.

    Built by comparison with arange, not F.one_hot, which reads the values (vmap cannot).
    """
    if target.is_floating_point():
        return target
    classes = torch.arange(n_out, device=target.device)
    return (target.long().unsqueeze(-1) == classes).to(dtype)


def get_cost(name: str | Cost, logits: bool = False) -> Cost:
    """Look up a cost by name; ``logits=True`` picks the form that takes z^L."""
    if isinstance(name, Cost):
        return name
    try:
        on_a, on_z = COSTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown cost {name!r}; expected one of {', '.join(COSTS)}"
        ) from None
    if logits and on_z is None:
        raise ValueError(f"the {name} cost has no logits form; use logits=False")
    return on_z if logits else on_a


def cost_bwd(grad_output: Tensor, a: Tensor, target: Tensor, cost: Cost, scale: float,
             reduction: str, need: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂a, ∂C/∂y) of C = scale · Σ_x C_x(a_x, y_x), given ∂(loss)/∂C = grad_output
    (one per position for ``reduction="none"``); ``target`` as saved (indices or rows)."""
    y = one_hot(target, a.shape[-1], a.dtype)
    g = grad_output * scale
    if reduction == "none":  # one upstream gradient per position: (*) -> (*, 1)
        g = g.unsqueeze(-1)
    a32, y32 = _upcast(a, y)  # a, y themselves unless float16/bfloat16
    grad_a = grad_y = None
    if need[0]:
        # C = scale · Σ_x C_x(a_x, y)  →  ∇_a C, BP1's first factor (δ^L for logits)
        grad_a = narrow(g * cost.grad(a32, y32), a.dtype)
    if need[1]:
        # C = scale · Σ_x C_x(a, y_x)  →  ∇_y C (soft targets)
        grad_y = narrow(g * cost.grad_target(a32, y32), y.dtype)
    return grad_a, grad_y


class CostFunction(BPFunction):
    """C = scale · Σ_x C_x(a_x, y_x) (``reduction="sum"``), or the per-position
    scale · C_x (``reduction="none"``); scale = 1/n gives the book's mean.

    Backward: ∂C/∂a = grad_output · scale · ∇_a C_x, the first factor of BP1,
    δ^L = ∇_a C ⊙ σ'(z^L); the output layer's backward supplies ⊙ σ'(z^L). For a
    logits cost the input is z^L and the gradient is δ^L itself (BP1 closed form).

    Batch-first, classes last: ``output`` is (*, C), one row a^L_x per position x;
    ``target`` is the same shape, or class indices (*), saved as they are (8 bytes a
    position, as torch's cross_entropy keeps them) and turned into one-hot rows y where
    the math needs them. The result is a scalar (``"sum"``) or of shape (*) (``"none"``).

    Forward mode (``jvp``): dC = scale · Σ_x (∇_a C_x · da_x + ∇_y C_x · dy_x).

    Precision: a float16/bfloat16 output is upcast and the cost runs in float32, as
    torch's losses compute in float32 for them (ε = 1e-12 is 0 in float16). Under
    ``torch.autocast`` the cost comes back in float32 (torch's losses are on its float32
    list), otherwise in the output's dtype; the gradient comes back in the output's
    dtype, clamped to float16's finite range (±65504) where it overflows, since
    ±inf · σ'(z) = ±inf · 0 would be NaN.
    """

    generate_vmap_rule = True
    autocast = FLOAT32

    @staticmethod
    def forward(
        output: Tensor, target: Tensor, cost: Cost, scale: float, reduction: str = "sum"
    ) -> Tensor:
        y = one_hot(target, output.shape[-1], output.dtype)
        terms = cost.fn(*_upcast(output, y))  # (*, C)
        c = (terms.sum() if reduction == "sum" else terms.sum(-1)) * scale
        return c.to(output.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        a, y, cost, scale, reduction = inputs
        ctx.cost, ctx.scale, ctx.reduction = cost, scale, reduction
        ctx.out_dtype = output.dtype  # float32 under autocast: the jvp must match it
        ctx.save_for_backward(a, y)
        ctx.save_for_forward(a, y)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a, target = ctx.saved_tensors
        return (*cost_bwd(grad_output, a, target, ctx.cost, ctx.scale, ctx.reduction,
                          ctx.needs_input_grad), None, None, None)

    @staticmethod
    def jvp(ctx: Any, da, dy, _dcost, _dscale, _dreduction) -> Tensor:
        a, target = ctx.saved_tensors
        a32, y32 = _upcast(a, one_hot(target, a.shape[-1], a.dtype))
        dC = torch.zeros_like(a32)  # dC_x's terms, (*, C)
        if da is not None:
            dC = dC + ctx.cost.grad(a32, y32) * da
        if dy is not None:
            dC = dC + ctx.cost.grad_target(a32, y32) * dy
        dC = (dC.sum() if ctx.reduction == "sum" else dC.sum(-1)) * ctx.scale
        return dC.to(ctx.out_dtype)


def _upcast(a: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(a, y) in float32 when ``a`` is float16/bfloat16: the cost's math runs there."""
    return (a.float(), y.float()) if a.dtype in LOW_PRECISION else (a, y)


cost = CostFunction.apply

__all__ = ["COSTS", "CROSS_ENTROPY", "CROSS_ENTROPY_LOGITS", "Cost", "CostFunction", "EPS",
           "LOG_FLOOR", "LOG_LIKELIHOOD", "LOG_LIKELIHOOD_LOGITS", "QUADRATIC", "cost",
           "get_cost", "one_hot"]
