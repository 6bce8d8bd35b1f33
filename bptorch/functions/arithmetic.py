"""Elementwise arithmetic that computes: the quotient (``div``) and the pointwise functions
a model's forward writes by hand (``exp``, ``log``, ``sqrt``, ``rsqrt``, ``pow`` by a
number, ``abs``, ``clamp``), each with its backward written out.

The quotient. For c = x / y (broadcast), dc = dx / y − x dy / y², so, given δ = ∂C/∂c,

    ∂C/∂x = δ / y,      ∂C/∂y = −δ x / y²,

each summed back to its operand's shape over the dims broadcasting added or stretched
(:func:`~bptorch.functions.products.reduce_to`, the gradient of a broadcast). Either
operand may be a Python number, which takes no gradient: ``x / 2`` and ``2 / x``
(torch's ``__rdiv__``).

A pointwise function. For a = f(x), elementwise, the Jacobian is diagonal, so
∂C/∂x = δ ⊙ f'(x): the ``⊙ σ'(z)`` factor of BP1/BP2, with f in σ's place. Each f saves
what makes f' cheapest, as the activations do:

    f                 f'                               saves
    exp x             e^x = a                          a
    ln x              1 / x                            x
    √x                1 / (2√x) = 1 / (2a)             a
    1/√x              −½ x^(−3/2) = −½ a³              a
    x^p (p a number)  p x^(p−1)   (p = 0: 0)           x
    |x|               sgn x       (0 at x = 0, torch's subgradient)   x
    clamp(x, lo, hi)  1 where lo < x < hi, else 0 (0 at the bounds themselves,
                      torch's convention at the kinks)  x

``neg`` and subtraction only flip signs and add: their backward moves numbers
(``routing._MOVES``), as ``+`` does.

Every backward is differentiable torch ops (double backward, gradgradcheck). Autocast:
none of these is on torch's lower-precision list; exp, log, rsqrt and pow are on its CUDA
float32 list (run in float32 there, as torch's), the rest run in their inputs' dtype.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from .base import FLOAT32, BPFunction
from .products import reduce_to

Need = tuple[bool, ...]
Number = int | float | bool


# ---------------------------------------------------------------- the quotient
def div_fwd(x: Tensor | Number, y: Tensor | Number) -> Tensor:
    """c = x / y, broadcast (one of them may be a Python number)."""
    return torch.div(x, y)


def div_bwd(delta: Tensor, x: Tensor | Number, y: Tensor | Number,
            need: Need) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂x, ∂C/∂y) of c = x / y, given δ = ∂C/∂c (a number takes no gradient)."""
    grad_x = grad_y = None
    if need[0] and isinstance(x, Tensor):
        # c = x / y  →  ∂C/∂x = δ / y, summed to x's shape
        grad_x = reduce_to(delta / y, x.shape)
    if need[1] and isinstance(y, Tensor):
        # c = x / y  →  ∂C/∂y = −δ x / y², summed to y's shape
        grad_y = reduce_to(-delta * x / (y * y), y.shape)
    return grad_x, grad_y


class DivFunction(BPFunction):
    """c = x / y, broadcast; x or y may be a Python number (not both).

    Backward: ∂C/∂x = δ / y and ∂C/∂y = −δ x / y², each summed back to its operand's
    shape (:func:`div_bwd`). Saves x and y (a number stays on ctx): each gradient reads
    both. Forward mode (``jvp``): dc = dx / y − x dy / y².
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor | Number, other: Tensor | Number) -> Tensor:
        return div_fwd(input, other)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, y = inputs
        ctx.numbers = tuple(None if isinstance(v, Tensor) else v for v in (x, y))
        saved = tuple(v if isinstance(v, Tensor) else None for v in (x, y))
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def _operands(ctx: Any) -> tuple:
        x, y = ctx.saved_tensors
        nx, ny = ctx.numbers
        return (nx if x is None else x), (ny if y is None else y)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, y = DivFunction._operands(ctx)
        return div_bwd(grad_output, x, y, ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx: Any, dx, dy) -> Tensor:
        x, y = DivFunction._operands(ctx)
        shape = torch.broadcast_shapes(getattr(x, "shape", ()), getattr(y, "shape", ()))
        dc = torch.zeros((), dtype=torch.result_type(x, y), device=_device(x, y))
        if dx is not None:
            dc = dc + dx / y  # dx / y
        if dy is not None:
            dc = dc - x * dy / (y * y)  # − x dy / y²
        return dc.expand(shape)


def _device(*values: Any) -> torch.device:
    return next(v.device for v in values if isinstance(v, Tensor))


# ---------------------------------------------------------------- pointwise functions
class Pointwise(NamedTuple):
    """a = f(x) and its derivative: ``fn(x, p, q)``; ``prime(x_or_a, p, q)`` = f' from what
    ``saves`` names ("x" or "a"); p, q are f's number arguments (pow's exponent, clamp's
    bounds)."""

    fn: Callable[..., Tensor]
    prime: Callable[..., Tensor]
    saves: str


def _pow_prime(x: Tensor, p: Number, q: Any) -> Tensor:
    if p == 0:
        return torch.zeros_like(x)  # x⁰ = 1: no slope (p x^(p−1) would be 0/0 at x = 0)
    return p * x.pow(p - 1)  # d x^p = p x^(p−1)


def _rpow_prime(a: Tensor, c: Number, q: Any) -> Tensor:
    if c > 0:
        return a * math.log(c)  # d c^x = c^x ln c = a ln c
    # c = 0: 0^x is 1 at x = 0 and 0 above, flat there (torch's convention); c < 0: NaN
    return torch.full_like(a, 0.0 if c == 0 else math.nan)


def _clamp_prime(x: Tensor, lo: Number | None, hi: Number | None) -> Tensor:
    inside = torch.ones_like(x, dtype=torch.bool)
    if lo is not None:
        inside = inside & (x > lo)  # at the bound itself: 0, as torch's
    if hi is not None:
        inside = inside & (x < hi)
    return inside.to(x.dtype)


POINTWISE: dict[str, Pointwise] = {
    "exp": Pointwise(lambda x, p, q: torch.exp(x), lambda a, p, q: a, "a"),  # (e^x)' = e^x
    "log": Pointwise(lambda x, p, q: torch.log(x), lambda x, p, q: 1 / x, "x"),  # (ln x)' = 1/x
    # (√x)' = 1 / (2√x)
    "sqrt": Pointwise(lambda x, p, q: torch.sqrt(x), lambda a, p, q: 1 / (2 * a), "a"),
    # (x^(−½))' = −½ x^(−3/2) = −½ a³
    "rsqrt": Pointwise(lambda x, p, q: torch.rsqrt(x), lambda a, p, q: -0.5 * a * a * a, "a"),
    "pow": Pointwise(lambda x, p, q: torch.pow(x, p), _pow_prime, "x"),
    # a = c^x for a Python number c (`2 ** x`, torch.pow(2, x)): a' = a ln c
    "rpow": Pointwise(lambda x, p, q: torch.pow(p, x), _rpow_prime, "a"),
    "abs": Pointwise(lambda x, p, q: torch.abs(x), lambda x, p, q: torch.sgn(x), "x"),
    "clamp": Pointwise(lambda x, p, q: torch.clamp(x, p, q), _clamp_prime, "x"),
}


FLOAT32_ON_CUDA = {"exp", "log", "rsqrt", "pow", "rpow"}  # torch's CUDA autocast float32 list


class PointwiseFunction(BPFunction):
    """a = f(x), elementwise, for f in :data:`POINTWISE` (``name``), with f's number
    arguments p, q (pow's exponent; clamp's min and max).

    Backward: ∂C/∂x = δ ⊙ f'(x), the diagonal Jacobian's BP1/BP2 factor. Saves x or a,
    whichever f' reads (exp, sqrt and rsqrt keep a; the module doc has the table).
    Forward mode (``jvp``): da = f'(x) ⊙ dx.
    """

    generate_vmap_rule = True

    @classmethod
    def autocast_policy(cls, device_type: str, args: tuple) -> str | None:
        return FLOAT32 if device_type == "cuda" and args[1] in FLOAT32_ON_CUDA else None

    @staticmethod
    def forward(input: Tensor, name: str, p: Any = None, q: Any = None) -> Tensor:
        return POINTWISE[name].fn(input, p, q)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, name, p, q = inputs
        ctx.f, ctx.p, ctx.q = POINTWISE[name], p, q
        saved = output if ctx.f.saves == "a" else x
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (saved,) = ctx.saved_tensors
        # a = f(x)  →  ∂C/∂x = δ ⊙ f'(x)   (BP1/BP2's ⊙ σ'(z), f in σ's place)
        grad_input = grad_output * ctx.f.prime(saved, ctx.p, ctx.q)
        return grad_input, None, None, None

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, _dname, _dp, _dq) -> Tensor:
        (saved,) = ctx.saved_tensors
        return dx * ctx.f.prime(saved, ctx.p, ctx.q)  # da = f'(x) ⊙ dx


div = DivFunction.apply
pointwise = PointwiseFunction.apply

__all__ = ["FLOAT32_ON_CUDA", "POINTWISE", "DivFunction", "Pointwise", "PointwiseFunction",
           "div", "div_bwd", "div_fwd", "pointwise"]


# ---------------------------------------------------------------- the larger and the smaller
# c = max(x, y) elementwise (broadcast) picks one operand per element: c = x where x > y,
# y where y > x. So dc = dx there and dc = dy here, and given δ = ∂C/∂c
#
#     ∂C/∂x = δ ⊙ [x > y],    ∂C/∂y = δ ⊙ [y > x],
#
# at a tie (x = y, the kink) δ/2 to each: torch's subgradient, the mean of the one-sided
# slopes. min(x, y) is the same with < for >. Each summed back to its operand's shape
# (reduce_to), as the quotient's.
def extremum_bwd(delta: Tensor, x: Tensor, y: Tensor, larger: bool,
                 need: Need) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂x, ∂C/∂y) of c = max(x, y) (``larger``) or min(x, y), given δ = ∂C/∂c."""
    x_wins = (x > y) if larger else (x < y)  # c = x there
    tie = x == y  # c = x = y: half of δ to each
    half = delta * 0.5
    grad_x = grad_y = None
    if need[0]:
        # c = x where x wins → ∂C/∂x = δ there, δ/2 at a tie, 0 where y wins
        grad_x = reduce_to(torch.where(x_wins, delta, torch.where(tie, half, 0.0)), x.shape)
    if need[1]:
        # c = y where y wins → ∂C/∂y = δ there, δ/2 at a tie, 0 where x wins
        y_wins = ~(x_wins | tie)
        grad_y = reduce_to(torch.where(y_wins, delta, torch.where(tie, half, 0.0)), y.shape)
    return grad_x, grad_y


class ExtremumFunction(BPFunction):
    """c = max(x, y) (``larger``) or min(x, y), elementwise, broadcast, two tensors.

    Backward: δ to the operand that was picked, δ/2 to each at a tie, summed back to each
    shape (:func:`extremum_bwd`). Saves x and y: which one was picked is read from both.
    Forward mode (``jvp``): dc = dx where x was picked, dy where y was, the mean at a tie.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, other: Tensor, larger: bool) -> Tensor:
        return torch.maximum(input, other) if larger else torch.minimum(input, other)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, y, ctx.larger = inputs
        ctx.save_for_backward(x, y)
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, y = ctx.saved_tensors
        return (*extremum_bwd(grad_output, x, y, ctx.larger, ctx.needs_input_grad), None)

    @staticmethod
    def jvp(ctx: Any, dx, dy, _dlarger) -> Tensor:
        x, y = ctx.saved_tensors
        shape = torch.broadcast_shapes(x.shape, y.shape)
        x_wins = (x > y) if ctx.larger else (x < y)
        tie = x == y
        w_x = torch.where(x_wins, 1.0, torch.where(tie, 0.5, 0.0)).to(x.dtype)  # ∂c/∂x
        dc = torch.zeros((), dtype=x.dtype, device=x.device)
        if dx is not None:
            dc = dc + w_x * dx
        if dy is not None:
            dc = dc + (1 - w_x) * dy  # ∂c/∂y = 1 − ∂c/∂x
        return dc.expand(shape)


extremum = ExtremumFunction.apply
__all__ += ["ExtremumFunction", "extremum", "extremum_bwd"]
