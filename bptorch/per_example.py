"""Each layer family's per-example gradients, from the δ and a^{l−1} its backward hands
to a collector (``bptorch.extensions``, ``bptorch.privacy``): the math of
docs/extensions.md, one class per family.

A batch's BP4 is Σ_n δ_n a_nᵀ; example n's term is g_n = δ_n a_nᵀ (Σ_t over the rows an
example has: a sequence's steps, a convolution's positions). Each class gives, per
parameter role, g_n itself, ‖g_n‖² by its cheapest form (‖δ_n‖²‖a_n‖², or the Gram
"ghost norm" Σ_{t,s} (a_t·a_s)(δ_t·δ_s) where :func:`ghost_cheaper`), Σ_n g_n², and
Σ_n c_n g_n (BP4 with δ_n scaled, for clipping).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .functions.conv import conv2d_bwd


def ghost_cheaper(t: int, p: int, d: int) -> bool:
    """Whether ‖g_n‖² of a (p, d) weight used at t rows (positions) per example is cheaper
    by the Gram form, Σ_{t,s} (a_t·a_s)(δ_t·δ_s), two t×t Grams, than by forming g_n."""
    return 2 * t * t < p * d


def _low(t: Tensor) -> Tensor:
    """Per-example arithmetic in float32 at least (δ is bfloat16 under autocast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _norm2(t: Tensor) -> Tensor:
    """‖t_n‖² of each row n, by one reduction: no t² the size of t (a^{l−1} of a wide
    input layer would double a step's peak memory)."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).square()


# ---------------------------------------------------------------- per-layer forms
class LayerCall:
    """One layer call's δ and a^{l−1}, and its parameters' per-example quantities.

    ``slots`` maps a position of the backward's gradient tuple to the parameter's role.
    Each method takes the role; ``c`` in :meth:`weighted_sum` is one weight per example
    (the clipping factors of ``bptorch.privacy``): Σ_n c_n g_n, BP4 with δ_n scaled.
    """

    slots: dict[int, str] = {}
    n: int  # the batch size

    @staticmethod
    def input_index(slot: int, n_inputs: int) -> int:
        """The position of forward argument ``slot`` among the Function's tensor arguments
        (``ctx.next_functions`` lists only those): input, weight, bias by default."""
        return slot

    def grad_batch(self, role: str) -> Tensor:  # (N, *param shape)
        raise NotImplementedError

    def batch_l2(self, role: str) -> Tensor:  # (N,)
        return self.grad_batch(role).flatten(1).square().sum(1)

    def sum_grad_squared(self, role: str) -> Tensor:  # param shape
        return self.grad_batch(role).square().sum(0)

    def weighted_sum(self, role: str, c: Tensor) -> Tensor:  # param shape
        return torch.tensordot(c.to(self.dtype), self.grad_batch(role), 1)

    def kept(self, role: str, g_n: Tensor) -> Tensor:
        """``g_n`` (N, *param shape), kept for :meth:`weighted_sum` while this call lives:
        where the norm had to form the per-example gradients anyway, the clipped sum is
        Σ_n c_n g_n from them, cheaper than a second BP4. A collector that drops the call
        after the norm (``bptorch.extensions``) frees it at once."""
        self.__dict__.setdefault("_kept", {})[role] = g_n
        return g_n

    def from_kept(self, role: str, c: Tensor) -> Tensor | None:
        """Σ_n c_n g_n from the kept g_n, or None if the norm did not form them."""
        g_n = self.__dict__.get("_kept", {}).pop(role, None)
        return None if g_n is None else torch.tensordot(c.to(g_n.dtype), g_n, 1)


class LinearCall(LayerCall):
    """z = a_prev Wᵀ + b on (N, *, d): g_n = Σ_t δ_{n,t} a_{n,t}ᵀ over the extra axes *.
    ``batch_dim=1`` reads time-first (T, N, d) tensors (the recurrent layers)."""

    slots = {1: "weight", 2: "bias"}

    batch_dim = 0

    def __init__(self, ctx: Any, delta: Tensor, a_prev: Tensor, grads: tuple) -> None:
        batch_dim = self.batch_dim
        if batch_dim:
            delta, a_prev = delta.movedim(batch_dim, 0), a_prev.movedim(batch_dim, 0)
        self.n = delta.shape[0]
        self.dtype = torch.promote_types(_low(delta).dtype, _low(a_prev).dtype)
        # (N, T, p) and (N, T, d): T = 1 for one row per example
        self.delta = delta.reshape(self.n, -1, delta.shape[-1]).to(self.dtype)
        self.a = a_prev.reshape(self.n, -1, a_prev.shape[-1]).to(self.dtype)

    def grad_batch(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta.sum(1)  # BP3 per example: Σ_t δ_{n,t}
        return torch.einsum("ntp,ntd->npd", self.delta, self.a)  # BP4 per example

    def batch_l2(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta.sum(1).square().sum(1)
        if self.delta.shape[1] == 1:  # ‖δ_n a_nᵀ‖² = ‖δ_n‖² ‖a_n‖²
            return _norm2(self.delta) * _norm2(self.a)
        t, p, d = self.delta.shape[1], self.delta.shape[2], self.a.shape[2]
        if ghost_cheaper(t, p, d):  # ghost norm: Σ_{t,s} (a_t·a_s)(δ_t·δ_s)
            gram_a = self.a @ self.a.transpose(1, 2)  # (N, T, T)
            gram_delta = self.delta @ self.delta.transpose(1, 2)
            return (gram_a * gram_delta).sum((1, 2))
        return self.kept(role, self.grad_batch(role)).flatten(1).square().sum(1)

    def sum_grad_squared(self, role: str) -> Tensor:
        if role == "weight" and self.delta.shape[1] == 1:  # Σ_n δ_n² (a_n²)ᵀ, one matmul
            return self.delta[:, 0].square().t() @ self.a[:, 0].square()
        return super().sum_grad_squared(role)

    def weighted_sum(self, role: str, c: Tensor) -> Tensor:
        if (summed := self.from_kept(role, c)) is not None:  # Σ_n c_n g_n, g_n at hand
            return summed
        delta = self.delta * c.to(self.dtype)[:, None, None]  # each example's δ scaled
        if role == "bias":
            return delta.sum((0, 1))  # BP3
        p, d = delta.shape[2], self.a.shape[2]
        return delta.reshape(-1, p).t() @ self.a.reshape(-1, d)  # BP4


class Conv2dCall(LayerCall):
    """The linear layer on each patch: a_col (N, g, K, P) by unfold, δ (N, g, C_out/g, P);
    g_n = Σ_p δ_{n,p} a_col,n,pᵀ per group, the ghost norm over the P positions."""

    slots = {1: "weight", 2: "bias"}

    def __init__(self, ctx: Any, delta: Tensor, a_prev: Tensor, grads: tuple) -> None:
        self.n = delta.shape[0]
        self.dtype = _low(delta).dtype
        self.kernel = ctx.kernel_size
        (eh, ew) = ctx.extra
        if eh or ew:  # "same" with an even kernel: the odd padding row, as the backward
            a_prev = nn.functional.pad(a_prev, (0, ew, 0, eh))
        self.ctx, self.delta_map, self.a_prev = ctx, delta.to(self.dtype), a_prev.to(self.dtype)
        self.groups = ctx.groups
        self.c_out = delta.shape[1]

    def _cols(self, shape: torch.Size) -> tuple[Tensor, Tensor]:
        ctx, g = self.ctx, self.groups
        kh, kw = shape[2:]
        a_col = nn.functional.unfold(self.a_prev, (kh, kw), ctx.dilation, ctx.padding,
                                     ctx.stride)  # (N, C·kh·kw, P)
        a_col = a_col.unflatten(1, (g, -1))  # (N, g, K, P)
        delta_col = self.delta_map.reshape(self.n, g, self.c_out // g, -1)  # (N, g, O/g, P)
        return delta_col, a_col

    def _shape(self) -> torch.Size:
        c_in = self.a_prev.shape[1] // self.groups
        return torch.Size((self.c_out, c_in, *self.kernel))

    def grad_batch(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta_map.sum((2, 3))  # BP3 per example: Σ_p δ_p
        delta_col, a_col = self._cols(self._shape())
        g_n = torch.einsum("ngop,ngkp->ngok", delta_col, a_col)  # BP4 per example
        return g_n.reshape(self.n, *self._shape())

    def batch_l2(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta_map.sum((2, 3)).square().sum(1)
        delta_col, a_col = self._cols(self._shape())
        positions, p, k = a_col.shape[3], delta_col.shape[2], a_col.shape[2]
        if ghost_cheaper(positions, p, k):  # ghost norm over positions, per group
            gram_a = a_col.transpose(2, 3) @ a_col  # (N, g, P, P)
            gram_delta = delta_col.transpose(2, 3) @ delta_col
            return (gram_a * gram_delta).sum((1, 2, 3))
        g_n = torch.einsum("ngop,ngkp->ngok", delta_col, a_col)  # BP4 per example
        return self.kept(role, g_n).square().sum((1, 2, 3))

    def weighted_sum(self, role: str, c: Tensor) -> Tensor:
        if (summed := self.from_kept(role, c)) is not None:  # Σ_n c_n g_n, g_n at hand
            return summed.reshape(self._shape())
        delta = self.delta_map * c.to(self.dtype)[:, None, None, None]  # δ_n scaled
        if role == "bias":
            return delta.sum((0, 2, 3))  # BP3
        ctx = self.ctx
        weight = self.a_prev.new_empty(self._shape())  # BP4 reads only its shape
        return conv2d_bwd(delta, self.a_prev, weight, ctx.stride, ctx.padding, ctx.dilation,
                          ctx.groups, (False, True))[1]  # BP4, the backward's own


class EmbeddingCall(LayerCall):
    """z = W e_i: example n's gradient is its δ rows added into the table rows it looked
    up, g_n = Σ_t δ_{n,t} e_{i_{n,t}}ᵀ. The (example, row) pairs that occur are few: they
    are gathered once (``unique``), so no (N, V, D) tensor except for ``grad_batch``."""

    slots = {1: "weight"}

    def __init__(self, ctx: Any, delta: Tensor, index: Tensor, grads: tuple) -> None:
        self.n = index.shape[0] if index.dim() else 1
        self.v = ctx.num_embeddings
        self.dtype = _low(delta).dtype
        index = index.reshape(self.n, -1)  # (N, T)
        delta = delta.reshape(self.n, -1, delta.shape[-1]).to(self.dtype)  # (N, T, D)
        flat = index.reshape(-1)
        if ctx.scale_grad_by_freq:  # as the backward: δ over its index's count in the batch
            counts = torch.bincount(flat, minlength=self.v)
            delta = delta / counts[index].unsqueeze(-1).to(delta.dtype)
        if ctx.padding_idx is not None:  # the padding row gets nothing
            delta = delta * (index != ctx.padding_idx).unsqueeze(-1).to(delta.dtype)
        example = torch.arange(self.n, device=index.device).repeat_interleave(index.shape[1])
        self.key = example * self.v + flat  # one key per (example, row)
        self.delta = delta.reshape(-1, delta.shape[-1])  # (N·T, D)

    def _rows(self) -> tuple[Tensor, Tensor]:
        """(keys, rows): each (example, table row) pair once, with its summed δ."""
        keys, inverse = torch.unique(self.key, return_inverse=True)
        rows = self.delta.new_zeros(keys.shape[0], self.delta.shape[1])
        return keys, rows.index_add_(0, inverse, self.delta)

    def grad_batch(self, role: str) -> Tensor:
        g = self.delta.new_zeros(self.n * self.v, self.delta.shape[1])
        return g.index_add_(0, self.key, self.delta).reshape(self.n, self.v, -1)

    def batch_l2(self, role: str) -> Tensor:
        keys, rows = self._rows()
        l2 = rows.new_zeros(self.n)
        return l2.index_add_(0, keys // self.v, rows.square().sum(1))

    def sum_grad_squared(self, role: str) -> Tensor:
        keys, rows = self._rows()
        sgs = rows.new_zeros(self.v, rows.shape[1])
        return sgs.index_add_(0, keys % self.v, rows.square())

    def weighted_sum(self, role: str, c: Tensor) -> Tensor:
        scaled = self.delta * c.to(self.dtype)[self.key // self.v, None]
        table = scaled.new_zeros(self.v, scaled.shape[1])
        return table.index_add_(0, self.key % self.v, scaled)  # BP4, δ_n scaled


class LayerNormCall(LayerCall):
    """y = γ ⊙ x̂ + β on (N, *, *normalized_shape): x̂ plays a^{l−1}, so
    ∂C/∂γ_n = Σ_* δ ⊙ x̂ and ∂C/∂β_n = Σ_* δ, the sums over example n's rows.
    Per-example γ and β are as small as the parameters: formed directly."""

    slots = {2: "weight", 3: "bias"}

    @staticmethod
    def input_index(slot: int, n_inputs: int) -> int:
        # (input, normalized_shape, weight, bias, eps): input, then γ, then β (last)
        return 1 if slot == 2 else n_inputs - 1

    def __init__(self, ctx: Any, delta: Tensor, x_hat: Tensor, grads: tuple) -> None:
        self.n = delta.shape[0]
        self.dtype = torch.promote_types(_low(delta).dtype, _low(x_hat).dtype)
        shape = (self.n, -1, *ctx.normalized_shape)
        self.delta = delta.to(self.dtype).reshape(shape)
        self.x_hat = x_hat.to(self.dtype).reshape(shape)

    def grad_batch(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta.sum(1)  # ∂C/∂β_n = Σ δ
        return (self.delta * self.x_hat).sum(1)  # ∂C/∂γ_n = Σ δ ⊙ x̂


class TimeFirstLinearCall(LinearCall):
    """A linear map applied at every step of a time-first (T, N, d) sequence."""

    batch_dim = 1


class RecurrentCall(LayerCall):
    """One layer and direction of an RNN or GRU: z_t = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh
    is two linear layers over the T steps, so g_n = Σ_t δ_{n,t} x_{n,t}ᵀ and
    Σ_t δ_{n,t} h_{n,t−1}ᵀ: BP4 through time, per example (the GRU's hidden part has its
    own δ, r ⊙ δ_n). Gradient slots (x, h0, W_ih, W_hh, b_ih, b_hh)."""

    slots = {2: "weight_ih", 3: "weight_hh", 4: "bias_ih", 5: "bias_hh"}

    def __init__(self, ctx: Any, deltas: tuple, inputs: tuple, grads: tuple) -> None:
        (delta_ih, delta_hh), (x, h_prev) = deltas, inputs
        self.ih = TimeFirstLinearCall(ctx, delta_ih, x, grads)
        self.hh = TimeFirstLinearCall(ctx, delta_hh, h_prev, grads)
        self.n, self.dtype = self.ih.n, self.ih.dtype

    def _part(self, role: str) -> tuple[LinearCall, str]:
        kind, part = role.split("_")
        return (self.ih if part == "ih" else self.hh), kind

    def grad_batch(self, role: str) -> Tensor:
        return LinearCall.grad_batch(*self._part(role))

    def batch_l2(self, role: str) -> Tensor:
        return LinearCall.batch_l2(*self._part(role))

    def sum_grad_squared(self, role: str) -> Tensor:
        return LinearCall.sum_grad_squared(*self._part(role))

    def weighted_sum(self, role: str, c: Tensor) -> Tensor:
        return LinearCall.weighted_sum(*self._part(role), c)


class LSTMCall(RecurrentCall):
    """The LSTM: as :class:`RecurrentCall`, the gates' δ stacked (i; f; g; o); gradient
    slots (x, h0, c0, W_ih, W_hh, b_ih, b_hh)."""

    slots = {3: "weight_ih", 4: "weight_hh", 5: "bias_ih", 6: "bias_hh"}


class BatchNormEvalCall(LayerCall):
    """BatchNorm with fixed (running) statistics, y = γ ⊙ x̂ + β per channel, on
    (N, C, *): ∂C/∂γ_n = Σ_* δ ⊙ x̂ and ∂C/∂β_n = Σ_* δ over example n's positions."""

    slots = {1: "weight", 2: "bias"}

    @staticmethod
    def input_index(slot: int, n_inputs: int) -> int:
        # (input, γ, β, running_mean, running_var): β sits before the two statistics
        return 1 if slot == 1 else n_inputs - 3

    def __init__(self, ctx: Any, delta: Tensor, x_hat: Tensor, grads: tuple) -> None:
        self.n = delta.shape[0]
        self.dtype = torch.promote_types(_low(delta).dtype, _low(x_hat).dtype)
        shape = (self.n, delta.shape[1], -1)  # (N, C, positions)
        self.delta = delta.to(self.dtype).reshape(shape)
        self.x_hat = x_hat.to(self.dtype).expand(delta.shape).reshape(shape)

    def grad_batch(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta.sum(2)  # ∂C/∂β_n = Σ δ
        return (self.delta * self.x_hat).sum(2)  # ∂C/∂γ_n = Σ δ ⊙ x̂


KINDS: dict[str, type[LayerCall]] = {
    "linear": LinearCall, "conv2d": Conv2dCall, "embedding": EmbeddingCall,
    "layer_norm": LayerNormCall, "batch_norm_eval": BatchNormEvalCall,
    "recurrent": RecurrentCall, "lstm": LSTMCall,
}


__all__ = ["BatchNormEvalCall", "Conv2dCall", "EmbeddingCall", "KINDS", "LSTMCall", "LayerCall",
           "LayerNormCall", "LinearCall", "RecurrentCall", "TimeFirstLinearCall",
           "ghost_cheaper"]
