"""Scaled dot-product attention, with the backward written out.

For one query row q_i against the S key rows k_j and value rows v_j:

    s_ij = scale · q_i · k_j + b_ij        (b: the additive mask, −∞ where masked)
    p_ij = e^{s_ij} / Σ_j' e^{s_ij'}       (softmax over the keys of row i)
    a_ij = p_ij m_ij                       (m: the dropout mask, 0 or 1/(1 − p); else 1)
    o_i  = Σ_j a_ij v_j

In matrices, batch-first (Q (*, L, E), K (*, S, E), V (*, S, Ev)), with δ = ∂C/∂O:

    S = scale · Q Kᵀ + B,  P = softmax(S),  A = P ⊙ M,  O = A V
    dV = Aᵀ dO                        (BP4's analogue: A plays a^{l−1}, V the weight)
    dA = dO Vᵀ  (+ ∂C/∂A when the weights are an output too)
    dP = dA ⊙ M                       (dropout: the same mask as the forward)
    dS = P ⊙ (dP − rowsum(dP ⊙ P))    (the softmax Jacobian diag(p) − p pᵀ, row by row)
    dQ = dS K · scale,  dK = dSᵀ Q · scale,  dB = dS

dS is δ for the scores, the softmax's own BP1: its Jacobian is not diagonal, so each row's
δ loses the component along p, ``rowsum(dP ⊙ P)``.

Rows whose every key is masked (every b_ij = −∞) have no softmax; as torch's
``scaled_dot_product_attention`` (2.5+), their P row is 0, so their output row is 0 and
they pass no gradient to Q, K, V. Never NaN.

What is saved for backward, two ways:

* default: Q, K, V, the mask B and P (L·S per head; without dropout P is the returned A
  itself, so keeping it costs no copy). The backward then needs no Q Kᵀ and no exp.
* ``recompute=True``: Q, K, V, B and the row log-sum-exp ``lse`` (L per head) only; the
  backward recomputes P = exp(scale · Q Kᵀ + B − lse), one matmul and one exp, as
  flash attention does. It keeps L per head instead of L·S.

The dropout mask M, drawn by the caller with torch's RNG, is an input and saved in both.
P saved in the forward is a constant to autograd: when the backward itself is
differentiated (``create_graph=True``) it recomputes P from Q, K and B with differentiable
ops, so double backward sees P's dependence on them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LOW_PRECISION, LOWER, BPFunction, moved


# ---------------------------------------------------------------- the reference pair
def scores(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """S = scale · Q Kᵀ + B, (*, L, S)."""
    s = (q * scale) @ k.transpose(-2, -1)
    return s + bias if bias is not None else s


def safe_softmax(s: Tensor) -> tuple[Tensor, Tensor]:
    """(P, lse): P = softmax(S) over the last axis with fully masked rows (all −∞) set to 0,
    and lse = log Σ_j e^{s_ij} (0 for those rows, so that exp(S − lse) = 0 there too).

    The row max is subtracted for stability (softmax is shift-invariant, so it is
    detached); a fully masked row's max is −∞, replaced by 0 so no −∞ − (−∞) occurs.
    """
    m = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    empty = total == 0
    total = torch.where(empty, torch.ones_like(total), total)
    return e / total, m + torch.log(total)


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None,
                  drop: Tensor | None, scale: float, want_lse: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(O, A, P, lse) of O = (softmax(scale · Q Kᵀ + B) ⊙ M) V, outside autograd.

    The same P as :func:`safe_softmax` in fewer passes: torch's fused softmax, or, when
    the row log-sum-exp is wanted, P = exp(S − lse); fully masked rows (NaN from
    −∞ − (−∞)) are set to 0 and their lse to 0. lse is None unless ``want_lse``.
    """
    s = scores(q, k, bias, scale)
    if s.is_cuda and s.dtype in LOW_PRECISION:
        s = s.float()  # the softmax in float32 on CUDA, as torch's autocast puts it
    lse = None
    if want_lse:
        lse = torch.logsumexp(s, -1, keepdim=True)
        if bias is not None:  # only a mask can empty a row
            lse = lse.masked_fill_(torch.isinf(lse), 0.0)
        p = torch.exp(s - lse)
    else:
        p = torch.softmax(s, -1)
        if bias is not None:
            p = p.nan_to_num_(0.0)
    a = p * drop if drop is not None else p
    return a.to(v.dtype) @ v, a, p, lse


def attention_bwd(grad_o: Tensor | None, grad_a: Tensor | None, q: Tensor, k: Tensor,
                  v: Tensor, p: Tensor, drop: Tensor | None, scale: float,
                  need: tuple[bool, bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """(dQ, dK, dV, dB) from dO = ∂C/∂O and dA = ∂C/∂A (either may be None: no gradient)."""
    need_q, need_k, need_v, need_b = need
    p = p.to(q.dtype)  # P in float32 on CUDA under autocast: back to the matmuls' dtype
    if grad_a is not None:
        grad_a = grad_a.to(q.dtype)
    a = p * drop if drop is not None else p
    dq = dk = dv = db = None
    if need_v and grad_o is not None:
        dv = a.transpose(-2, -1) @ grad_o  # O = A V  →  dV = Aᵀ dO
    if not (need_q or need_k or need_b):
        return dq, dk, dv, db
    da = grad_o @ v.transpose(-2, -1) if grad_o is not None else None  # O = A V  →  dA = dO Vᵀ
    if grad_a is not None:
        da = grad_a if da is None else da + grad_a
    if da is None:
        return dq, dk, dv, db
    dp = da * drop if drop is not None else da  # A = P ⊙ M  →  dP = dA ⊙ M
    # P = softmax(S)  →  dS = P ⊙ (dP − rowsum(dP ⊙ P)), the softmax's BP1
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    if need_q:
        dq = (ds @ k) * scale  # S = scale · Q Kᵀ + B  →  dQ = dS K · scale
    if need_k:
        dk = (ds.transpose(-2, -1) @ q) * scale  # S = scale · Q Kᵀ + B  →  dK = dSᵀ Q · scale
    if need_b:
        db = ds  # S = scale · Q Kᵀ + B  →  dB = dS
    return dq, dk, dv, db


def _sum_to(t: Tensor | None, shape: torch.Size) -> Tensor | None:
    """A gradient summed over the axes its input was broadcast along."""
    return t if t is None or t.shape == shape else t.sum_to_size(shape)


class AttentionFunction(BPFunction):
    """O = (softmax(scale · Q Kᵀ + B) ⊙ M) V, returned with A = softmax(·) ⊙ M and a third,
    non-differentiable output that backward keeps (the row lse with ``recompute``, P with
    dropout, else an empty tensor).

    Backward (δ = ∂C/∂O, plus ∂C/∂A when A is used): dV = Aᵀ δ; dA = δ Vᵀ (+ ∂C/∂A);
    dP = dA ⊙ M; dS = P ⊙ (dP − rowsum(dP ⊙ P)); dQ = dS K·scale; dK = dSᵀ Q·scale;
    dB = dS (summed to B's shape).

    Batch-first: query (*, L, E), key (*, S, E), value (*, S, Ev), bias B (additive,
    broadcastable to (*, L, S), −∞ where masked) or None, drop M (*, L, S) or None; the
    leading dims of the three broadcast as in matmul. ``recompute=True`` saves the row
    log-sum-exp instead of P and recomputes P in backward (see the module docstring).
    Under ``torch.autocast`` the matmuls run in the autocast dtype (the softmax in float32
    on CUDA), as torch's.
    """

    autocast = LOWER

    @staticmethod
    def forward(query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None,
                drop: Tensor | None, scale: float, recompute: bool = False
                ) -> tuple[Tensor, Tensor, Tensor]:
        o, a, p, lse = attention_fwd(query, key, value, bias, drop, scale, want_lse=recompute)
        # the third output is what backward keeps besides Q, K, V when it is not A itself:
        # the row lse (recompute=True), or P (dropout: A = P ⊙ M is not P); else empty
        if recompute:
            return o, a, lse
        return o, a, p if drop is not None else query.new_empty(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        query, key, value, bias, drop, scale, recompute = inputs
        _o, a, aux = output
        ctx.mark_non_differentiable(aux)
        ctx.set_materialize_grads(False)  # an unused A (need_weights=False) sends None
        ctx.scale, ctx.recompute = scale, recompute
        # recompute: lse (L per row); else P, which without dropout is the output A itself
        saved = aux if recompute or drop is not None else a
        ctx.save_for_backward(query, key, value, bias, drop, saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, grad_weights: Tensor | None, _grad_aux):
        q, k, v, bias, drop, saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: P as a differentiable function of Q, K, B
            p, _lse = safe_softmax(scores(q, k, bias, ctx.scale))
        elif ctx.recompute:
            p = torch.exp(scores(q, k, bias, ctx.scale) - saved)  # P = exp(S − lse)
        else:
            p = saved
        need = ctx.needs_input_grad
        dq, dk, dv, db = attention_bwd(grad_output, grad_weights, q, k, v, p, drop, ctx.scale,
                                       (need[0], need[1], need[2], need[3]))
        db = _sum_to(db, bias.shape) if db is not None else None
        return _sum_to(dq, q.shape), _sum_to(dk, k.shape), _sum_to(dv, v.shape), db, \
            None, None, None


# ---------------------------------------------------------------- masks as additive biases
def causal_bias(L: int, S: int, like: Tensor) -> Tensor:
    """(L, S) additive mask of torch's is_causal: query i sees keys j ≤ i (top-left)."""
    keep = torch.ones(L, S, dtype=torch.bool, device=like.device).tril()
    return bool_to_bias(keep, like.dtype)


def bool_to_bias(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True: take part) as an additive one: 0 where True, −∞ where False."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
        ~keep, float("-inf"))


__all__ = ["AttentionFunction", "attention_bwd", "attention_fwd", "bool_to_bias",
           "causal_bias", "safe_softmax", "scores"]

# moved out of this file (one release): the input checks
__getattr__ = moved(__name__, {"check_attention": "bptorch._checks"})
