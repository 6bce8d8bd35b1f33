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

import math
from typing import Any

import torch
from torch import Tensor, nn

from .functions.conv import conv2d_bwd, conv_unfold, conv_weight_grad
from .functions.products import _einsum_parse


def ghost_cheaper(t: int, p: int, d: int) -> bool:
    """Whether ‖g_n‖² of a (p, d) weight used at t rows (positions) per example is cheaper
    by the Gram form, Σ_{t,s} (a_t·a_s)(δ_t·δ_s), than by forming g_n = Σ_t δ_t a_tᵀ.

    The two t×t Grams cost t²(p + d) multiply-adds per example, g_n costs t·p·d; but
    g_n also gives Σ_n g_n, the layer's BP4, which the collector then no longer forms
    (``Collector.skip``), so forming g_n costs only its passes over N·p·d numbers beyond
    a plain step. The Gram form wins where it is under half of g_n's multiply-adds:
    t²(p + d) < t·p·d / 2, i.e. 2t(p + d) < p·d (measured on the CPU, one thread, at the
    benchmark's shapes: benchmarks/extensions.py; the issue's first rule, 2t² < p·d,
    compared the two forms' memory instead)."""
    return 2 * t * (p + d) < p * d


def _low(t: Tensor) -> Tensor:
    """Per-example arithmetic in float32 at least (δ is bfloat16 under autocast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _norm2(t: Tensor) -> Tensor:
    """‖t_n‖² of each row n, by one reduction: no t² the size of t (a^{l−1} of a wide
    input layer would double a step's peak memory)."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).square()


def _patches(a_prev: Tensor, kernel: tuple, stride: tuple, padding: tuple,
             dilation: tuple, out: tuple) -> Tensor:
    """a_col (N, C·K, P): a^{l−1} zero-padded, gathered at every tap t of every output
    position p, a_pad[p·s + t·dil], as ``conv_unfold`` gives it; here a strided view of
    a_pad copied once (ATen's im2col and an index_select measured 4-9× slower on the CPU
    at LeNet-5's shapes). Falls back to ``conv_unfold`` where the view would read past
    a_pad (positions beyond a convolution's own, as a transposed one may ask)."""
    dims = len(kernel)
    stride, padding, dilation = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
                                 for v in (stride, padding, dilation))
    a_pad = nn.functional.pad(a_prev, [v for p in reversed(padding) for v in (p, p)])
    n, c, *size = a_pad.shape
    if any((o - 1) * s + (k - 1) * d >= m
           for o, s, k, d, m in zip(out, stride, kernel, dilation, size)):
        return conv_unfold(a_prev, kernel, stride, padding, dilation, out)
    at = a_pad.stride()
    view = a_pad.as_strided(
        (n, c, *kernel, *out),  # (N, C, *taps, *positions)
        (at[0], at[1], *(m * d for m, d in zip(at[2:], dilation)),
         *(m * s for m, s in zip(at[2:], stride))))
    return view.reshape(n, c * math.prod(kernel), math.prod(out))


CHUNK = 1 << 17  # numbers of per-example gradient formed at once (512 KB in float32)
UNFOLD_CHUNK = 1 << 19  # numbers of a conv's unfold made at once (2 MB in float32): fewer,
# larger chunks than CHUNK, since each costs a few ops of Python (measured at LeNet-5)


def _by_chunks(n: int, numbers: int, form: Any) -> Tensor:
    """``form(rows)`` for the examples ``rows`` (a slice), over all N examples a chunk at
    a time and joined: ``numbers``, what one example's form holds at once (a conv's
    unfold), sets the chunk to about :data:`UNFOLD_CHUNK` numbers, so the (N, C·K, P)
    unfold of a whole batch (as large as a plain step's whole peak at LeNet-5's first
    layer) is never held."""
    step = max(1, UNFOLD_CHUNK // max(1, numbers))
    if step >= n:
        return form(slice(None))
    return torch.cat([form(slice(i, i + step)) for i in range(0, n, step)])


# ---------------------------------------------------------------- per-layer forms
class LayerCall:
    """One layer call's δ and a^{l−1}, and its parameters' per-example quantities.

    ``slots`` maps a position of the backward's gradient tuple to the parameter's role.
    Each method takes the role; ``c`` in :meth:`weighted_sum` is one weight per example
    (the clipping factors of ``bptorch.privacy``): Σ_n c_n g_n, BP4 with δ_n scaled.
    """

    slots: dict[int, str] = {}
    n: int  # the batch size
    sums_from_kept = True  # weighted_sum reads kept g_n first (else: :meth:`let_go` keeps δ)

    @staticmethod
    def input_index(slot: int, n_inputs: int) -> int:
        """The position of forward argument ``slot`` among the Function's tensor arguments
        (``ctx.next_functions`` lists only those): input, weight, bias by default."""
        return slot

    def grad_batch(self, role: str) -> Tensor:  # (N, *param shape)
        raise NotImplementedError

    def batch_l2(self, role: str) -> Tensor:  # (N,)
        return self.formed(role).flatten(1).square().sum(1)

    def sum_grad_squared(self, role: str) -> Tensor:  # param shape
        g_n = self.formed(role)
        return (g_n * g_n).sum(0)  # Σ_n g_n² (a product: faster than square's pow here)

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:  # param shape
        """Σ_n c_n g_n; ``c=None``: Σ_n g_n, the layer's own BP3/BP4 (what the collector
        adds to ``.grad`` when the layer skipped it: ``Collector.skip``)."""
        if (summed := self.from_kept(role, c)) is not None:
            return summed
        g_n = self.grad_batch(role)
        return g_n.sum(0) if c is None else torch.tensordot(c.to(g_n.dtype), g_n, 1)

    def quantities(self, role: str, l2: bool, squares: bool
                   ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """(‖g_n‖² if ``l2``, Σ_n g_n² if ``squares``, Σ_n g_n): the first-order quantities
        and the layer's own sum, for a layer that skipped its BP3/BP4 (``Collector.skip``)."""
        norms = self.batch_l2(role) if l2 else None
        sgs = self.sum_grad_squared(role) if squares else None
        return norms, sgs, self.weighted_sum(role, None)

    def formed(self, role: str) -> Tensor:
        """g_n of ``role``, formed once per call and kept (:meth:`kept`): the norm, the
        squares and the sum then share one per-example tensor."""
        g_n = self.__dict__.get("_kept", {}).get(role)
        return self.kept(role, self.grad_batch(role)) if g_n is None else g_n

    def kept(self, role: str, g_n: Tensor) -> Tensor:
        """``g_n`` (N, *param shape), kept for :meth:`weighted_sum` while this call lives:
        where the norm had to form the per-example gradients anyway, the (clipped) sum is
        Σ_n c_n g_n from them, cheaper than a second BP4. A collector that drops the call
        after the norm (``bptorch.extensions``) frees it at once."""
        self.__dict__.setdefault("_kept", {})[role] = g_n
        return g_n

    def let_go(self, roles: list[str]) -> None:
        """Drop δ and a^{l−1} once every role in ``roles`` has its g_n kept (the clipped
        sums then come from those alone): a private step need not hold a conv's δ maps
        to the backward's end for a g_n a fraction of their size."""
        kept = self.__dict__.get("_kept", {})
        if self.sums_from_kept and roles and all(role in kept for role in roles):
            for name in ("delta", "a", "delta_map", "a_prev", "x_hat"):
                self.__dict__.pop(name, None)

    def from_kept(self, role: str, c: Tensor | None) -> Tensor | None:
        """Σ_n c_n g_n (Σ_n g_n for ``c=None``) from the kept g_n, which it lets go, or
        None if no form kept them."""
        g_n = self.__dict__.get("_kept", {}).pop(role, None)
        if g_n is None:
            return None
        return g_n.sum(0) if c is None else torch.tensordot(c.to(g_n.dtype), g_n, 1)


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
        # BP4 per example: g_n = Σ_t δ_{n,t} a_{n,t}ᵀ = δ_nᵀ a_n, (N, p, d) contiguous
        return torch.bmm(self.delta.transpose(1, 2), self.a)

    def batch_l2(self, role: str) -> Tensor:
        if self.delta.shape[1] == 1:  # one row: ‖δ_n a_nᵀ‖² = ‖δ_n‖² ‖a_n‖², ‖δ_n‖² for b
            if "_delta2" not in self.__dict__:
                self._delta2 = _norm2(self.delta)
            return self._delta2 if role == "bias" else self._delta2 * _norm2(self.a)
        if role == "bias":
            return _norm2(self.formed(role))
        t, p, d = self.delta.shape[1], self.delta.shape[2], self.a.shape[2]
        if ghost_cheaper(t, p, d):  # ghost norm: ‖Σ_t δ_t a_tᵀ‖² = Σ_{t,s} (a_t·a_s)(δ_t·δ_s)
            gram_a = self.a @ self.a.transpose(1, 2)  # (N, T, T)
            gram_delta = self.delta @ self.delta.transpose(1, 2)
            return (gram_a * gram_delta).sum((1, 2))
        if role in self.__dict__.get("_kept", {}) or p * d <= t * (p + d):
            # g_n no larger than δ_n and a_n: formed and kept, the (clipped) sum from it
            return _norm2(self.formed(role))
        return self.quantities(role, True, False)[0]  # chunk by chunk, none of it kept

    def sum_grad_squared(self, role: str) -> Tensor:
        if role == "weight" and self.delta.shape[1] == 1:  # Σ_n δ_n² (a_n²)ᵀ, one matmul
            return self.delta[:, 0].square().t() @ self.a[:, 0].square()
        return super().sum_grad_squared(role)

    def quantities(self, role: str, l2: bool, squares: bool
                   ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """For a weight over T > 1 rows whose g_n must be formed (Σ_n g_n² asked, or the
        norm without the Gram form), one pass over chunks of examples: each chunk's g_n
        formed, its norms, squares and sum taken, and let go. The whole (N, p, d) is never
        held: at the LSTM's W_hh (512 × 128, batch 64) it is 17 MB, and forming it in
        cache-sized chunks measured 1.6× faster than at once."""
        t, p, d = self.delta.shape[1], self.delta.shape[2], self.a.shape[2]
        formed = role in self.__dict__.get("_kept", {})
        if (role != "weight" or t == 1 or formed
                or not (squares or (l2 and not ghost_cheaper(t, p, d)))):
            return super().quantities(role, l2, squares)
        step = max(1, CHUNK // (p * d))  # examples a chunk
        total = self.delta.new_zeros(p, d)
        sgs = self.delta.new_zeros(p, d) if squares else None
        norms = []
        for i in range(0, self.n, step):
            g_n = torch.bmm(self.delta[i:i + step].transpose(1, 2), self.a[i:i + step])  # BP4
            total += g_n.sum(0)  # per example: Σ_t δ_{n,t} a_{n,t}ᵀ; BP4 = Σ_n g_n
            if l2:
                norms.append(_norm2(g_n))  # ‖g_n‖²
            if squares:
                sgs += g_n.mul_(g_n).sum(0)  # Σ_n g_n²
        return (torch.cat(norms) if l2 else None), sgs, total

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        if (summed := self.from_kept(role, c)) is not None:  # Σ_n c_n g_n, g_n at hand
            return summed
        delta = self.delta if c is None else self.delta * c.to(self.dtype)[:, None, None]
        if role == "bias":  # each example's δ scaled (c=None: as it is)
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

    def _cols(self, shape: torch.Size, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """(δ_col (n, g, O/g, P), a_col (n, g, K, P)) of the examples ``rows``."""
        ctx, g = self.ctx, self.groups
        out = tuple(self.delta_map.shape[2:])
        a_col = _patches(self.a_prev[rows], tuple(shape[2:]), ctx.stride, ctx.padding,
                         ctx.dilation, out)  # (n, C·kh·kw, P)
        a_col = a_col.unflatten(1, (g, -1))  # (n, g, K, P)
        delta_map = self.delta_map[rows]
        delta_col = delta_map.reshape(delta_map.shape[0], g, self.c_out // g, -1)
        return delta_col, a_col

    def _shape(self) -> torch.Size:
        c_in = self.a_prev.shape[1] // self.groups
        return torch.Size((self.c_out, c_in, *self.kernel))

    def grad_batch(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta_map.sum((2, 3))  # BP3 per example: Σ_p δ_p
        shape = self._shape()

        def form(rows: slice) -> Tensor:
            delta_col, a_col = self._cols(shape, rows)
            return delta_col @ a_col.transpose(2, 3)  # BP4 per example: Σ_p δ_p a_col,pᵀ
        numbers = shape[1:].numel() * self.groups * self.delta_map[0, 0].numel()  # a_col's
        return _by_chunks(self.n, numbers, form).reshape(self.n, *shape)

    def batch_l2(self, role: str) -> Tensor:
        if role == "bias":
            return _norm2(self.formed(role))
        shape = self._shape()
        positions = self.delta_map[0, 0].numel()
        p, k = self.c_out // self.groups, shape[1:].numel()
        if ghost_cheaper(positions, p, k):  # ghost norm over positions, per group
            delta_col, a_col = self._cols(shape)
            gram_a = a_col.transpose(2, 3) @ a_col  # (N, g, P, P)
            gram_delta = delta_col.transpose(2, 3) @ delta_col
            return (gram_a * gram_delta).sum((1, 2, 3))
        return _norm2(self.formed(role))  # g_n formed: its sum comes from it too

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        if (summed := self.from_kept(role, c)) is not None:  # Σ_n c_n g_n, g_n at hand
            return summed
        delta = self.delta_map  # each example's δ scaled (c=None: as it is)
        if c is not None:
            delta = delta * c.to(self.dtype)[:, None, None, None]
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

    sums_from_kept = False  # its weighted_sum forms the sums from δ (its parts')

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

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        scaled = self.delta if c is None else self.delta * c.to(self.dtype)[self.key // self.v, None]
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

    sums_from_kept = False  # its weighted_sum forms the sums from δ (its parts')

    slots = {2: "weight_ih", 3: "weight_hh", 4: "bias_ih", 5: "bias_hh"}

    def __init__(self, ctx: Any, deltas: tuple, inputs: tuple, grads: tuple) -> None:
        (delta_ih, delta_hh), (x, h_prev) = deltas, inputs
        self.ih = TimeFirstLinearCall(ctx, delta_ih, x, grads)
        if delta_hh is delta_ih:  # one δ for both parts (all but the GRU): moved once
            h_rows = h_prev.movedim(1, 0)
            h_rows = h_rows.reshape(self.ih.n, -1, h_rows.shape[-1]).to(self.ih.dtype)
            self.hh: LinearCall = StepsCall(self.ih.delta, h_rows)
        else:
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

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        return LinearCall.weighted_sum(*self._part(role), c)

    def quantities(self, role: str, l2: bool, squares: bool
                   ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        return LinearCall.quantities(*self._part(role), l2, squares)


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


# ---------------------------------------------------------------- the layers of issue 21
class ConvNdCall(LayerCall):
    """Conv1d, Conv2d's N-d twin and Conv3d (``ConvNdFunction``): the linear layer on each
    patch, as :class:`Conv2dCall`, for any number of spatial dims. a_col (N, g, K, P) is
    a^{l−1} gathered at every tap of every output position (``conv_unfold``), δ_col
    (N, g, C_out/g, P); g_n = Σ_p δ_{n,p} a_col,n,pᵀ per group; the ghost norm over the P
    positions where :func:`ghost_cheaper`. The backward hands a^{l−1} already padded at
    the end ("same" with an even kernel)."""

    slots = {1: "weight", 2: "bias"}

    def __init__(self, ctx: Any, delta: Tensor, a_prev: Tensor, grads: tuple) -> None:
        self.n = delta.shape[0]
        self.dtype = _low(delta).dtype
        self.ctx, self.groups = ctx, ctx.groups
        self.delta_map, self.a_prev = delta.to(self.dtype), a_prev.to(self.dtype)
        self.kernel = None if grads[1] is None else tuple(grads[1].shape[2:])

    def _shape(self) -> torch.Size:  # (C_out, C_in/g, *k)
        c_in = self.a_prev.shape[1] // self.groups
        return torch.Size((self.delta_map.shape[1], c_in, *self.kernel))

    def _cols(self, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """(δ_col (n, g, C_out/g, P), a_col (n, g, C_in/g·K, P)) of the examples ``rows``."""
        ctx, g = self.ctx, self.groups
        a_col = _patches(self.a_prev[rows], self.kernel, ctx.stride, ctx.padding,
                         ctx.dilation, tuple(self.delta_map.shape[2:]))  # (n, C_in·K, P)
        delta_map = self.delta_map[rows]
        delta_col = delta_map.reshape(delta_map.shape[0], g, delta_map.shape[1] // g, -1)
        return delta_col, a_col.unflatten(1, (g, -1))

    def _positions(self) -> tuple[int, ...]:
        return tuple(range(2, self.delta_map.dim()))

    def grad_batch(self, role: str) -> Tensor:
        if role == "bias":
            return self.delta_map.sum(self._positions())  # BP3 per example: Σ_p δ_p
        def form(rows: slice) -> Tensor:
            delta_col, a_col = self._cols(rows)
            return delta_col @ a_col.transpose(2, 3)  # BP4 per example: Σ_p δ_p a_col,pᵀ
        k = math.prod(self.kernel)  # the unfold's numbers an example, either way round
        numbers = k * max(self.a_prev[0].numel(), self.delta_map[0].numel())
        return _by_chunks(self.n, numbers, form).reshape(self.n, *self._shape())

    def batch_l2(self, role: str) -> Tensor:
        if role == "bias":
            return _norm2(self.formed(role))
        if ghost_cheaper(*self._dims()):  # ghost norm over positions, per group
            delta_col, a_col = self._cols()
            gram_a = a_col.transpose(2, 3) @ a_col  # (N, g, P, P)
            gram_delta = delta_col.transpose(2, 3) @ delta_col
            return (gram_a * gram_delta).sum((1, 2, 3))
        return _norm2(self.formed(role))  # g_n formed: its sum comes from it too

    def _dims(self) -> tuple[int, int, int]:
        """(positions P, rows p, columns d) of the linear layer on each patch, per group:
        (δ's positions, C_out/g, C_in/g · K)."""
        g, k = self.groups, math.prod(self.kernel)
        return (self.delta_map[0, 0].numel(), self.delta_map.shape[1] // g,
                self.a_prev.shape[1] // g * k)

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        if (summed := self.from_kept(role, c)) is not None:  # Σ_n c_n g_n, g_n at hand
            return summed
        delta = self.delta_map  # each example's δ scaled (c=None: as it is)
        if c is not None:
            delta = delta * c.to(self.dtype).reshape(-1, *(1,) * (delta.dim() - 1))
        if role == "bias":
            return delta.sum((0, *self._positions()))  # BP3
        ctx = self.ctx  # BP4, the backward's own
        return conv_weight_grad(delta, self.a_prev, self.kernel, ctx.stride, ctx.padding,
                                ctx.dilation, ctx.groups)


class ConvTransposeNdCall(ConvNdCall):
    """ConvTranspose1d/2d/3d: z = T_Wᵀ a^{l−1} + b, weight (C_in, C_out/g, *k). Its BP4 is
    the convolution's with a^{l−1} and δ swapped (functions/conv.py): δ's patches gathered
    at a^{l−1}'s P positions, δ_col (N, g, C_out/g·K, P), and a (N, g, C_in/g, P), so
    g_n = Σ_p a_{n,p} δ_col,n,pᵀ per group, the ghost norm over a^{l−1}'s positions."""

    def _shape(self) -> torch.Size:  # (C_in, C_out/g, *k)
        c_out = self.delta_map.shape[1] // self.groups
        return torch.Size((self.a_prev.shape[1], c_out, *self.kernel))

    def _dims(self) -> tuple[int, int, int]:  # (a's positions, C_in/g, C_out/g · K)
        g, k = self.groups, math.prod(self.kernel)
        return (self.a_prev[0, 0].numel(), self.a_prev.shape[1] // g,
                self.delta_map.shape[1] // g * k)

    def _cols(self, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """The convolution's (δ_col, a_col) with the roles swapped: (a (n, g, C_in/g, P),
        δ_col (n, g, C_out/g·K, P)), of the examples ``rows``."""
        ctx, g = self.ctx, self.groups
        delta_col = _patches(self.delta_map[rows], self.kernel, ctx.stride, ctx.padding,
                             ctx.dilation, tuple(self.a_prev.shape[2:]))  # (n, C_out·K, P)
        a_prev = self.a_prev[rows]
        a = a_prev.reshape(a_prev.shape[0], g, a_prev.shape[1] // g, -1)
        return a, delta_col.unflatten(1, (g, -1))

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        if role == "bias":
            return super().weighted_sum(role, c)
        if (summed := self.from_kept(role, c)) is not None:  # Σ_n c_n g_n, g_n at hand
            return summed
        a = self.a_prev  # each example's term scaled (c=None: as it is)
        if c is not None:
            a = a * c.to(self.dtype).reshape(-1, *(1,) * (a.dim() - 1))
        ctx = self.ctx  # BP4, the backward's own: the convolution's, a and δ swapped
        return conv_weight_grad(a, self.delta_map, self.kernel, ctx.stride, ctx.padding,
                                ctx.dilation, ctx.groups)


class GroupNormCall(BatchNormEvalCall):
    """GroupNorm and InstanceNorm (statistics per example): y = γ ⊙ x̂ + β per channel on
    (N, C, *), so ∂C/∂γ_n = Σ_* δ ⊙ x̂ and ∂C/∂β_n = Σ_* δ over example n's positions, as
    BatchNorm's eval mode; x̂ is the backward's own, each example's statistics. Gradient
    slots (input, num_groups, weight, bias, eps)."""

    slots = {2: "weight", 3: "bias"}
    input_index = LayerNormCall.input_index


class PReLUCall(LayerCall):
    """a = max(z, 0) + α_c min(z, 0): the slope's BP4 per example, ∂C/∂α_c of example n =
    Σ δ_n ⊙ min(z_n, 0) over its positions of channel c (all of them for one slope), δ =
    ∂C/∂a. A 1-d input is one example (its one channel: torch's rule for 1-d input)."""

    slots = {1: "weight"}

    def __init__(self, ctx: Any, delta: Tensor, z: Tensor, grads: tuple) -> None:
        self.dtype = torch.promote_types(_low(delta).dtype, _low(z).dtype)
        per_element = delta.to(self.dtype) * z.to(self.dtype).clamp(max=0)
        if z.dim() < 2:
            per_element = per_element.reshape(1, *per_element.shape)  # one example
        self.n = per_element.shape[0]
        self.shape = grads[1].shape
        if self.shape.numel() == 1:  # one slope: every position of every channel
            self.g = per_element.reshape(self.n, -1).sum(1).reshape(self.n, *self.shape)
        else:  # (N, C): every dim but the examples' and the channels'
            self.g = per_element.sum(tuple(range(2, per_element.dim())))

    def grad_batch(self, role: str) -> Tensor:
        return self.g


class CellCall(RecurrentCall):
    """RNNCell and GRUCell, one step (N, H_in) batch-first: W_ih x + b_ih and W_hh h + b_hh
    are two linear layers, one row per example (g_n = δ_n x_nᵀ and δ_n h_nᵀ). A cell run
    over T steps uses its weights T times; :func:`stack_steps` joins the steps' rows into
    one (N, T, ·) linear call, so g_n = Σ_t δ_{n,t} x_{n,t}ᵀ and the ghost norm over T, as
    the layers'. Gradient slots (x, h, W_ih, W_hh, b_ih, b_hh)."""

    stackable = True  # the collector keeps each step's δ and a for :func:`stack_steps`

    def __init__(self, ctx: Any, deltas: tuple, inputs: tuple, grads: tuple) -> None:
        (delta_ih, delta_hh), (x, h_prev) = deltas, inputs
        self.ih = LinearCall(ctx, delta_ih, x, grads)
        self.hh = LinearCall(ctx, delta_hh, h_prev, grads)
        self.n, self.dtype = self.ih.n, self.ih.dtype


class LSTMCellCall(CellCall):
    """LSTMCell: as :class:`CellCall`, the gates' δ stacked (i; f; g; o); gradient slots
    (x, h, c, W_ih, W_hh, b_ih, b_hh)."""

    slots = LSTMCall.slots


class StepsCall(LinearCall):
    """The steps of a cell run over time as one linear call: δ (N, T, p) and a (N, T, d)."""

    def __init__(self, delta: Tensor, a: Tensor) -> None:
        self.n, self.dtype, self.delta, self.a = delta.shape[0], delta.dtype, delta, a


def stack_steps(calls: list[tuple[LayerCall, str]]) -> tuple[LayerCall, str]:
    """One (call, role) for a parameter used by the stackable calls ``calls`` (a cell's
    steps): their linear parts' rows joined on the step axis, g_n = Σ_t δ_{n,t} a_{n,t}ᵀ."""
    parts = [call._part(role) for call, role in calls]
    delta = torch.cat([part.delta for part, _ in parts], 1)  # (N, T, p)
    a = torch.cat([part.a for part, _ in parts], 1)  # (N, T, d)
    return StepsCall(delta, a), parts[0][1]


# ---------------------------------------------------------------- shared weights
def _linear_part(call: LayerCall, role: str) -> tuple[LayerCall, str]:
    """A recurrent layer's or cell's (call, role) as the linear part it is (ih or hh)."""
    return call._part(role) if isinstance(call, RecurrentCall) else (call, role)


def cross_l2(u: LayerCall, role_u: str, v: LayerCall, role_v: str,
             rows_u: slice | None = None, rows_v: slice | None = None,
             shape: tuple | None = None) -> Tensor:
    """⟨g_n^u, g_n^v⟩ of each example n (N,), for two uses u, v of one parameter (shared
    weights: tied, or a layer applied twice; ``rows_*``: the rows of a parameter of
    ``shape`` each use covers, None for all). Example n's gradient is Σ_u g_n^u, so

        ‖Σ_u g_n^u‖² = Σ_u ‖g_n^u‖² + 2 Σ_{u<v} ⟨g_n^u, g_n^v⟩.

    Two dense uses of a whole weight take the Gram form, as the ghost norm does:
    ⟨Σ_t δ_t^u a_t^uᵀ, Σ_s δ_s^v a_s^vᵀ⟩ = Σ_{t,s} (δ_t^u·δ_s^v)(a_t^u·a_s^v), for one
    row each (δ^u·δ^v)(a^u·a^v), with no g_n formed; otherwise the two g_n (each formed
    once per call and kept for its clipped sum), placed at their rows."""
    (lu, ru), (lv, rv) = _linear_part(u, role_u), _linear_part(v, role_v)
    dense = isinstance(lu, LinearCall) and isinstance(lv, LinearCall) and ru == rv == "weight"
    formed = "weight" in lu.__dict__.get("_kept", {}) or "weight" in lv.__dict__.get("_kept", {})
    if dense and rows_u == rows_v and not formed:
        if lu.delta.shape[1] == 1 and lv.delta.shape[1] == 1:  # (δ^u·δ^v)(a^u·a^v)
            return ((lu.delta * lv.delta).sum((1, 2)) * (lu.a * lv.a).sum((1, 2)))
        gram_a = lu.a @ lv.a.transpose(1, 2)  # (N, T_u, T_v): a_t^u·a_s^v
        gram_delta = lu.delta @ lv.delta.transpose(1, 2)  # δ_t^u·δ_s^v
        return (gram_a * gram_delta).sum((1, 2))
    g_u, g_v = lu.formed(ru), lv.formed(rv)
    if rows_u != rows_v:  # different (overlapping) rows: both placed in the whole shape
        g_u, g_v = _placed(g_u, rows_u, shape), _placed(g_v, rows_v, shape)
    return (g_u * g_v).flatten(1).sum(1)


def _placed(g_n: Tensor, rows: slice | None, shape: tuple) -> Tensor:
    """g_n (N, *rows' shape) at its rows of an (N, *shape) zero tensor."""
    if rows is None:
        return g_n
    whole = g_n.new_zeros(g_n.shape[0], *shape)
    whole[:, rows] = g_n
    return whole


# ---------------------------------------------------------------- products with a parameter
# A routed forward's own products (``x @ self.W``, ``self.gamma * x``, ``torch.einsum(...,
# self.W)``) with a parameter operand. As every layer's, the examples are dim 0 of the
# output δ and of the other operand; a parameter indexed by the examples themselves has no
# per-example gradient of its own, and a form not written here raises, never a guess.
def _no_form(op: str, why: str) -> NotImplementedError:
    return NotImplementedError(
        f"per-example quantities of a parameter operand of {op}: {why}. Supported: "
        "x @ W (W 2-d, x (N, *, k)), W @ x (W 2-d, x (N, *, k, n)), a parameter broadcast "
        "against (N, ...) in * (no example axis of its own), and einsum where the "
        "parameter's subscripts exclude the output's first (the examples') and repeat none")


class MatmulCall(LayerCall):
    """C = A B with one operand a 2-d parameter: a linear layer, so its per-example forms.
    B = W (k, n), A (N, *, k): z = a Wᵀ with Wᵀ = B, g_n = (Σ_t δ_{n,t} a_{n,t}ᵀ)ᵀ. A = W
    (m, k), B (N, *, k, n): each column j of B is a row, z_j = W b_j, g_n = Σ_j δ_{n,·j}
    b_{n,·j}ᵀ. The ghost norm over the rows either way (the norm ignores the transpose)."""

    sums_from_kept = False  # its weighted_sum forms the sums from δ (its parts')

    slots = {0: "input", 1: "other"}

    def __init__(self, ctx: Any, delta: Tensor, operands: tuple, grads: tuple) -> None:
        a, b = operands
        self.dtype = _low(delta).dtype
        self.parts: dict[str, tuple[LinearCall, bool]] = {}
        if grads[1] is not None and b.dim() == 2 and a.dim() >= 2:  # x @ W
            self.parts["other"] = (StepsCall(*_rows(delta, a, self.dtype)), True)
        if grads[0] is not None and a.dim() == 2 and b.dim() >= 3:  # W @ x
            rows = _rows(delta.transpose(-1, -2), b.transpose(-1, -2), self.dtype)
            self.parts["input"] = (StepsCall(*rows), False)
        self.n = delta.shape[0]

    def _part(self, role: str) -> tuple[LinearCall, bool]:
        part = self.parts.get(role)
        if part is None:
            raise _no_form("matmul", "the parameter is not 2-d, or the other operand has "
                           "no (N, ...) batch of its own")
        return part

    def grad_batch(self, role: str) -> Tensor:
        call, transposed = self._part(role)
        g = LinearCall.grad_batch(call, "weight")  # (N, p, d)
        return g.transpose(1, 2) if transposed else g

    def batch_l2(self, role: str) -> Tensor:
        return LinearCall.batch_l2(self._part(role)[0], "weight")

    def weighted_sum(self, role: str, c: Tensor | None) -> Tensor:
        call, transposed = self._part(role)
        g = LinearCall.weighted_sum(call, "weight", c)
        return g.t() if transposed else g


def _rows(delta: Tensor, a: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """δ (N, *, p) and a (N, *, d) as (N, T, p) and (N, T, d), a broadcast to δ's batch."""
    a = a.expand(*delta.shape[:-1], a.shape[-1])
    n = delta.shape[0]
    return (delta.reshape(n, -1, delta.shape[-1]).to(dtype),
            a.reshape(n, -1, a.shape[-1]).to(dtype))


class MulCall(LayerCall):
    """c = x ⊙ y with one operand a parameter P broadcast against (N, ...): example n's
    ∂C/∂P = δ_n ⊙ (the other operand)_n summed over the axes P was stretched along."""

    slots = {0: "input", 1: "other"}

    def __init__(self, ctx: Any, delta: Tensor, operands: tuple, grads: tuple) -> None:
        self.delta, self.operands, self.grads = delta, operands, grads
        self.n = delta.shape[0] if delta.dim() else 1
        self.dtype = _low(delta).dtype

    def grad_batch(self, role: str) -> Tensor:
        x, y = self.operands
        p, other = (x, y) if role == "input" else (y, x)
        delta = self.delta
        shape = (1,) * (delta.dim() - p.dim()) + tuple(p.shape)  # P aligned to δ
        if delta.dim() == 0 or (shape[0] != 1 and self.n != 1):
            raise _no_form("mul", "the parameter spans the output's dim 0 (the examples' "
                           "axis), so each example has its own entries of it")
        per = (delta * other).to(self.dtype)  # (N, ...): c = x ⊙ y → ∂C/∂P = δ ⊙ other
        stretched = tuple(d for d in range(1, per.dim()) if shape[d] == 1 and per.shape[d] != 1)
        if stretched:
            per = per.sum(stretched, keepdim=True)
        return per.reshape(self.n, *p.shape)


class EinsumCall(LayerCall):
    """C = einsum(s_1, …, s_k → out) with operand i a parameter: example n's ∂C/∂A_i is the
    backward's einsum with the examples' label (out's first) kept, δ and the other
    operands in, out[0] + s_i out. Forward arguments (equation, *operands)."""

    slots = {i + 1: f"operand{i}" for i in range(52)}  # as many as einsum has letters

    def __init__(self, ctx: Any, delta: Tensor, operands: tuple, grads: tuple) -> None:
        self.delta, self.operands, self.equation = delta, operands, ctx.equation
        self.n, self.dtype = delta.shape[0], _low(delta).dtype

    @staticmethod
    def input_index(slot: int, n_inputs: int) -> int:
        return slot - 1  # the equation is not a tensor

    def grad_batch(self, role: str) -> Tensor:
        i = int(role[len("operand"):])
        subs, out = _einsum_parse(self.equation, self.operands)
        s_i, e = subs[i], out[:1]
        others = [(s, t) for k, (s, t) in enumerate(zip(subs, self.operands)) if k != i]
        reached = set(out).union(*(set(s) for s, _ in others))
        if not e or e in s_i or len(set(s_i)) != len(s_i) or not set(s_i) <= reached:
            raise _no_form("einsum", f"equation {self.equation!r}, operand {i}")
        # C = Σ Π_k A_k  →  ∂C/∂A_i per example: the backward's einsum, the label e kept
        g = torch.einsum(",".join([out] + [s for s, _ in others]) + "->" + e + s_i,
                         self.delta.to(self.dtype),
                         *(t.to(self.dtype) for _, t in others))
        shape = self.operands[i].shape
        stretched = tuple(d + 1 for d, m in enumerate(shape) if m == 1 and g.shape[d + 1] != 1)
        if stretched:  # a size-1 dim broadcasting stretched: summed back
            g = g.sum(stretched, keepdim=True)
        return g



class BmmCall(LayerCall):
    """bmm with a parameter operand: refused (C_i = A_i B_i pairs batch entries, not
    examples; a shared matrix is matmul's x @ W)."""

    slots = {0: "input", 1: "mat2"}

    def __init__(self, ctx: Any, delta: Tensor, operands: tuple, grads: tuple) -> None:
        raise _no_form("bmm", "its batch entries pair A_i with B_i one to one, so a "
                       "parameter operand is one matrix per batch entry; a matrix shared "
                       "by the batch is matmul's x @ W")


KINDS: dict[str, type[LayerCall]] = {
    "linear": LinearCall, "conv2d": Conv2dCall, "embedding": EmbeddingCall,
    "layer_norm": LayerNormCall, "batch_norm_eval": BatchNormEvalCall,
    "recurrent": RecurrentCall, "lstm": LSTMCall,
    "conv": ConvNdCall, "conv_transpose": ConvTransposeNdCall, "group_norm": GroupNormCall,
    "prelu": PReLUCall, "cell": CellCall, "lstm_cell": LSTMCellCall,
    "matmul": MatmulCall, "mul": MulCall, "einsum": EinsumCall, "bmm": BmmCall,
}


__all__ = ["BatchNormEvalCall", "CellCall", "ConvNdCall", "ConvTransposeNdCall",
           "BmmCall", "EinsumCall", "GroupNormCall", "LSTMCellCall", "MatmulCall", "MulCall",
           "PReLUCall", "StepsCall", "stack_steps",
           "Conv2dCall", "EmbeddingCall", "KINDS", "LSTMCall", "LayerCall",
           "LayerNormCall", "LinearCall", "RecurrentCall", "TimeFirstLinearCall",
           "cross_l2", "ghost_cheaper"]
