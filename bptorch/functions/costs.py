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

from .base import (FLOAT32, LOW_PRECISION, BPFunction, count_launch, kernel_family, kernel_op,
                   narrow, use_kernel)

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


# ================================================================ torch's losses
# torch.nn.functional's losses under torch's names, each a BP1 written out: the gradient of
# the loss in its input (∇_a C, or δ^L itself where the input is z^L), as the book's costs
# above. torch's layout, not the book's: classes on dim 1, input (N, C) or (N, C, d1, ...),
# or (C,) unbatched.
#
# Class losses (cross_entropy from logits z, nll_loss from log-probabilities x = ln p):
#
#     ℓ_n = −Σ_c q_{n,c} ln p_{n,c},   p_n = softmax(z_n) (cross_entropy) or x_n = ln p_n (nll)
#
# where q is the target made weighted, masked and smoothed (:func:`class_target`): for class
# indices y_n, q_{n,c} = m_n [(1 − ε) w_{y_n} [c = y_n] + (ε/C) w_c] (m_n = 0 where y_n is
# ignore_index, ε the label smoothing, w the class weights, 1 if none); for class
# probabilities, q_{n,c} = w_c ((1 − ε) y_{n,c} + ε/C). The reduction: "none" ℓ_n, "sum"
# Σ_n ℓ_n, "mean" Σ_n ℓ_n / D, D = Σ_n m_n w_{y_n} for indices (the non-ignored count when
# unweighted), D = the number of positions for probabilities, as torch.
#
# BP1: ∂ℓ_n/∂z_{n,c} = (Σ_k q_{n,k}) p_{n,c} − q_{n,c}   (∂ ln p_k/∂z_c = [k = c] − p_c);
#      ∂ℓ_n/∂x_{n,c} = −q_{n,c};  ∂ℓ_n/∂q_{n,c} = −ln p_{n,c}.
# δ = softmax(z) − y when q is one row of probabilities summing to 1, the book's a − y.
#
# Pointwise losses (input x, target y of one shape; ℓ per element, then the reduction,
# "mean" over every element, kl_div's "batchmean" over dim 0): each pairs ℓ with ∂ℓ/∂x and
# ∂ℓ/∂y, as the Cost records above, in :data:`POINTWISE`.


def class_target(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                 label_smoothing: float) -> tuple[Tensor, Tensor]:
    """(q, D): the weighted, masked, smoothed target q of ``input``'s shape (classes on
    dim 1) and the "mean" denominator D (0-d), from class indices or probabilities.

    Plain differentiable torch ops: a probability target's gradient flows through q.
    """
    n_classes = input.shape[1]
    w_shape = [1] * input.dim()
    w_shape[1] = n_classes
    w = weight.reshape(w_shape) if weight is not None else None
    if target.is_floating_point():  # class probabilities, input's shape
        y = target * (1 - label_smoothing) + label_smoothing / n_classes
        q = y * w if w is not None else y
        return q, input.new_tensor(input.numel() // n_classes)
    keep = target != ignore_index  # m_n
    safe = torch.where(keep, target, 0).long().unsqueeze(1)
    classes = torch.arange(n_classes, device=input.device).reshape(w_shape)
    y = (safe == classes).to(input.dtype)  # one-hot, (N, C, ...)
    mask = keep.unsqueeze(1).to(input.dtype)
    w_y = (y * w).sum(1, keepdim=True) if w is not None else torch.ones_like(mask)  # w_{y_n}
    q = (1 - label_smoothing) * w_y * y
    if label_smoothing:
        q = q + (label_smoothing / n_classes) * (w if w is not None else 1.0)
    q = q * mask
    return q, (w_y * mask).sum()


class ClassCostFunction(BPFunction):
    """ℓ_n = −Σ_c q_{n,c} ln p_{n,c} with p = softmax(z) (``from_logits``: cross_entropy)
    or ln p = x (nll_loss); classes on dim 1; reduced as ``reduction`` says, "mean"
    dividing by ``denom`` D (see the section's derivation).

    Saves z (or x) and q; cross_entropy recomputes ln p = z − logsumexp(z) in backward
    (one (N, C) tensor fewer kept than saving p as well).
    """

    generate_vmap_rule = True
    autocast = FLOAT32  # nll_loss, cross_entropy: torch's float32 list

    @staticmethod
    def forward(input: Tensor, q: Tensor, denom: Tensor | None, from_logits: bool,
                reduction: str) -> Tensor:
        log_p = torch.log_softmax(input, 1) if from_logits else input  # ln p
        loss = -(q * log_p).sum(1)  # ℓ_n, (N, d1, ...)
        if reduction == "none":
            return loss
        return loss.sum() / denom if reduction == "mean" else loss.sum()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        z, q, denom, from_logits, reduction = inputs
        ctx.from_logits, ctx.reduction = from_logits, reduction
        ctx.kernel = use_kernel(z)  # bptorch.kernels: the forward's choice, for backward
        ctx.save_for_backward(z, q, denom)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        z, q, denom = ctx.saved_tensors
        g = grad_output  # one per position ("none") or one scalar
        if ctx.reduction == "none":
            g = g.unsqueeze(1)  # (N, d1, ...) -> (N, 1, d1, ...): over the classes
        elif ctx.reduction == "mean":
            # loss.sum() / D → ∂/∂ℓ_n = g / D; every target ignored (D = 0): the loss is
            # 0/0 = NaN, and its gradient 0, as torch's (q = 0 there, so δ is 0 anyway)
            g = torch.where(denom > 0, g / denom, torch.zeros_like(g))
        if (ctx.kernel and ctx.from_logits and not any(ctx.needs_input_grad[1:3])
                and not torch.is_grad_enabled()):  # bptorch.kernels: BP1 fused (file's end)
            return cross_entropy_bwd_triton(g, z, q), None, None, None, None
        log_p = torch.log_softmax(z, 1) if ctx.from_logits else z
        grad_z = grad_q = None
        if ctx.needs_input_grad[0]:
            if ctx.from_logits:
                # ℓ_n = −Σ_c q_c ln softmax(z)_c → BP1: δ = (Σ_k q_k) softmax(z) − q
                delta = q.sum(1, keepdim=True) * log_p.exp() - q
            else:
                delta = -q  # ℓ_n = −Σ_c q_c x_c → BP1: ∂ℓ/∂x = −q
            grad_z = g * delta
        grad_denom = None
        if ctx.needs_input_grad[1]:
            grad_q = g * -log_p  # ℓ_n = −Σ_c q_c ln p_c → ∂ℓ/∂q = −ln p
        if ctx.needs_input_grad[2] and ctx.reduction == "mean":
            # C = Σ_n ℓ_n / D (D = Σ_n w_{y_n}: a class weight's graph) → ∂C/∂D = −C / D
            total = -(q * log_p).sum()
            grad_denom = torch.where(denom > 0, -grad_output * total / (denom * denom),
                                     torch.zeros_like(denom))
        return grad_z, grad_q, grad_denom, None, None


class LogSoftmaxFunction(BPFunction):
    """a = ln softmax(z) = z − logsumexp(z) along ``dim``.

    Backward: ∂a_k/∂z_c = [k = c] − softmax(z)_c, so ∂C/∂z = g − softmax(z) Σ_k g_k.
    Saves its output a: softmax(z) = e^a, no exp of z again.
    """

    generate_vmap_rule = True
    autocast = {"cuda": FLOAT32}  # torch's float32 list on CUDA; on CPU it is on none

    @staticmethod
    def forward(input: Tensor, dim: int) -> Tensor:
        return input - torch.logsumexp(input, dim, keepdim=True)  # a = z − logsumexp(z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (a,) = ctx.saved_tensors
        g = grad_output
        # a = z − logsumexp(z) → ∂C/∂z = g − softmax(z) · Σ_k g_k, softmax(z) = e^a
        return g - a.exp() * g.sum(ctx.dim, keepdim=True), None


@dataclass(frozen=True)
class PointwiseLoss:
    """ℓ(x, y) per element with ∂ℓ/∂x and ∂ℓ/∂y; ``opt`` is the loss's own argument
    (smooth_l1's β, bce_with_logits's pos_weight, kl_div's log_target), None if none."""

    fn: Callable[[Tensor, Tensor, Any], Tensor]
    grad: Callable[[Tensor, Tensor, Any], Tensor]  # ∂ℓ/∂x
    grad_target: Callable[[Tensor, Tensor, Any], Tensor]  # ∂ℓ/∂y


def _smooth_l1(x: Tensor, y: Tensor, beta: float) -> Tensor:
    d = x - y
    return torch.where(d.abs() < beta, 0.5 * d * d / beta, d.abs() - 0.5 * beta)


def _smooth_l1_grad(x: Tensor, y: Tensor, beta: float) -> Tensor:
    d = x - y  # ½d²/β → d/β inside |d| < β; |d| − ½β → sign(d) outside
    return torch.where(d.abs() < beta, d / beta, torch.sign(d))


def _pos_coef(y: Tensor, p: Tensor | None) -> Tensor:
    """1 + (p − 1) y: the weight of softplus(−x) in bce_with_logits (1 without pos_weight)."""
    return 1 + (p - 1) * y if p is not None else torch.ones_like(y)


POINTWISE: dict[str, PointwiseLoss] = {
    # ℓ = (x − y)²
    "mse": PointwiseLoss(lambda x, y, o: (x - y) ** 2,
                         lambda x, y, o: 2 * (x - y), lambda x, y, o: 2 * (y - x)),
    # ℓ = |x − y|; sign(0) = 0, torch's subgradient at the kink
    "l1": PointwiseLoss(lambda x, y, o: (x - y).abs(),
                        lambda x, y, o: torch.sign(x - y), lambda x, y, o: torch.sign(y - x)),
    # ℓ = ½(x − y)²/β for |x − y| < β, else |x − y| − ½β
    "smooth_l1": PointwiseLoss(_smooth_l1, _smooth_l1_grad,
                               lambda x, y, o: -_smooth_l1_grad(x, y, o)),
    # ℓ = −[y ln x + (1 − y) ln(1 − x)], x in [0, 1], with BCELoss's safeguards (above)
    "bce": PointwiseLoss(lambda x, y, o: CROSS_ENTROPY.fn(x, y),
                         lambda x, y, o: CROSS_ENTROPY.grad(x, y),
                         lambda x, y, o: CROSS_ENTROPY.grad_target(x, y)),
    # ℓ = (1 − y) x + (1 + (p − 1) y) softplus(−x)   (= −[p y ln σ(x) + (1 − y) ln(1 − σ(x))])
    # ∂ℓ/∂x = (1 + (p − 1) y) σ(x) − p y  (p = 1: σ(x) − y, δ^L of the logits cost above)
    # ∂ℓ/∂y = −x + (p − 1) softplus(−x)
    "bce_logits": PointwiseLoss(
        lambda x, y, p: (1 - y) * x + _pos_coef(y, p) * softplus(-x),
        lambda x, y, p: _pos_coef(y, p) * torch.sigmoid(x) - (y * p if p is not None else y),
        lambda x, y, p: -x + ((p - 1) * softplus(-x) if p is not None else 0)),
    # ℓ = y (ln y − x) (0 where y = 0), or with log_target e^y (y − x)
    "kl_div": PointwiseLoss(
        lambda x, y, lt: y.exp() * (y - x) if lt else torch.xlogy(y, y) - y * x,
        lambda x, y, lt: -y.exp() if lt else -y,
        lambda x, y, lt: y.exp() * (y - x + 1) if lt else torch.log(y) + 1 - x),
}


class PointwiseCostFunction(BPFunction):
    """ℓ = weight ⊙ loss(x, y) per element, reduced: "none", "sum", or "sum" times
    ``scale`` (1/numel for "mean", 1/N for kl_div's "batchmean", a 0-d 1/Σw for a
    weighted mse or l1 "mean", as torch's).

    Backward, BP1 for an elementwise loss: ∂C/∂x = g · scale · weight ⊙ ∂ℓ/∂x; the
    weights' gradients too, which torch refuses for BCE's (∂C/∂weight = g · scale · loss,
    ∂ℓ/∂pos_weight = y softplus(−x)) and computes for mse's and l1's, through a 0-d
    ``scale`` = 1/Σw that is a tensor of the weight's graph (∂C/∂scale = g · Σ weight ⊙ loss).
    Saves x, y, weight and the loss's own tensor argument (pos_weight): ∂ℓ/∂x needs them.
    """

    generate_vmap_rule = True
    autocast = FLOAT32  # every loss here is on torch's float32 list

    @staticmethod
    def forward(input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None,
                kind: str, opt: Any, reduction: str, scale: float | Tensor) -> Tensor:
        o = pos_weight if kind == "bce_logits" else opt
        loss = POINTWISE[kind].fn(input, target, o)
        if weight is not None:
            loss = loss * weight
        return loss if reduction == "none" else loss.sum() * scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, y, weight, pos_weight, kind, opt, reduction, scale = inputs
        ctx.kind, ctx.opt, ctx.reduction, ctx.scale = kind, opt, reduction, scale
        ctx.save_for_backward(x, y, weight, pos_weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, y, weight, pos_weight = ctx.saved_tensors
        loss = POINTWISE[ctx.kind]
        o = pos_weight if ctx.kind == "bce_logits" else ctx.opt
        g_loss = grad_output if ctx.reduction == "none" else grad_output * ctx.scale
        g = g_loss * weight if weight is not None else g_loss  # ℓ = weight ⊙ loss
        grad_x = grad_y = grad_w = grad_pw = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_x = g * loss.grad(x, y, o)  # BP1: ∂C/∂x = g · ∂ℓ/∂x
        if ctx.needs_input_grad[1]:
            grad_y = g * loss.grad_target(x, y, o)
        if ctx.needs_input_grad[2]:  # ℓ = weight ⊙ loss → ∂C/∂weight = g · loss
            grad_w = g_loss * loss.fn(x, y, o)
        if ctx.needs_input_grad[3]:
            # ℓ = (1 − y) x + (1 + (p − 1) y) softplus(−x) → ∂ℓ/∂p = y · softplus(−x)
            grad_pw = g * y * softplus(-x)
        if ctx.needs_input_grad[7]:  # C = scale · Σ weight ⊙ loss, scale = 1/Σw (mean)
            wl = loss.fn(x, y, o) * weight if weight is not None else loss.fn(x, y, o)
            grad_scale = grad_output * wl.sum()
        return grad_x, grad_y, grad_w, grad_pw, None, None, None, grad_scale


log_softmax_fn = LogSoftmaxFunction.apply

__all__ += ["ClassCostFunction", "LogSoftmaxFunction", "POINTWISE", "PointwiseCostFunction",
            "PointwiseLoss", "class_target", "log_softmax_fn"]


# ---------------------------------------------------------------- Triton kernel
# cross_entropy's BP1 in one launch: softmax, the target's row sum, (Σq) a − q and the
# upstream factor g, per row, where the reference launches about six. Built on first use
# (importing this file imports no triton); tests/test_kernels.py runs it through Triton's
# interpreter against the reference and torch.nn.functional.cross_entropy. The gradient
# with respect to a soft target (−ln p) and double backward take the reference.


def _build_triton_kernels() -> dict[str, Any]:
    """Each kernel's custom op by name (run once, on first use: :func:`base.kernel_family`)."""
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    @triton.jit
    def cross_entropy_bwd_kernel(g_ptr, z_ptr, q_ptr, dz_ptr, C, S, G_PER_ROW: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK: tl.constexpr):
        """One row (n, s) of z (N, C, S), classes strided by S: a = softmax(z),
        δ = (Σ_k q_k) a − q (BP1; a − y for a target summing to 1), ∂C/∂z = g · δ."""
        row = tl.program_id(0).to(tl.int64)
        n, s = row // S, row % S
        cols = tl.arange(0, BLOCK)
        mask = cols < C
        offs = n * C * S + cols * S + s  # z[n, c, s]
        z = tl.load(z_ptr + offs, mask=mask, other=-float("inf")).to(ACC)
        q = tl.load(q_ptr + offs, mask=mask, other=0.0).to(ACC)
        e = tl.exp(z - tl.max(z, 0))  # e^{z − max z}: the stable softmax (0 past the row)
        a = e / tl.sum(e, 0)  # a = softmax(z)
        # ℓ = −Σ_c q_c ln softmax(z)_c  →  BP1: δ = (Σ_k q_k) a − q
        delta = tl.sum(q, 0) * a - q
        if G_PER_ROW:  # reduction "none": one upstream value per row
            g = tl.load(g_ptr + row).to(ACC)
        else:  # "sum"/"mean": one scalar (1/D already in it)
            g = tl.load(g_ptr).to(ACC)
        tl.store(dz_ptr + offs, (g * delta).to(dz_ptr.dtype.element_ty), mask=mask)

    def _fake(g, z, q):
        return torch.empty_like(z)

    @kernel_op("cross_entropy_bwd", _fake)
    def cross_entropy_bwd_op(g: Tensor, z: Tensor, q: Tensor) -> Tensor:
        n, c, s = z.shape
        dz = torch.empty_like(z)
        acc = tl.float64 if z.dtype == torch.float64 else tl.float32
        count_launch("cross_entropy_bwd")
        wrap_triton(cross_entropy_bwd_kernel)[(n * s,)](
            g, z, q, dz, c, s, G_PER_ROW=g.numel() > 1, ACC=acc,
            BLOCK=triton.next_power_of_2(c))
        return dz

    return {"cross_entropy_bwd": cross_entropy_bwd_op}


_triton_kernels = kernel_family(_build_triton_kernels)


def cross_entropy_bwd_triton(g: Tensor, z: Tensor, q: Tensor) -> Tensor:
    """``ClassCostFunction``'s ∂C/∂z for cross_entropy, g · ((Σq) softmax(z) − q), in one
    kernel; g is one scalar (reduction "sum"/"mean") or one value per position ("none")."""
    if z.shape[1] > 65536:  # more classes than one block holds: the reference
        return g * (q.sum(1, keepdim=True) * torch.softmax(z, 1) - q)
    z3 = z.reshape(z.shape[0], z.shape[1], -1).contiguous()  # (N, C, S)
    q3 = q.expand(z.shape).reshape(z3.shape).contiguous()
    g = g.reshape(-1).contiguous() if g.numel() > 1 else g.reshape(1).to(z.dtype)
    return _triton_kernels()["cross_entropy_bwd"](g, z3, q3).view(z.shape)


__all__ += ["cross_entropy_bwd_triton"]
