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

from .base import (LOW_PRECISION, LOWER, BPFunction, count_launch, kernel_family, kernel_op,
                   moved, use_kernel)


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


# ---------------------------------------------------------------- Triton kernels
# The same equations in tiles, as flash attention computes them (bptorch.kernels picks
# them: "triton", or "auto" on CUDA), for scaled_dot_product_attention with no mask or
# the causal one and no dropout; an explicit mask (B is then an (L, S) tensor to read) and
# dropout (M is one) take the reference above, and so do double backward and torch.func.
#
# forward, one program per block of BLOCK_M query rows, the key blocks in turn (the
# "online" softmax: the running row max m and row sum l are rescaled as each block raises
# m, so no L × S tensor is ever formed):
#     S_blk = scale · Q_blk K_jᵀ (−∞ where masked),  m' = max(m, rowmax S_blk),
#     l = l e^{m − m'} + rowsum e^{S_blk − m'},  O_acc = O_acc e^{m − m'} + e^{S_blk − m'} V_j
#     O = O_acc / l,  lse = m + ln l   (saved: L numbers a row instead of P's L·S)
# backward, P recomputed tile by tile from lse, P = exp(S − lse), and
#     D = rowsum(dO ⊙ O)  (= rowsum(dP ⊙ P): dP = dO Vᵀ and O = P V, so Σ_j dP_ij P_ij
#                          = dO_i · Σ_j P_ij v_j = dO_i · O_i, one dot a row, no L × S)
#     dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − D),  dK = dSᵀ Q · scale,  dQ = dS K · scale
# in two kernels: one per key block (dK, dV: sums over the query blocks) and one per query
# block (dQ: a sum over the key blocks), so that no program adds into another's rows.
# Arithmetic in float32 (float64 for float64 inputs); the matmuls' inputs in the tensors'
# dtype (bfloat16 on the tensor cores), their sums in float32. Built on first use
# (importing this file imports no triton); tests/test_kernels2.py runs them through
# Triton's interpreter against the reference and torch's scaled_dot_product_attention.
# (BLOCK_M, BLOCK_N): query rows and key rows a program holds; small under the
# interpreter (its tests then cross several tiles at small shapes). The CUDA choices are
# flash attention's usual starting point, not yet tuned on a GPU.
ATTENTION_BLOCKS = {"cuda": (64, 64), "cpu": (16, 16)}
MAX_HEAD_DIM = 128  # E and Ev up to this in one block (shared memory); larger: the reference


def _build_triton_kernels() -> dict[str, Any]:
    """Each kernel's custom op by name (run once, on first use: :func:`base.kernel_family`)."""
    # the kernels' helpers are this module's globals, not closures: Triton's interpreter and
    # Inductor find the jit functions a kernel calls in the kernel's module globals
    global _load_kv, _load_q_do, _key_end, _recompute_p
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    # the tile loads, the causal bound and P's recomputation that the kernels share
    @triton.jit
    def _load_kv(k_ptr, v_ptr, b, cols, S, E, EV, BLOCK_E: tl.constexpr,
                BLOCK_EV: tl.constexpr):
        """The K (BLOCK_N, BLOCK_E) and V (BLOCK_N, BLOCK_EV) tiles of key rows ``cols`` of
        head b, zeros past S, E and Ev."""
        e, ev = tl.arange(0, BLOCK_E), tl.arange(0, BLOCK_EV)
        k = tl.load(k_ptr + b * S * E + cols[:, None] * E + e[None, :],
                    mask=(cols[:, None] < S) & (e[None, :] < E), other=0.0)
        v = tl.load(v_ptr + b * S * EV + cols[:, None] * EV + ev[None, :],
                    mask=(cols[:, None] < S) & (ev[None, :] < EV), other=0.0)
        return k, v

    @triton.jit
    def _load_q_do(q_ptr, do_ptr, lse_ptr, d_ptr, b, rows, L, E, EV, BLOCK_E: tl.constexpr,
                  BLOCK_EV: tl.constexpr):
        """The Q, dO tiles and the lse, D entries of query rows ``rows`` of head b, zeros past
        L, E and Ev."""
        e, ev = tl.arange(0, BLOCK_E), tl.arange(0, BLOCK_EV)
        q = tl.load(q_ptr + b * L * E + rows[:, None] * E + e[None, :],
                    mask=(rows[:, None] < L) & (e[None, :] < E), other=0.0)
        do = tl.load(do_ptr + b * L * EV + rows[:, None] * EV + ev[None, :],
                     mask=(rows[:, None] < L) & (ev[None, :] < EV), other=0.0)
        lse = tl.load(lse_ptr + b * L + rows, mask=rows < L, other=0.0)
        d = tl.load(d_ptr + b * L + rows, mask=rows < L, other=0.0)
        return q, do, lse, d

    @triton.jit
    def _key_end(S, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
        """One past the last key the query block of this program reads: S, or with the
        causal mask (keys j ≤ i only) no block past the query block's last row."""
        hi = S
        if CAUSAL:
            hi = tl.minimum(S, (tl.program_id(0) + 1) * BLOCK_M)
        return hi

    @triton.jit
    def _recompute_p(q, k, lse, rows, cols, L, S, scale, CAUSAL: tl.constexpr,
                    ACC: tl.constexpr, PREC: tl.constexpr):
        """P = exp(S − lse) of the tile (rows, cols), S = scale · Q Kᵀ; 0 where masked."""
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * scale  # scale·Q Kᵀ
        keep = (rows[:, None] < L) & (cols[None, :] < S)
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        return tl.where(keep, tl.exp(s - lse[:, None]), 0.0)

    @triton.jit
    def attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, L, S, E, EV, scale,
                             CAUSAL: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr):
        """Query rows [m·BLOCK_M, (m+1)·BLOCK_M) of head b: O = softmax(scale · Q Kᵀ) V,
        one key block at a time (online softmax); lse = m + ln l saved for backward."""
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        e, ev = tl.arange(0, BLOCK_E), tl.arange(0, BLOCK_EV)
        q = tl.load(q_ptr + b * L * E + rows[:, None] * E + e[None, :],
                    mask=(rows[:, None] < L) & (e[None, :] < E), other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), ACC)  # running row max of S
        l_i = tl.zeros((BLOCK_M,), ACC)  # running Σ_j e^{s_ij − m}
        acc = tl.zeros((BLOCK_M, BLOCK_EV), ACC)  # running Σ_j e^{s_ij − m} v_j
        for start in range(0, _key_end(S, CAUSAL, BLOCK_M), BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k, v = _load_kv(k_ptr, v_ptr, b, cols, S, E, EV, BLOCK_E, BLOCK_EV)
            s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * scale  # scale·Q Kᵀ
            keep = cols[None, :] < S
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None])  # B = −∞ above the diagonal
            s = tl.where(keep, s, float("-inf"))
            # key 0 is in the first block and never masked, so m is finite from then on
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])  # e^{S − m'}
            alpha = tl.exp(m_i - m_new)  # e^{m − m'}: the old sums rescaled to the new max
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v,
                                                input_precision=PREC).to(ACC)
            m_i = m_new
        o = acc / l_i[:, None]  # O = P V, P = e^{S − m} / l
        tl.store(o_ptr + b * L * EV + rows[:, None] * EV + ev[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < L) & (ev[None, :] < EV))
        tl.store(lse_ptr + b * L + rows, m_i + tl.log(l_i), mask=rows < L)  # lse = m + ln l

    @triton.jit
    def attention_rowdot_kernel(o_ptr, do_ptr, d_ptr, L, EV, ACC: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_EV: tl.constexpr):
        """D = rowsum(dO ⊙ O) for BLOCK_M rows of head b (= rowsum(dP ⊙ P))."""
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        ev = tl.arange(0, BLOCK_EV)
        offs = b * L * EV + rows[:, None] * EV + ev[None, :]
        mask = (rows[:, None] < L) & (ev[None, :] < EV)
        o = tl.load(o_ptr + offs, mask=mask, other=0.0).to(ACC)
        do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(ACC)
        tl.store(d_ptr + b * L + rows, tl.sum(do * o, 1), mask=rows < L)

    @triton.jit
    def attention_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, d_ptr, dk_ptr, dv_ptr,
                                  L, S, E, EV, scale, CAUSAL: tl.constexpr, ACC: tl.constexpr,
                                  PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
                                  BLOCK_EV: tl.constexpr):
        """Key rows [n·BLOCK_N, (n+1)·BLOCK_N) of head b: dV = Pᵀ dO and dK = dSᵀ Q · scale,
        summed over the query blocks, P recomputed from lse."""
        b = tl.program_id(1).to(tl.int64)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        e, ev = tl.arange(0, BLOCK_E), tl.arange(0, BLOCK_EV)
        k, v = _load_kv(k_ptr, v_ptr, b, cols, S, E, EV, BLOCK_E, BLOCK_EV)
        dk = tl.zeros((BLOCK_N, BLOCK_E), ACC)
        dv = tl.zeros((BLOCK_N, BLOCK_EV), ACC)
        lo = 0
        if CAUSAL:  # rows i ≥ j only: none before the query block holding this key block's first
            lo = (tl.program_id(0) * BLOCK_N // BLOCK_M) * BLOCK_M
        for start in range(lo, L, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q, do, lse, d = _load_q_do(q_ptr, do_ptr, lse_ptr, d_ptr, b, rows, L, E, EV,
                                      BLOCK_E, BLOCK_EV)
            # P = exp(S − lse), S = scale · Q Kᵀ, recomputed
            p = _recompute_p(q, k, lse, rows, cols, L, S, scale, CAUSAL, ACC, PREC)
            # O = P V  →  dV = Pᵀ dO
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC).to(ACC)
            # O = P V  →  dP = dO Vᵀ
            dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC)
            # P = softmax(S)  →  dS = P ⊙ (dP − rowsum(dO ⊙ O)), the softmax's BP1
            ds = p * (dp - d[:, None])
            # S = scale · Q Kᵀ  →  dK = dSᵀ Q · scale (the scale once, after the sum)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC).to(ACC)
        tl.store(dk_ptr + b * S * E + cols[:, None] * E + e[None, :],
                 (dk * scale).to(dk_ptr.dtype.element_ty),
                 mask=(cols[:, None] < S) & (e[None, :] < E))
        tl.store(dv_ptr + b * S * EV + cols[:, None] * EV + ev[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=(cols[:, None] < S) & (ev[None, :] < EV))

    @triton.jit
    def attention_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, d_ptr, dq_ptr,
                                L, S, E, EV, scale, CAUSAL: tl.constexpr, ACC: tl.constexpr,
                                PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
                                BLOCK_EV: tl.constexpr):
        """Query rows [m·BLOCK_M, (m+1)·BLOCK_M) of head b: dQ = dS K · scale, summed over
        the key blocks, dS = P ⊙ (dP − D) recomputed as in the kernel above."""
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        e = tl.arange(0, BLOCK_E)
        q, do, lse, d = _load_q_do(q_ptr, do_ptr, lse_ptr, d_ptr, b, rows, L, E, EV, BLOCK_E,
                                  BLOCK_EV)
        dq = tl.zeros((BLOCK_M, BLOCK_E), ACC)
        for start in range(0, _key_end(S, CAUSAL, BLOCK_M), BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k, v = _load_kv(k_ptr, v_ptr, b, cols, S, E, EV, BLOCK_E, BLOCK_EV)
            # P = exp(S − lse), S = scale · Q Kᵀ, recomputed
            p = _recompute_p(q, k, lse, rows, cols, L, S, scale, CAUSAL, ACC, PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC)  # dP = dO Vᵀ
            ds = p * (dp - d[:, None])  # dS = P ⊙ (dP − rowsum(dO ⊙ O))
            # S = scale · Q Kᵀ  →  dQ = dS K · scale
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC).to(ACC)
        tl.store(dq_ptr + b * L * E + rows[:, None] * E + e[None, :],
                 (dq * scale).to(dq_ptr.dtype.element_ty),
                 mask=(rows[:, None] < L) & (e[None, :] < E))

    def _meta(q: Tensor, k: Tensor, v: Tensor) -> dict[str, Any]:
        """The compile-time constants of one call: blocks, arithmetic, dot precision."""
        block_m, block_n = ATTENTION_BLOCKS["cuda" if q.is_cuda else "cpu"]
        wide = q.dtype == torch.float64
        meta = dict(ACC=tl.float64 if wide else tl.float32,
                    # float32 inputs: IEEE products (TF32's 10-bit mantissa would not equal
                    # the reference); half inputs: the default, which only fp32 operands read
                    PREC="ieee" if q.dtype in (torch.float32, torch.float64) else "tf32",
                    BLOCK_M=block_m, BLOCK_N=block_n,
                    BLOCK_E=max(16, triton.next_power_of_2(q.shape[-1])),
                    BLOCK_EV=max(16, triton.next_power_of_2(v.shape[-1])))
        if q.is_cuda:  # fewer pipeline stages for 4- and 8-byte tiles (shared memory)
            meta.update(num_warps=4, num_stages=3 if q.element_size() == 2 else 2)
        return meta

    def _fake_fwd(q, k, v, scale, causal):
        return (q.new_empty(*q.shape[:2], v.shape[-1]),
                q.new_empty(q.shape[:2], dtype=_acc_dtype(q)))

    @kernel_op("attention_fwd", _fake_fwd)
    def attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, scale: float,
                         causal: bool) -> tuple[Tensor, Tensor]:
        (batch, L, E), S, EV = q.shape, k.shape[1], v.shape[2]
        o = q.new_empty(batch, L, EV)
        lse = q.new_empty(batch, L, dtype=_acc_dtype(q))
        meta = _meta(q, k, v)
        count_launch("attention_fwd")
        wrap_triton(attention_fwd_kernel)[(triton.cdiv(L, meta["BLOCK_M"]), batch)](
            q, k, v, o, lse, L, S, E, EV, scale, CAUSAL=causal, **meta)
        return o, lse

    def _fake_bwd(do, q, k, v, o, lse, scale, causal):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    @kernel_op("attention_bwd", _fake_bwd)
    def attention_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                         scale: float, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
        (batch, L, E), S, EV = q.shape, k.shape[1], v.shape[2]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        d = torch.empty_like(lse)  # D = rowsum(dO ⊙ O)
        meta = _meta(q, k, v)
        block_m, block_n = meta["BLOCK_M"], meta["BLOCK_N"]
        count_launch("attention_bwd")  # three launches: D, then dK and dV, then dQ
        wrap_triton(attention_rowdot_kernel)[(triton.cdiv(L, block_m), batch)](
            o, do, d, L, EV, ACC=meta["ACC"], BLOCK_M=block_m, BLOCK_EV=meta["BLOCK_EV"],
            **{k: meta[k] for k in ("num_warps", "num_stages") if k in meta})
        wrap_triton(attention_bwd_dkdv_kernel)[(triton.cdiv(S, block_n), batch)](
            q, k, v, do, lse, d, dk, dv, L, S, E, EV, scale, CAUSAL=causal, **meta)
        wrap_triton(attention_bwd_dq_kernel)[(triton.cdiv(L, block_m), batch)](
            q, k, v, do, lse, d, dq, L, S, E, EV, scale, CAUSAL=causal, **meta)
        return dq, dk, dv

    return dict(attention_fwd=attention_fwd_op, attention_bwd=attention_bwd_op)


_triton_kernels = kernel_family(_build_triton_kernels)


def _acc_dtype(x: Tensor) -> torch.dtype:
    """The kernels' arithmetic dtype: float64 for float64, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def flash_attention_applies(query: Tensor, key: Tensor, value: Tensor) -> bool:
    """Whether :class:`FlashAttentionFunction` takes a call with no mask (or the causal one)
    and no dropout: the kernel choice says Triton, the three have the same batch dims
    (no broadcasting), and E, Ev ≤ :data:`MAX_HEAD_DIM`, L, S ≥ 1."""
    return (use_kernel(query) and query.shape[:-2] == key.shape[:-2] == value.shape[:-2]
            and max(query.shape[-1], value.shape[-1]) <= MAX_HEAD_DIM
            and query.shape[-2] > 0 and key.shape[-2] > 0 and query.dtype == key.dtype
            == value.dtype)


def _heads(t: Tensor) -> Tensor:
    """(*, L, E) -> (B, L, E), contiguous: one program grid row per (batch, head)."""
    return t.reshape(-1, t.shape[-2], t.shape[-1]).contiguous()


class FlashAttentionFunction(BPFunction):
    """O = softmax(scale · Q Kᵀ + B) V with B = 0 or the causal mask (keys j ≤ i), in
    tiles: the Triton kernels above. Returns (O, lse), lse the row log-sum-exp
    (not differentiable), which is all backward keeps besides Q, K, V and O.

    Backward (δ = dO = ∂C/∂O): D = rowsum(dO ⊙ O); per tile P = exp(S − lse),
    dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − D), dQ = dS K·scale, dK = dSᵀ Q·scale, the
    equations of :func:`attention_bwd` with rowsum(dP ⊙ P) = D. Double backward
    (``create_graph=True``) takes the reference, P recomputed with differentiable ops.

    Batch-first: query (*, L, E), key (*, S, E), value (*, S, Ev), equal batch dims.
    """

    autocast = LOWER  # as AttentionFunction: torch's attention is a lower-precision op

    @staticmethod
    def forward(query: Tensor, key: Tensor, value: Tensor, scale: float,
                causal: bool) -> tuple[Tensor, Tensor]:
        o, lse = _triton_kernels()["attention_fwd"](_heads(query), _heads(key), _heads(value),
                                                    scale, causal)
        return o.view(*query.shape[:-1], value.shape[-1]), lse.view(query.shape[:-1])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        query, key, value, scale, causal = inputs
        o, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.scale, ctx.causal = scale, causal
        ctx.save_for_backward(query, key, value, o, lse)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_lse: Tensor | None):
        q, k, v, o, lse = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: the reference, P a function of Q and K
            bias = causal_bias(q.shape[-2], k.shape[-2], q) if ctx.causal else None
            p, _lse = safe_softmax(scores(q, k, bias, ctx.scale))
            dq, dk, dv, _db = attention_bwd(grad_output, None, q, k, v, p, None, ctx.scale,
                                            (*need, False))
            return dq, dk, dv, None, None
        dq, dk, dv = _triton_kernels()["attention_bwd"](
            _heads(grad_output), _heads(q), _heads(k), _heads(v), _heads(o),
            lse.reshape(-1, q.shape[-2]).contiguous(), ctx.scale, ctx.causal)
        return (dq.view(q.shape) if need[0] else None, dk.view(k.shape) if need[1] else None,
                dv.view(v.shape) if need[2] else None, None, None)


__all__ += ["FlashAttentionFunction", "flash_attention_applies"]

# moved out of this file (one release): the input checks
__getattr__ = moved(__name__, {"check_attention": "bptorch._checks"})
