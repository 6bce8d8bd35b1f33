"""Curvature from the written-out backward: BackPACK's second-order extensions.

The generalised Gauss–Newton matrix of a loss ℓ(f(x_n, θ), y_n) summed over the batch is

    G(θ) = Σ_n J_nᵀ H_n J_n,        J_n = ∂f_n/∂θ,  H_n = ∂²ℓ/∂f_n²  (PSD for these losses)

Write H_n = S_n S_nᵀ with S_n of shape (C, V), V columns (the C outputs for the exact
factor, M sampled vectors for Monte-Carlo). Then G = Σ_n Σ_v (J_nᵀ s_{n,v})(J_nᵀ s_{n,v})ᵀ:
each column s_{n,v} goes down the network exactly as an error δ does, through BP2,

    S^l = (W^{l+1})ᵀ S^{l+1} ⊙ σ'(z^l)          (BP2 for V vectors at once)

and where BP3/BP4 would form δ_n a_nᵀ, the column's Jacobian-vector product with the
layer's parameters is s^l_{n,v} (a^{l−1}_n)ᵀ. So, per layer (a the layer's input):

    diag_ggn(W) = Σ_{n,v} (s_{n,v} a_nᵀ)² = Σ_n (Σ_v s_{n,v}²) (a_n²)ᵀ   (one matmul)
    diag_ggn(b) = Σ_{n,v} s_{n,v}²
    kflr / kfac = [G, A],  G = Σ_{n,v} s_{n,v} s_{n,v}ᵀ,  A = Σ_n a_n a_nᵀ / N

(BackPACK's layouts and normalisations; for a convolution s and a carry a position axis:
its BP4 per position, and G sums s over positions first, as BackPACK's.)

Where it runs: each covered layer's written-out backward already hands its δ and a^{l−1}
to the active collector (``functions.base.PER_EXAMPLE``); inside :func:`collect` the
collector keeps, beside the backward's δ, the V columns S that reached that layer, forms
the quantities above from S and a^{l−1}, and passes Wᵀ S down (the family's own BP2 with a
leading V axis). Between two such layers S goes through each node's BP2: an activation's
⊙ σ'(z), max pooling's scatter and Flatten's reshape for the V columns at once, any other
node (any torch op) through its own backward vmapped over the V columns. The loss's S is
formed from the loss's input when ``loss_fn`` is called inside the block. S is laid out
examples outermost, (N, V, ...) in memory (:func:`examples_outer`, :func:`by_rows`), so a
convolution's per-example products read it without a copy. Under a first-layer
convolution followed by σ and a max pool, S is kept at the pool's winners and never
formed (:class:`WinnerColumns`).

Covered: Linear and Dense (``kflr``/``kfac`` on 2-d inputs, as BackPACK), Conv1d, Conv2d
and Conv3d (stride, padding, dilation, "same", ``groups``: for groups > 1 the Kronecker
factors per group, :class:`ConvCurvature`), Embedding (``padding_idx``; its Kronecker
factors as the one-hot Linear's, :class:`EmbeddingCurvature`). Any other layer with
parameters raises :class:`NotCoveredError` naming it.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .functions.conv import Conv2dFunction, ConvNdFunction, conv_input_grad, pad_end
from .functions.dropout import FlattenFunction
from .functions.embedding import EmbeddingFunction
from .functions.pool import AdaptiveMaxPoolFunction, MaxPoolFunction
from .functions.linear import ActivationFunction, DenseFunction, LinearFunction, sigma_from
from .nn import cost as bcost

SECOND_ORDER = ("diag_ggn_exact", "diag_ggn_mc", "kflr", "kfac")
EXACT = ("diag_ggn_exact", "kflr")  # the loss's exact square root, C columns
SAMPLED = ("diag_ggn_mc", "kfac")  # one Monte-Carlo square root each, M columns
COVERED = "Linear, Dense, Conv1d, Conv2d, Conv3d and Embedding"


class NotCoveredError(NotImplementedError):
    """A layer the second-order quantities do not cover, or a setting they do not."""


class MissingLossError(ValueError):
    """No loss the second-order quantities can read."""


# ---------------------------------------------------------------- the loss's square root
# Each readable loss: its input f (N, C) and the square root S of ∂²ℓ/∂f², shape
# (V, N, C), V columns per example, scaled for the reduction (1/√N under a mean over N
# examples, 1/√(N·C) for MSELoss's mean over every element, as torch and BackPACK).
def loss_kind(loss_fn: Any) -> tuple[str, str]:
    """(kind, reduction) of a loss the second-order quantities can read, else
    :class:`MissingLossError` saying what is missing.

    kinds: "softmax" (torch.nn.CrossEntropyLoss, its bptorch twin,
    ``LogLikelihoodCost(logits=True)``), "mse" (torch.nn.MSELoss and twin), "quadratic"
    (``QuadraticCost``), "sigmoid" (``CrossEntropyCost(logits=True)``)."""
    if loss_fn is None:
        raise MissingLossError(
            "second-order quantities need the loss: pass loss_fn= (torch.nn.CrossEntropyLoss "
            "or MSELoss, bptorch.nn's twins, or a bptorch cost: QuadraticCost, "
            "LogLikelihoodCost(logits=True), CrossEntropyCost(logits=True)), the module "
            "called on the model's output inside the block")
    reduction = getattr(loss_fn, "reduction", None)
    kind = None
    if isinstance(loss_fn, (nn.CrossEntropyLoss, bcost.CrossEntropyLoss)):
        if loss_fn.weight is not None or loss_fn.ignore_index != -100:
            raise NotCoveredError("second-order quantities: CrossEntropyLoss with class "
                                  "weights or an ignore_index is not covered (as BackPACK)")
        kind = "softmax"
    elif isinstance(loss_fn, (nn.MSELoss, bcost.MSELoss)):
        kind = "mse"
    elif isinstance(loss_fn, bcost.QuadraticCost):
        kind = "quadratic"
    elif isinstance(loss_fn, (bcost.LogLikelihoodCost, bcost.CrossEntropyCost)):
        if not loss_fn.logits:
            raise MissingLossError(
                f"{type(loss_fn).__name__}(logits=False) takes probabilities: its Hessian "
                "square root is read on the logits; use logits=True on z^L")
        kind = "softmax" if isinstance(loss_fn, bcost.LogLikelihoodCost) else "sigmoid"
    if kind is None:
        raise MissingLossError(
            f"second-order quantities cannot read the loss {type(loss_fn).__name__}: they "
            "need torch.nn.CrossEntropyLoss or MSELoss (or bptorch.nn's twins), or a "
            "bptorch cost (QuadraticCost, LogLikelihoodCost/CrossEntropyCost with "
            "logits=True)")
    if reduction not in ("mean", "sum"):
        raise MissingLossError(f"second-order quantities need reduction 'mean' or 'sum', "
                               f"got {reduction!r}")
    return kind, reduction


def _normalisation(kind: str, f: Tensor) -> int:
    """The divisor of reduction="mean": the rows N, or every element for MSELoss."""
    return f.numel() if kind == "mse" else f.numel() // f.shape[-1]


def sqrt_hessian(kind: str, reduction: str, f: Tensor) -> Tensor:
    """The exact square root, (C, N, C): H = S Sᵀ per example.

    softmax + NLL: H = diag(p) − p pᵀ = S Sᵀ with S = diag(√p) − p √pᵀ, since
    (diag(√p) − p√pᵀ)(diag(√p) − √p pᵀ) = diag(p) − 2ppᵀ + p(√p·√p)pᵀ and √p·√p = 1.
    sigmoid + BCE: H = diag(σ(1 − σ)). MSE (x − y)²: H = 2I. ½‖a − y‖²: H = I."""
    n, c = f.shape
    if kind == "softmax":
        p = torch.softmax(f, 1)
        tau = p.sqrt()
        eye = torch.eye(c, dtype=f.dtype, device=f.device)
        # S[v, n, c] = √p_c (δ_vc − √p_v √p_c)
        s = tau[None] * (eye[:, None, :] - tau.t()[:, :, None] * tau[None])
    else:
        if kind == "sigmoid":
            sig = torch.sigmoid(f)
            diag = (sig * (1 - sig)).sqrt()
        else:
            diag = f.new_full((n, c), math.sqrt(2.0) if kind == "mse" else 1.0)
        s = torch.diag_embed(diag, dim1=0, dim2=2)  # (C, N, C): S[v, n, c] = δ_vc d_nc
    if reduction == "mean":
        s = s / math.sqrt(_normalisation(kind, f))
    return s


def sqrt_hessian_sampled(kind: str, reduction: str, f: Tensor, mc_samples: int) -> Tensor:
    """A Monte-Carlo square root, (M, N, C): s = ∇_f ℓ(f, ŷ)/√M with ŷ drawn from the
    model's own distribution p(y | f), so E[s sᵀ]·M = H. Drawn as BackPACK draws them
    (the same generator calls), so a seeded run gives BackPACK's samples."""
    if kind == "softmax":  # ŷ ~ Categorical(softmax f): ∇ = p − onehot(ŷ)
        p = torch.softmax(f, 1)
        # Categorical(p).sample((M,))'s own calls (its p renormalised, one multinomial
        # draw with replacement), without the distribution object's argument checks
        y = torch.multinomial(p / p.sum(-1, keepdim=True), mc_samples, True).t()
        s = p[None] - F.one_hot(y, f.shape[1]).to(p.dtype)
    elif kind == "mse":  # ŷ ~ N(f, ½): ∇ of (f − ŷ)² is 2(f − ŷ); BackPACK's sign, 2(ŷ − f)
        y = torch.distributions.Normal(f, torch.tensor(math.sqrt(0.5), device=f.device)
                                       ).sample(torch.Size([mc_samples]))
        s = 2 * (y - f[None])
    elif kind == "quadratic":  # ŷ ~ N(a, 1): ∇ of ½‖a − ŷ‖² = a − ŷ
        s = f[None] - torch.normal(f[None].expand(mc_samples, *f.shape), 1.0)
    else:  # sigmoid: ŷ ~ Bernoulli(σ(f)): ∇ = σ(f) − ŷ
        sig = torch.sigmoid(f)
        s = sig[None] - torch.bernoulli(sig[None].expand(mc_samples, *f.shape))
    s = s / math.sqrt(mc_samples)
    if reduction == "mean":
        s = s / math.sqrt(_normalisation(kind, f))
    return s


# ---------------------------------------------------------------- per-family forms
def _low(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class LinearCurvature:
    """z = a Wᵀ + b on (N, *, d). ``s``: (V, N, *, p), the columns at z.

    diag(W) = Σ_{v,n} (Σ_t s_{v,n,t} a_{n,t}ᵀ)²; one row per example: (Σ_v s²)ᵀ (a²).
    G = Σ_{v,n} s sᵀ, A = Σ_n a aᵀ / N (2-d inputs only, as BackPACK)."""

    def __init__(self, s: Tensor, a_prev: Tensor) -> None:
        self.s, self.a = s, a_prev.to(s.dtype)
        self.n = a_prev.shape[0]
        self._a2: Tensor | None = None  # a², shared by the names and the roles

    def diag(self, role: str) -> Tensor:
        s, a = self.s, self.a
        if role == "bias":
            s = s.flatten(2, -2).sum(2) if s.dim() > 3 else s  # Σ_t, BP3 per example
            return s.square().sum((0, 1))
        if a.dim() == 2:  # Σ_n (Σ_v s_{v,n}²) (a_n²)ᵀ: BP4 of the squares
            if self._a2 is None:
                self._a2 = a.square()
            return s.square().sum(0).t() @ self._a2  # (Σ_v s²)ᵀ: an einsum is 7× slower
        sf, af = s.flatten(2, -2), a.flatten(1, -2)  # (V, N, T, p), (N, T, d)
        return torch.einsum("vntp,ntd->vnpd", sf, af).square().sum((0, 1))

    def kron_g(self, role: str = "weight") -> Tensor:
        if self.a.dim() != 2:
            raise NotCoveredError(f"kflr/kfac of a linear layer on {self.a.dim()}-d input: "
                                  "Kronecker factors are defined for 2-d (N, d) input "
                                  "only (as BackPACK)")
        s = self.s.flatten(0, 1)  # (V·N, p)
        return s.t() @ s

    def kron_a(self) -> Tensor:
        return _gram(self.a.t(), self.n)  # Σ_n a_n a_nᵀ / N


def _gram(x: Tensor, n: int) -> Tensor:
    """x xᵀ / n with the 1/n inside the GEMM (its alpha): no pass over the (d, d) result,
    and exactly symmetric. x (..., d, m): batched over leading axes."""
    if x.dim() == 2:
        return torch.addmm(x.new_empty(x.shape[0], x.shape[0]), x, x.t(), beta=0,
                           alpha=1 / n)
    return torch.baddbmm(x.new_empty(x.shape[0], x.shape[1], x.shape[1]), x,
                         x.transpose(1, 2), beta=0, alpha=1 / n)


def by_rows(s: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """f applied to the V·N rows of S (V, N, ...) at once, read in S's own memory order
    (examples outermost, as the walk lays S out, or columns outermost) and returned in
    it: a batched op (BP2 through a linear or a convolution) needs no copy of S."""
    if s.transpose(0, 1).is_contiguous():  # (N, V, ...) in memory
        out = f(s.transpose(0, 1).flatten(0, 1))
        return out.unflatten(0, (s.shape[1], s.shape[0])).transpose(0, 1)
    return f(s.flatten(0, 1)).unflatten(0, s.shape[:2])


def examples_outer(parts: list[Tensor]) -> Tensor:
    """torch.cat(parts) (V, N, C), laid out (N, V, C) in memory: the layout S keeps down
    the walk, in which a convolution's per-example products read it without a copy."""
    return torch.cat([q.transpose(0, 1) for q in parts], 1).transpose(0, 1)


def max_pool_columns(s: Tensor, indices: Tensor, input_shape: torch.Size) -> Tensor:
    """Max pooling's BP2 (``functions.pool.max_pool_bwd``) for V columns at once:
    ∂C/∂z_i = Σ_{j : i won j} s_j, each window's column added to the pixel that won it;
    the winners ``indices`` (N, C, *out) are the same for every column. s (V, N, C, *out)
    → (V, N, C, *input), laid out examples outermost."""
    v, (n, c) = s.shape[0], input_shape[:2]
    grad = s.new_zeros(n, v, c, math.prod(input_shape[2:]))
    index = indices.flatten(2)[:, None].expand(n, v, c, -1)
    grad.scatter_add_(3, index, s.transpose(0, 1).flatten(3))  # z[indices_j] += s_j
    return grad.unflatten(3, tuple(input_shape[2:])).transpose(0, 1)


class WinnerColumns:
    """S at the output of a convolution whose input takes no gradient (a first layer) and
    which reached it through σ and a max pool only (conv → σ → max pool), kept in the
    pool's terms and never formed: with t (V, N, C, Q) the columns at the pool's output,
    i_q the pixel that won window q and m_q = σ'(z_{i_q}) (N, C, Q),

        S_p = σ'(z_p) Σ_{q : i_q = p} t_q,   so   Σ_p S_p x_p = Σ_q t_q m_q x_{i_q}

    for any x: the layer's quantities read Q positions (a quarter of P under 2 × 2
    pooling), and the (V, N, C, P) maps, their zeros and σ' on them are skipped."""

    def __init__(self, t: Tensor, index: Tensor, prime: Tensor, shape: torch.Size) -> None:
        self.t, self.index, self.prime, self.shape = t, index, prime, shape

    def __getitem__(self, columns: slice) -> "WinnerColumns":  # some of the V columns
        return WinnerColumns(self.t[columns], self.index, self.prime, self.shape)

    def weighted(self) -> Tensor:
        """t_q m_q, (V, N, C, Q)."""
        return self.t * self.prime

    def dense(self) -> Tensor:
        """S itself, (V, N, C, *spatial): max pooling's BP2 of t m."""
        return max_pool_columns(self.weighted(), self.index, self.shape)


# _diag_at_winners is one GEMM of V rows per example and map over the Q windows, where
# the dense form has V·C_out rows over the P pixels: a quarter of the products under 2 × 2
# pooling, but short GEMMs, and the winners' patches gathered per map first. With a single
# column (diag_ggn_mc) the dense form measured faster on LeNet-5; from WINNER_ROWS columns
# on (diag_ggn_exact's 10) the winners' (LeNet-5: 3.0× → 2.7× a plain step).
WINNER_ROWS = 4


def _dense(s: Any) -> Tensor:
    return s.dense() if isinstance(s, WinnerColumns) else s


# The diagonal of a convolution forms each column's per-example BP4, (V·N) products of
# (C_out × P)(P × K); CHUNK bounds the elements of one batch of them (the columns are
# taken CHUNK // (N·C_out·K) at a time), so memory stays that of a few BP4s.
CHUNK = 1 << 24


def conv_patches(a_prev: Tensor, kernel_size: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, out: tuple, examples_first: bool) -> Tensor:
    """The unfolded input of a convolution (any number of spatial dims), read as one
    strided view of the zero-padded a^{l−1} and copied once into the layout asked:
    ``examples_first`` (N, C·K, P), each example's patches (the per-example BP4s of the
    diagonal); else (C·K, N·P), every example's side by side (A's one GEMM). Entry
    (n, c, t, p) is the padded a_prev at pixel p·stride + t·dilation of channel c (as
    ``functions.conv.conv_cols``, which is the second layout with groups)."""
    n, c = a_prev.shape[:2]
    a = a_prev
    if any(padding):
        a = F.pad(a, [v for p in reversed(padding) for v in (p, p)])
    a = a.contiguous()
    s_n, s_c, *s_x = a.stride()
    taps = tuple(s * d for s, d in zip(s_x, dilation))
    steps = tuple(s * st for s, st in zip(s_x, stride))
    k, p = math.prod(kernel_size), math.prod(out)
    if examples_first:  # (N, C, *k, *out) → (N, C·K, P)
        view = a.as_strided((n, c, *kernel_size, *out), (s_n, s_c, *taps, *steps))
        return view.reshape(n, c * k, p)
    view = a.as_strided((c, *kernel_size, n, *out), (s_c, *taps, s_n, *steps))
    return view.reshape(c * k, n * p)  # (C, *k, N, *out) → (C·K, N·P)


class ConvCurvature:
    """Conv1d/2d/3d, any ``groups``: the linear layer on every patch, group by group.
    With s (V, N, g, O, P) the columns at z (O = C_out/g, P positions) and a_col
    (N, g, K, P) the unfolded input (K = C_in/g · k):

        diag(W)_g = Σ_{v,n} (s_{v,n,g} a_col,n,gᵀ)²        per column, per example: BP4
        diag(b)   = Σ_{v,n} (Σ_p s_{v,n,p})²
        G_g = Σ_{v,n} (Σ_p s_{v,n,g,p})(Σ_p s_{v,n,g,p})ᵀ,  A_g = Σ_{n,p} a_col a_colᵀ / N

    (BackPACK's layout for groups = 1: G (C_out, C_out) is the bias's GGN block, A
    (C_in·k, C_in·k). For groups > 1 the weight's factors are per group, stacked on a
    leading group axis, G (g, O, O) and A (g, K, K): the weight's GGN, W flattened by
    rows, ≈ torch.block_diag(*(torch.kron(G[j], A[j]) for j)), the blocks between groups
    dropped; the bias keeps its whole GGN block G (C_out, C_out).)

    ``a_prev`` is the input as the backward sees it (zero-padded at the end for "same"
    with an even kernel)."""

    def __init__(self, ctx: Any, s: Tensor | WinnerColumns, a_prev: Tensor,
                 weight_shape: torch.Size) -> None:
        if isinstance(s, WinnerColumns):  # kept at the pool's winners (a first layer)
            self.ctx, self.a, self.s = ctx, a_prev.to(s.t.dtype), s
            self.out = tuple(s.shape[2:])
        else:
            self.ctx, self.a = ctx, a_prev.to(s.dtype)
            self.s = s.flatten(3)  # (V, N, C_out, P)
            self.out = tuple(s.shape[3:])
        self.n, self.shape, self.groups = a_prev.shape[0], weight_shape, ctx.groups
        self._cols: dict[bool, Tensor] = {}  # the unfold, once per layout for every name

    def _a_col(self, examples_first: bool) -> Tensor:
        if examples_first not in self._cols:
            ctx = self.ctx
            self._cols[examples_first] = conv_patches(
                self.a, tuple(self.shape[2:]), tuple(ctx.stride), tuple(ctx.padding),
                tuple(ctx.dilation), self.out, examples_first)
        return self._cols[examples_first]

    def _summed(self) -> Tensor:
        """Σ_p s_p, (V, N, C_out): the bias's Jacobian applied to each column."""
        if isinstance(self.s, WinnerColumns):
            return self.s.weighted().sum(3)  # Σ_q t_q m_q
        return self.s.sum(3)

    def diag(self, role: str) -> Tensor:
        s, g, n = self.s, self.groups, self.n
        if role == "bias":
            return self._summed().square().sum((0, 1))
        if isinstance(s, WinnerColumns):
            if s.t.shape[0] >= WINNER_ROWS:
                return self._diag_at_winners(s)
            s = s.dense().flatten(3)  # few columns: the dense maps' GEMMs are the better
        v, c_out, p = s.shape[0], s.shape[2], s.shape[3]
        o = c_out // g
        a_col = self._a_col(True).unflatten(1, (g, -1)).flatten(0, 1)  # (N·g, K, P)
        k = a_col.shape[1]
        a_col_t = a_col.transpose(1, 2)  # (N·g, P, K)
        chunk = max(1, CHUNK // max(1, n * c_out * k))
        diag = None
        for start in range(0, v, chunk):  # usually all V columns at once
            s_c = s[start:start + chunk]
            m = s_c.shape[0]
            # (m, N, g, O, P) → (N·g, m·O, P): example n's columns as the rows of one GEMM
            rows = s_c.reshape(m, n, g, o, p).permute(1, 2, 0, 3, 4).reshape(n * g, m * o, p)
            js = torch.bmm(rows, a_col_t)  # each column's BP4 per example: (N·g, m·O, K)
            part = js.square_().reshape(n, g, m * o, k).sum(0)  # Σ_n (g, m·O, K)
            part = part.reshape(g, m, o, k).sum(1)  # Σ_v (g, O, K)
            diag = part if diag is None else diag + part
        return diag.reshape(self.shape)

    def _diag_at_winners(self, s: WinnerColumns) -> Tensor:
        """diag(W)_o = Σ_{v,n} (Σ_q t_{v,n,o,q} m_{n,o,q} a_col,n,i_q)²: each column's BP4
        read at the winners only; a_col gathered there per output map (N, C_out, K, Q)."""
        g, n = self.groups, self.n
        tm = s.weighted()  # (V, N, C_out, Q)
        v, c_out, q = tm.shape[0], tm.shape[2], tm.shape[3]
        o = c_out // g
        a_col = self._a_col(True).unflatten(1, (g, -1))  # (N, g, K, P)
        k = a_col.shape[2]
        index = s.index.flatten(2).reshape(n, g, o, 1, q).expand(n, g, o, k, q)
        a_win = a_col[:, :, None].expand(n, g, o, k, a_col.shape[3]).gather(4, index)
        a_win_t = a_win.reshape(n * c_out, k, q).transpose(1, 2)  # (N·C_out, Q, K)
        chunk = max(1, CHUNK // max(1, n * c_out * k))
        diag = None
        for start in range(0, v, chunk):
            tm_c = tm[start:start + chunk]
            m = tm_c.shape[0]
            rows = tm_c.permute(1, 2, 0, 3).reshape(n * c_out, m, q)  # (N·C_out, m, Q)
            js = torch.bmm(rows, a_win_t)  # each column's BP4 per example and map
            part = js.square_().reshape(n, c_out, m, k).sum((0, 2))  # (C_out, K)
            diag = part if diag is None else diag + part
        return diag.reshape(self.shape)

    def kron_g(self, role: str = "weight") -> Tensor:
        s = self._summed().flatten(0, 1)  # (V·N, C_out): Σ_p s_p, the bias's Jacobian
        if self.groups == 1 or role == "bias":
            return s.t() @ s
        s = s.unflatten(1, (self.groups, -1)).transpose(0, 1)  # (g, V·N, O)
        return s.transpose(1, 2) @ s  # (g, O, O)

    def kron_a(self) -> Tensor:
        x = self._a_col(False)  # (C_in·k, N·P)
        if self.groups == 1:
            return _gram(x, self.n)
        return _gram(x.unflatten(0, (self.groups, -1)), self.n)  # (g, K, K)


# Kept for the name: Conv2d's forms are ConvCurvature's with two spatial dims.
Conv2dCurvature = ConvCurvature


class EmbeddingCurvature:
    """z_{n,t} = W e_{i_{n,t}}: example n's column v is s_{v,n,t} added into the rows
    i_{n,t} it looked up; diag(W) sums its squares per (example, row), over the columns.

    Kronecker factors: an Embedding is a Linear (for (N, T) indices, a Conv1d with kernel
    1 over the T positions) on one-hot inputs x = e_i, with weight Wᵀ (D, V). Its factors
    in BackPACK's layout for that layer: G = Σ_{v,n} (Σ_t s_{v,n,t})(Σ_t s_{v,n,t})ᵀ
    (D, D) and A = Σ_{n,t} e_i e_iᵀ / N (V, V), diagonal: the lookup counts over N. So
    GGN(Wᵀ flattened by rows) ≈ kron(G, A), i.e. GGN(W flattened) ≈ kron(A, G). A
    ``padding_idx`` lookup counts as the zero input (its row has no Jacobian)."""

    def __init__(self, ctx: Any, s: Tensor, index: Tensor) -> None:
        if ctx.scale_grad_by_freq:
            raise NotCoveredError("second-order quantities of an Embedding with "
                                  "scale_grad_by_freq=True: not covered (as BackPACK)")
        self.v = ctx.num_embeddings
        n = index.shape[0] if index.dim() else 1
        index = index.reshape(n, -1)  # (N, T)
        self.s = s.reshape(s.shape[0], n, index.shape[1], s.shape[-1])  # (V, N, T, D)
        self.n, self.index = n, index
        # the padding row's Jacobian is 0: its lookups drop out of diag and of A
        self.keep = None if ctx.padding_idx is None else index != ctx.padding_idx
        example = torch.arange(n, device=index.device).repeat_interleave(index.shape[1])
        self.key = example * self.v + index.reshape(-1)  # one key per (example, row)

    def diag(self, role: str) -> Tensor:
        s = self.s
        if self.keep is not None:
            s = s * self.keep[None, :, :, None].to(s.dtype)
        s = s.flatten(1, 2)  # (V, N·T, D)
        keys, inverse = torch.unique(self.key, return_inverse=True)
        rows = s.new_zeros(s.shape[0], keys.shape[0], s.shape[2])
        rows.index_add_(1, inverse, s)  # Σ_t over an example's uses of a row
        table = rows.new_zeros(self.v, rows.shape[2])
        return table.index_add_(0, keys % self.v, rows.square().sum(0))

    def kron_g(self, role: str = "weight") -> Tensor:
        s = self.s.sum(2).flatten(0, 1)  # (V·N, D): Σ_t s_t, as a Conv1d's G
        return s.t() @ s

    def kron_a(self) -> Tensor:
        index = self.index.reshape(-1)
        ones = torch.ones(index.shape, dtype=self.s.dtype, device=index.device)
        if self.keep is not None:
            ones = ones * self.keep.reshape(-1).to(ones.dtype)
        counts = ones.new_zeros(self.v).index_add_(0, index, ones)  # Σ_{n,t} e_i
        return torch.diag(counts / self.n)


# the Functions whose backward takes the columns S itself (a reporting layer of a family
# above): the walk stops there and leaves S for that backward
_STOP_CLASSES = {id(c) for cls in (LinearFunction, DenseFunction, Conv2dFunction,
                                   ConvNdFunction, EmbeddingFunction) for c in (cls._eager, cls._functorch)}


_ACTIVATIONS = {id(ActivationFunction._eager), id(ActivationFunction._functorch)}


def _node_classes(*bases: type) -> set[int]:
    """The ids of the classes a node's ``_forward_cls`` can be for these Functions and
    their subclasses (each has an eager and a functorch form)."""
    ids, todo = set(), list(bases)
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        ids |= {id(c) for c in (cls, getattr(cls, "_eager", None),
                                getattr(cls, "_functorch", None)) if c is not None}
    return ids


_MAX_POOLS = _node_classes(MaxPoolFunction, AdaptiveMaxPoolFunction)
_FLATTENS = _node_classes(FlattenFunction)
_CONVS = _node_classes(Conv2dFunction, ConvNdFunction)


def _stops(node: Any) -> bool:
    return id(getattr(node, "_forward_cls", None)) in _STOP_CLASSES


# ---------------------------------------------------------------- the collector's part
class Curvature:
    """The second-order half of a collection: seeds S at the loss's input, carries it
    down the backward beside δ, and leaves the quantities on the parameters.

    ``params``, ``names_of``, ``modules``: the collector's maps (id → parameter, its
    name, its module) for the messages.
    """

    def __init__(self, names: tuple[str, ...], loss_fn: Any, mc_samples: int,
                 params: dict[int, Tensor], names_of: dict[int, str],
                 modules: dict[int, tuple[str, nn.Module]]) -> None:
        self.kind, self.reduction = loss_kind(loss_fn)
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be at least 1, got {mc_samples}")
        self.names = tuple(n for n in names if n in SECOND_ORDER)
        self.mc_samples = mc_samples
        self.params, self.names_of, self.modules = params, names_of, modules
        self.pending: dict[Any, Tensor] = {}
        self.columns: dict[str, slice] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.walking = False
        self.seeded = False

    # ---- the seed: the loss's S, when the loss is called
    def seed(self, f: Tensor) -> None:
        """From the loss's input f: S for each asked quantity (the exact one shared by
        diag_ggn_exact and kflr, one draw per Monte-Carlo name, in the asked order),
        stacked on one V axis and sent down from f's node."""
        if self.seeded:  # called again before the backward: the last call's loss counts
            self.pending.clear()
        if f.dim() != 2:
            raise NotCoveredError(f"second-order quantities need the loss's input as (N, C), "
                                  f"got shape {tuple(f.shape)}")
        node = f.grad_fn
        with torch.no_grad():
            f = _low(f.detach())
            parts, start = [], 0
            if any(n in EXACT for n in self.names):
                parts.append(sqrt_hessian(self.kind, self.reduction, f))
                for n in EXACT:
                    self.columns[n] = slice(0, parts[-1].shape[0])
                start = parts[-1].shape[0]
            for name in self.names:
                if name in SAMPLED:
                    parts.append(sqrt_hessian_sampled(self.kind, self.reduction, f,
                                                      self.mc_samples))
                    self.columns[name] = slice(start, start + self.mc_samples)
                    start += self.mc_samples
            self.seeded = True
            self.push(node, examples_outer(parts))

    def forward_hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        """Read the loss's input (loss_fn's forward, inside the block): nothing else."""
        if inputs[0].grad_fn is not None:
            self.seed(inputs[0])

    # ---- BP2 for the V columns between two covered layers: each node's own backward
    def push(self, node: Any, s: Tensor, owned: bool = True) -> None:
        """Send the columns ``s`` (V, *) into ``node``: left for a covered layer's
        backward, or passed through the node's own backward vmapped over V (through an
        activation or a max pool directly, V columns at once).

        ``owned``: ``s`` is the walk's own buffer, aliased nowhere else, so BP2's ⊙ σ'(z)
        may scale it in place (no second tensor of V·N maps)."""
        stack = [(node, s, owned)]
        while stack:
            node, s, owned = stack.pop()
            if node is None:
                continue
            if _stops(node):
                prev = self.pending.get(node)
                self.pending[node] = s if prev is None else _dense(prev) + _dense(s)
                continue
            variable = getattr(node, "variable", None)
            if variable is not None or type(node).__name__ == "AccumulateGrad":
                if variable is not None and id(variable) in self.params:
                    raise NotCoveredError(
                        f"parameter {self.names_of[id(variable)]!r} takes its gradient from "
                        "torch's own autograd, not a covered bptorch layer: second-order "
                        f"quantities cover {COVERED}")
                continue
            for nxt, _ in node.next_functions:  # a layer with parameters we do not cover
                p = getattr(nxt, "variable", None)
                if p is not None and id(p) in self.params:
                    name, module = self.modules[id(p)]
                    layer = (f"{type(module).__name__} {name!r}"
                             if hasattr(node, "_forward_cls") else
                             f"torch's own {type(node).__name__} on parameter "
                             f"{self.names_of[id(p)]!r} (torch's own autograd)")
                    raise NotCoveredError(
                        f"{layer} is not covered by the second-order quantities "
                        f"({', '.join(self.names)}); they cover {COVERED}")
            cls = getattr(node, "_forward_cls", None)
            is_activation = id(cls) in _ACTIVATIONS
            saved = node.saved_tensors[0] if is_activation else None
            if is_activation and (saved is not None or node.activation.saves is None):
                # a = σ(z): BP2's ⊙ σ'(z), broadcast over the V columns (no vmap needed)
                act = node.activation
                with torch.no_grad():
                    if owned and act.elementwise and saved is not None:
                        s = s.mul_(act.prime(saved))  # in place: σ'(z) is (N, ...)
                    else:
                        s = act.delta(s, saved)
                stack.append((node.next_functions[0][0], s, True))
                continue
            if id(cls) in _MAX_POOLS:
                # a_j = max_{i ∈ window j} z_i: each window's column to its winner
                index = node.saved_tensors[0]
                winners = self._first_conv_below(node, s, index)
                if winners is not None:  # conv → σ → pool at the bottom: S kept at winners
                    conv, s = winners
                    prev = self.pending.get(conv)
                    self.pending[conv] = s if prev is None else _dense(prev) + s.dense()
                    continue
                with torch.no_grad():
                    s = max_pool_columns(s, index, node.input_shape)
                stack.append((node.next_functions[0][0], s, True))
                continue
            if id(cls) in _FLATTENS:  # a = z flattened: each column reshaped back (a view)
                stack.append((node.next_functions[0][0],
                              s.reshape(s.shape[0], *node.input_shape), owned))
                continue
            n_out = len(node._input_metadata)
            call = node.apply if hasattr(node, "_forward_cls") else node
            edges = [i for i, (nxt, _) in enumerate(node.next_functions) if nxt is not None]
            kept: list[int] = []  # the edges whose gradient the backward gave

            def backward(col: Tensor) -> tuple:
                grads = call(col, *(None,) * (n_out - 1))
                grads = grads if isinstance(grads, tuple) else (grads,)
                kept[:] = [i for i in edges if grads[i] is not None]
                return tuple(grads[i] for i in kept)

            self.walking = True
            try:
                with torch.no_grad():
                    try:
                        outs = torch.func.vmap(backward)(s)
                    except RuntimeError:  # an op with no batching rule: column by column
                        cols = [backward(col) for col in s]
                        outs = tuple(torch.stack(g) for g in zip(*cols))
            finally:
                self.walking = False
            # still the walk's own if it was and no two outputs share memory (a view of
            # the input, as Flatten's backward gives, stays ours; AddBackward's twice does not)
            storages = [g.untyped_storage().data_ptr() for g in outs]
            owned = owned and len(set(storages)) == len(storages)
            for i, g in zip(kept, outs):
                stack.append((node.next_functions[i][0], g, owned))

    @staticmethod
    def _first_conv_below(pool: Any, t: Tensor, index: Tensor) -> tuple | None:
        """(the conv's node, :class:`WinnerColumns`) when ``pool`` reads an elementwise
        activation of a convolution whose input takes no gradient (nothing needs S
        there but that layer's quantities), else None."""
        act = pool.next_functions[0][0]
        if act is None or id(getattr(act, "_forward_cls", None)) not in _ACTIVATIONS:
            return None
        saved = act.saved_tensors[0]
        conv = act.next_functions[0][0]
        if (saved is None or not act.activation.elementwise or conv is None
                or id(getattr(conv, "_forward_cls", None)) not in _CONVS
                or conv.next_functions[0][0] is not None):
            return None
        with torch.no_grad():
            prime = act.activation.prime(saved).flatten(2).gather(2, index.flatten(2))
            return conv, WinnerColumns(t.flatten(3), index, _low(prime), pool.input_shape)

    # ---- the hook: a covered layer's backward
    def parameters_of(self, ctx: Any, slots: dict[int, str],
                      input_index: Callable[[int, int], int]) -> list[tuple[Tensor, str]]:
        """The collected parameters among a layer call's inputs, with their roles."""
        found = []
        for slot, role in slots.items():
            inputs = ctx.next_functions
            index = input_index(slot, len(inputs))
            if index >= len(inputs):
                continue
            node = inputs[index][0]
            p = getattr(node, "variable", None)
            if p is None and type(node).__name__ == "SplitBackward0":
                raise NotCoveredError(f"{self._where(ctx)}: a parameter used in chunks "
                                      f"(MultiheadAttention's in_proj_weight) is not covered "
                                      f"by second-order quantities; they cover {COVERED}")
            if p is not None and id(p) in self.params:
                found.append((p, role))
        return found

    def _where(self, ctx: Any) -> str:
        for node, _ in ctx.next_functions:
            p = getattr(node, "variable", None)
            if p is not None and id(p) in self.modules:
                name, module = self.modules[id(p)]
                return f"{type(module).__name__} {name!r}"
        return f"the layer {type(ctx).__name__}"

    def __call__(self, kind: str, ctx: Any, delta: Tensor | None, a_prev: Any,
                 slots: dict[int, str] | None, input_index: Callable | None) -> bool:
        """One reporting layer call. True when it came from inside :meth:`push`'s vmapped
        backward (the caller then returns its gradients as they are)."""
        if self.walking:  # a reporting layer reached by the walk: not a covered family
            if slots and self.parameters_of(ctx, slots, input_index):
                raise NotCoveredError(
                    f"{self._where(ctx)} (a {kind} layer) is not covered by the second-order "
                    f"quantities ({', '.join(self.names)}); they cover {COVERED}")
            return True
        s = self.pending.pop(ctx, None)
        if kind not in ("linear", "conv2d", "conv", "embedding") or not _stops(ctx):
            if slots and self.parameters_of(ctx, slots, input_index):
                raise NotCoveredError(
                    f"{self._where(ctx)} (a {kind} layer) is not covered by the second-order "
                    f"quantities ({', '.join(self.names)}); they cover {COVERED}")
            return False
        if s is None:
            if not self.seeded:
                raise MissingLossError(
                    "second-order quantities: loss_fn was not called inside the collect "
                    "block on this model's output, so no loss Hessian reached "
                    f"{self._where(ctx)}")
            raise NotCoveredError(f"second-order quantities: no curvature reached "
                                  f"{self._where(ctx)} from the loss's input")
        saved = ctx.saved_tensors
        s = s if isinstance(s, WinnerColumns) else _low(s)
        down = ctx.next_functions[0][0] is not None  # does the input take a gradient?
        if kind == "linear":
            if hasattr(ctx, "activation"):  # Dense: the columns at a^l, through σ' first
                a_prev_, weight, bias, a = saved
                sp_from = sigma_from(ctx.activation, a_prev_, weight, bias, a)
                s = ctx.activation.delta(s, None if sp_from is None else _low(sp_from))
            weight = saved[1]
            forms = LinearCurvature(s, _low(a_prev))
            w = _low(weight).to(s.dtype)
            s_in = by_rows(s, lambda rows: rows @ w) if down else None  # BP2: Wᵀ S, per column
        elif kind in ("conv2d", "conv"):
            input, weight = saved
            if kind == "conv2d":  # Conv2d hands a^{l−1} unpadded: the odd "same" row here
                a_prev = pad_end(a_prev, ctx.extra)  # (ConvNd hands it padded already)
            forms = ConvCurvature(ctx, s, _low(a_prev), weight.shape)
            s_in = self._conv_down(ctx, s, a_prev, weight, input.shape[2:]) if down else None
        else:
            forms = EmbeddingCurvature(ctx, s, a_prev)
            s_in = None
        for p, role in self.parameters_of(ctx, slots or {}, input_index):
            self._take(p, role, forms)
        if s_in is not None:
            self.push(ctx.next_functions[0][0], s_in)
        return False

    @staticmethod
    def _conv_down(ctx: Any, s: Tensor, a_prev: Tensor, weight: Tensor,
                   size: torch.Size) -> Tensor:
        """BP2 of a convolution for the V columns: one transposed convolution of the V·N
        maps (V·N, C_out, *out) → (V·N, C_in, *size), the backward's own
        (``conv_input_grad``), onto the padded input, then cropped to ``size``."""
        w = _low(weight).to(s.dtype)
        args = (tuple(ctx.stride), tuple(ctx.padding), tuple(ctx.dilation), ctx.groups)
        crop = (..., *(slice(m) for m in size))
        return by_rows(s, lambda rows: conv_input_grad(rows, w, a_prev.shape[2:], *args)[crop])

    def _take(self, p: Tensor, role: str, forms: Any) -> None:
        rec = self.results.get(id(p))
        if rec is not None:
            raise NotCoveredError(
                f"parameter {self.names_of[id(p)]!r} is used by more than one layer call in "
                "one backward (shared weights): second-order quantities do not cover it")
        rec = self.results[id(p)] = {}
        full, a_factor = forms.s, None
        for name in self.names:
            forms.s = full[self.columns[name]]  # this name's columns: exact, or its draw
            if name.startswith("diag"):
                rec[name] = forms.diag(role)
            elif role == "bias":
                rec[name] = [forms.kron_g(role)]
            else:  # A depends on a^{l−1} only: formed once for kflr and kfac
                g_factor = forms.kron_g(role)
                a_factor = forms.kron_a() if a_factor is None else a_factor
                rec[name] = [g_factor, a_factor]
        forms.s = full

    def finish(self) -> None:
        """At the backward's end: each parameter's quantities, as BackPACK names them."""
        results, self.results = self.results, {}
        pending, self.pending = self.pending, {}
        self.seeded = False
        for i, rec in results.items():
            p = self.params[i]
            for name in self.names:
                value = rec[name]
                value = ([v.to(p.dtype) for v in value] if isinstance(value, list)
                         else value.to(p.dtype))
                setattr(p, name, value)
        if pending:
            raise RuntimeError("second-order quantities: the backward ended with curvature "
                               "left undelivered (a covered layer's backward did not run)")


# ---------------------------------------------------------------- the explicit engine
@torch.no_grad()
def network_curvature(net: nn.Module, x: Tensor, names: tuple[str, ...],
                      mc_samples: int = 1) -> None:
    """The second-order quantities for a ``bptorch.network.Network``: its cost's S at the
    output (the batch mean, as the engine's cost), then down its Dense layers by the same
    BP2 for V columns, forming each layer's quantities from S and a^{l−1}."""
    kind = {"quadratic": "quadratic", "cross_entropy": "sigmoid",
            "log_likelihood": "softmax"}[net.cost]
    plan = net._plan()
    activations, z_l, sp_from = net._feedforward(x, plan, keep_z_L=True)
    if kind == "quadratic":  # ½‖a − y‖² on a^L: S at a^L, then through σ' of the output
        f = activations[-1]
    else:  # the logits forms: S at z^L
        f = z_l
    parts, columns, start = [], {}, 0
    if any(n in EXACT for n in names):
        parts.append(sqrt_hessian(kind, "mean", f))
        for n in EXACT:
            columns[n] = slice(0, parts[-1].shape[0])
        start = parts[-1].shape[0]
    for name in names:
        if name in SAMPLED:
            parts.append(sqrt_hessian_sampled(kind, "mean", f, mc_samples))
            columns[name] = slice(start, start + mc_samples)
            start += mc_samples
    s = torch.cat(parts)
    if kind == "quadratic":
        s = plan[-1][3].delta(s, sp_from[-1])  # S at z^L = S at a^L ⊙ σ'(z^L)
    for l in range(len(plan) - 1, -1, -1):
        layer, weight, bias, _act = plan[l]
        forms = LinearCurvature(s, activations[l])
        for p, role in ((weight, "weight"), (bias, "bias")):
            for name in names:
                forms.s = s[columns[name]]
                if name.startswith("diag"):
                    value = forms.diag(role)
                elif role == "bias":
                    value = [forms.kron_g(role)]
                else:
                    value = [forms.kron_g(role), forms.kron_a()]
                setattr(p, name, value)
        if l:
            s = plan[l - 1][3].delta(s @ weight, sp_from[l - 1])  # BP2: (Wᵀ S) ⊙ σ'(z)


__all__ = ["COVERED", "Conv2dCurvature", "Curvature", "EmbeddingCurvature", "LinearCurvature",
           "MissingLossError", "NotCoveredError", "SECOND_ORDER", "loss_kind",
           "network_curvature", "sqrt_hessian", "sqrt_hessian_sampled"]
