"""The p-norm of a vector (``torch.linalg.vector_norm``, ``torch.norm``) and the vector
scaled to unit norm (``F.normalize``), each with its backward written out.

The norm. For n = ‖x‖_p = (Σ_i |x_i|^p)^(1/p) over the reduced dims (p ≥ 1, finite),

    ∂n/∂x_i = (1/p) (Σ_j |x_j|^p)^(1/p − 1) · p |x_i|^(p−1) sgn x_i
            = sgn x_i |x_i|^(p−1) / n^(p−1),

so, given δ = ∂C/∂n (one number per reduced vector, broadcast back over its entries),

    ∂C/∂x_i = δ · sgn x_i |x_i|^(p−1) / n^(p−1)      p = 2:  δ · x_i / n,   p = 1:  δ · sgn x_i.

At n = 0 the norm has no derivative (a cone's tip); torch takes 0 there, and so do we.

The unit vector. F.normalize(x, p, dim, eps) is y = x / d with d = max(n, eps), n = ‖x‖_p
along ``dim`` (kept, so d broadcasts over the vector). By the quotient rule and the chain
rule through d and n, with δ = ∂C/∂y,

    ∂C/∂x_j = δ_j / d − [n ≥ eps] · (Σ_i δ_i x_i) / d² · ∂n/∂x_j,

the first term from x in the numerator, the second from x inside d (max(n, eps) passes
the gradient where n ≥ eps, torch's clamp_min convention, and none below: there d = eps
is a constant). For p = 2 and n ≥ eps it reads (δ − y (Σ_i δ_i y_i)) / n: δ with its
component along y taken out, divided by the length, the familiar Jacobian of x/‖x‖.

Both backwards are differentiable torch ops (double backward, gradgradcheck). The norm
saves x and its output n (the derivative reads both); F.normalize saves x and takes n
again in its backward (its class says why). Autocast: torch runs these in their inputs' dtype on the CPU
and in float32 on CUDA (``norm`` is on its float32 list); so do these.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import FLOAT32, BPFunction

Dims = tuple[int, ...] | None


def _kept(t: Tensor, dims: Dims, ndim: int) -> Tensor:
    """A reduced tensor (keepdim=False) with its reduced dims put back as size 1, so it
    broadcasts over the vectors it came from."""
    if dims is None:
        return t.reshape((1,) * ndim)
    for d in sorted(d % ndim for d in dims):
        t = t.unsqueeze(d)
    return t


def norm_prime(x: Tensor, n: Tensor, p: float) -> Tensor:
    """∂n/∂x for n = ‖x‖_p (n kept: broadcast over each vector), 0 where n = 0."""
    if p == 1:
        return torch.sgn(x)  # ∂|x_i|/∂x_i = sgn x_i
    # where n = 0 every x_i = 0, so dividing by 1 there instead gives torch's 0 (and no
    # 0/0 in the double backward)
    n_safe = torch.where(n == 0, torch.ones_like(n), n)
    if p == 2:
        return x / n_safe  # ∂n/∂x_i = x_i / n
    return torch.sgn(x) * x.abs().pow(p - 1) / n_safe.pow(p - 1)  # sgn x |x|^(p−1) / n^(p−1)


# ---------------------------------------------------------------- the norm: reference pair
def vector_norm_fwd(x: Tensor, p: float, dims: Dims, keepdim: bool) -> Tensor:
    """n = (Σ_i |x_i|^p)^(1/p) over ``dims`` (all if None)."""
    return torch.linalg.vector_norm(x, p, dims, keepdim)


def vector_norm_bwd(delta: Tensor, x: Tensor, n: Tensor, p: float, dims: Dims,
                    keepdim: bool) -> Tensor:
    """∂C/∂x of n = ‖x‖_p, given δ = ∂C/∂n (``n`` as the forward returned it)."""
    if not keepdim:
        delta, n = _kept(delta, dims, x.dim()), _kept(n, dims, x.dim())
    # n = ‖x‖_p  →  ∂C/∂x_i = δ · ∂n/∂x_i, δ broadcast over the vector's entries
    return delta * norm_prime(x, n, p)


class VectorNormFunction(BPFunction):
    """n = ‖x‖_p over ``dim`` (a tuple, or None for all), p ≥ 1 finite.

    Backward: ∂C/∂x = δ · sgn x |x|^(p−1) / n^(p−1) (p = 2: δ x / n), 0 where n = 0
    (:func:`vector_norm_bwd`). Saves x and n. Forward mode: dn = Σ_i ∂n/∂x_i dx_i.
    """

    generate_vmap_rule = True
    autocast = {"cuda": FLOAT32}

    @staticmethod
    def forward(input: Tensor, ord: float, dim: Dims, keepdim: bool) -> Tensor:
        return vector_norm_fwd(input, ord, dim, keepdim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, ctx.p, ctx.dims, ctx.keepdim = inputs
        ctx.save_for_backward(x, output)
        ctx.save_for_forward(x, output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, n = ctx.saved_tensors
        return vector_norm_bwd(grad_output, x, n, ctx.p, ctx.dims, ctx.keepdim), None, None, None

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, _dp, _ddim, _dkeep) -> Tensor:
        x, n = ctx.saved_tensors
        kept = n if ctx.keepdim else _kept(n, ctx.dims, x.dim())
        dims = tuple(range(x.dim())) if ctx.dims is None else ctx.dims
        return (norm_prime(x, kept, ctx.p) * dx).sum(dims, keepdim=ctx.keepdim)


# ---------------------------------------------------------------- the unit vector: reference pair
def normalize_fwd(x: Tensor, p: float, dim: int, eps: float) -> Tensor:
    """y = x / max(n, eps), n = ‖x‖_p along ``dim`` (kept)."""
    n = torch.linalg.vector_norm(x, p, (dim,), True)
    return x / n.clamp_min(eps)


def normalize_bwd(delta: Tensor, x: Tensor, p: float, dim: int, eps: float) -> Tensor:
    """∂C/∂x of y = x / max(n, eps), given δ = ∂C/∂y."""
    n = torch.linalg.vector_norm(x, p, (dim,), True)  # n = ‖x‖_p, again (see the class)
    d = n.clamp_min(eps)  # d = max(n, eps)
    # y = x / d, x in the numerator  →  δ / d
    grad_x = delta / d
    # y = x / d, x inside d = max(n, eps), n = ‖x‖_p  →  −(Σ_i δ_i x_i) / d² · [n ≥ eps] ∂n/∂x
    through_d = (delta * x).sum(dim, keepdim=True) / (d * d)
    through_d = torch.where(n >= eps, through_d, torch.zeros_like(through_d))
    return grad_x - through_d * norm_prime(x, n, p)


class NormalizeFunction(BPFunction):
    """y = x / max(‖x‖_p, eps) along ``dim`` (F.normalize), p ≥ 1 finite.

    Backward: ∂C/∂x = δ / d − [n ≥ eps] (Σ δ ⊙ x) / d² · ∂n/∂x, d = max(n, eps)
    (:func:`normalize_bwd`). Saves x only: the backward takes n = ‖x‖_p again (one
    reduction, cheap beside the products), from x, so that under ``create_graph`` the
    double backward sees n as the function of x it is (a saved n would be a constant).
    """

    generate_vmap_rule = True
    autocast = {"cuda": FLOAT32}

    @staticmethod
    def forward(input: Tensor, p: float, dim: int, eps: float) -> Tensor:
        return normalize_fwd(input, p, dim, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, ctx.p, ctx.dim, ctx.eps = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        return normalize_bwd(grad_output, x, ctx.p, ctx.dim, ctx.eps), None, None, None

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, _dp, _ddim, _deps) -> Tensor:
        (x,) = ctx.saved_tensors
        n = torch.linalg.vector_norm(x, ctx.p, (ctx.dim,), True)
        d = n.clamp_min(ctx.eps)
        dn = (norm_prime(x, n, ctx.p) * dx).sum(ctx.dim, keepdim=True)
        dd = torch.where(n >= ctx.eps, dn, torch.zeros_like(dn))
        return dx / d - x * dd / (d * d)  # dy = dx / d − x dd / d²


def finite_order(p: Any) -> bool:
    """Whether these Functions take the order ``p``: a finite number ≥ 1."""
    return (isinstance(p, (int, float)) and not isinstance(p, bool)
            and math.isfinite(p) and p >= 1)


vector_norm = VectorNormFunction.apply

__all__ = ["NormalizeFunction", "VectorNormFunction", "finite_order", "norm_prime",
           "normalize_bwd", "normalize_fwd", "vector_norm", "vector_norm_bwd",
           "vector_norm_fwd"]
