"""The costs C(a^L, y) and their gradients ∇_a C, the first factor of BP1.

With the book's scaling, a cost is a sum over the outputs of one example and a
mean over the batch: C = (1/N) Σ_x C_x. Each :class:`Cost` pairs ``fn`` (the sum
of C_x over the rows) with ``grad`` (∇_a C_x, one row per example), as
Nielsen's cost classes pair ``fn`` with ``delta``.

The two *logits* forms take z^L instead of a^L and fold the output activation
into the cost. Their gradient is BP1 in closed form, δ^L = ∇_a C ⊙ σ'(z^L) = a − y:
the σ'(z^L) of the output layer cancels, which is the cure for the slow learning
of saturated output neurons the seed ends on. They stay finite at any |z|.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn.functional import softplus

from .._checks import one_hot


@dataclass(frozen=True)
class Cost:
    """One cost: value, gradient in the output and gradient in the target."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]  # Σ_x C_x (a scalar)
    grad: Callable[[Tensor, Tensor], Tensor]  # ∇_a C_x per row; for logits forms, δ^L
    grad_target: Callable[[Tensor, Tensor], Tensor]  # ∇_y C_x per row
    logits: bool = False  # takes z^L rather than a^L


# quadratic: C_x = ½‖a − y‖², ∇_a C_x = a − y.
QUADRATIC = Cost(
    "quadratic",
    fn=lambda a, y: 0.5 * ((a - y) ** 2).sum(),
    grad=lambda a, y: a - y,
    grad_target=lambda a, y: y - a,
)

# cross-entropy: C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)],
# ∇_a C_x = (a − y) / (a(1 − a)). xlogy gives 0·ln 0 = 0, as the book's nan_to_num.
CROSS_ENTROPY = Cost(
    "cross_entropy",
    fn=lambda a, y: -(torch.xlogy(y, a) + torch.xlogy(1 - y, 1 - a)).sum(),
    grad=lambda a, y: (a - y) / (a * (1 - a)),
    grad_target=lambda a, y: torch.log1p(-a) - torch.log(a),
)

# log-likelihood: C_x = −Σ_j y_j ln a_j (= −ln a_y for a one-hot y), ∇_a C_x = −y / a.
LOG_LIKELIHOOD = Cost(
    "log_likelihood",
    fn=lambda a, y: -torch.xlogy(y, a).sum(),
    grad=lambda a, y: -y / a,
    grad_target=lambda a, y: -torch.log(a),
)

# cross-entropy of a = σ(z): C_x = Σ_j [softplus(z_j) − y_j z_j] (the same value,
# without ln 0 when σ(z) rounds to 0 or 1). BP1 in closed form: δ^L = σ(z) − y.
CROSS_ENTROPY_LOGITS = Cost(
    "cross_entropy",
    fn=lambda z, y: (softplus(z) - y * z).sum(),
    grad=lambda z, y: torch.sigmoid(z) - y,
    grad_target=lambda z, y: -z,
    logits=True,
)


# log-likelihood of a = softmax(z): C_x = (Σ_j y_j) logsumexp(z) − Σ_j y_j z_j.
# BP1 in closed form: δ^L = (Σ_j y_j) softmax(z) − y, which is a − y for a one-hot y.
def _ll_logits_fn(z: Tensor, y: Tensor) -> Tensor:
    return (y.sum(-1) * torch.logsumexp(z, -1)).sum() - (y * z).sum()


def _ll_logits_grad(z: Tensor, y: Tensor) -> Tensor:
    return y.sum(-1, keepdim=True) * torch.softmax(z, -1) - y


LOG_LIKELIHOOD_LOGITS = Cost(
    "log_likelihood",
    fn=_ll_logits_fn,
    grad=_ll_logits_grad,
    grad_target=lambda z, y: torch.logsumexp(z, -1, keepdim=True) - z,
    logits=True,
)

COSTS: dict[str, tuple[Cost, Cost | None]] = {  # name -> (on a^L, on z^L)
    "quadratic": (QUADRATIC, None),
    "cross_entropy": (CROSS_ENTROPY, CROSS_ENTROPY_LOGITS),
    "log_likelihood": (LOG_LIKELIHOOD, LOG_LIKELIHOOD_LOGITS),
}


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


class CostFunction(Function):
    """C = scale · Σ_x C_x(a_x, y_x), with scale = 1/N for the book's batch mean.

    Backward: ∂C/∂a = grad_output · scale · ∇_a C_x, the first factor of BP1,
    δ^L = ∇_a C ⊙ σ'(z^L); the output layer's backward supplies ⊙ σ'(z^L). For a
    logits cost the input is z^L and the gradient is δ^L itself (BP1 closed form).

    Batch-first: ``output`` is (N, n_L), one row per example; ``target`` is the same
    shape, or class indices (N,), saved as they are (8 bytes a row, as torch's
    cross_entropy keeps them) and turned into one-hot rows y where the math needs them.

    Forward mode (``jvp``): dC = scale · Σ_x (∇_a C_x · da_x + ∇_y C_x · dy_x).
    Under ``torch.autocast`` a float16/bfloat16 output is upcast: the cost and its
    reductions run in float32, and the gradient comes back in the output's dtype.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(output: Tensor, target: Tensor, cost: Cost, scale: float) -> Tensor:
        y = one_hot(target, output.shape[-1], output.dtype)
        return cost.fn(*_upcast(output, y, _autocast_upcast(output))) * scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        a, y, cost, scale = inputs
        ctx.cost, ctx.scale = cost, scale
        ctx.upcast = _autocast_upcast(a)  # backward runs outside autocast: remember it
        ctx.save_for_backward(a, y)
        ctx.save_for_forward(a, y)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a, target = ctx.saved_tensors
        y = one_hot(target, a.shape[-1], a.dtype)
        cost, g = ctx.cost, grad_output * ctx.scale
        a32, y32 = _upcast(a, y, ctx.upcast)  # a, y themselves unless autocast is on
        grad_a = grad_y = None
        if ctx.needs_input_grad[0]:
            # ∇_a C (BP1's first factor), or δ^L for logits
            grad_a = (g * cost.grad(a32, y32)).to(a.dtype)
        if ctx.needs_input_grad[1]:
            grad_y = (g * cost.grad_target(a32, y32)).to(y.dtype)
        return grad_a, grad_y, None, None

    @staticmethod
    def jvp(ctx: Any, da, dy, _dcost, _dscale) -> Tensor:
        a, target = ctx.saved_tensors
        a32, y32 = _upcast(a, one_hot(target, a.shape[-1], a.dtype), ctx.upcast)
        dC = torch.zeros((), dtype=a32.dtype, device=a.device)
        if da is not None:
            dC = dC + (ctx.cost.grad(a32, y32) * da).sum()
        if dy is not None:
            dC = dC + (ctx.cost.grad_target(a32, y32) * dy).sum()
        return dC * ctx.scale


def _autocast_upcast(a: Tensor) -> bool:
    """True under torch.autocast for a float16/bfloat16 ``a``: the cost runs in float32."""
    return a.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(
        a.device.type
    )


def _upcast(a: Tensor, y: Tensor, upcast: bool) -> tuple[Tensor, Tensor]:
    return (a.float(), y.float()) if upcast else (a, y)


cost = CostFunction.apply
