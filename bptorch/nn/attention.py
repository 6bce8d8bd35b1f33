"""MultiheadAttention: ``torch.nn.MultiheadAttention``'s arguments, parameters and
state_dict keys, over bptorch's Linear and the written-out attention backward of
:mod:`bptorch.functions.attention`."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as torch_F
from torch import Tensor, nn

from .. import functional as BF
from .._checks import _shape, check_dropout_p, check_floating, check_same
from ..functions.attention import bool_to_bias, causal_bias
from .linear import Linear


class NonDynamicallyQuantizableLinear(Linear):
    """bptorch's Linear under the name torch gives MultiheadAttention's ``out_proj`` (there
    it only keeps the dynamic quantizer away); same parameters and state_dict keys."""


def _canonical_mask(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (True: *do not* attend, torch.nn's convention for these arguments) as
    an additive float one (−∞ there, 0 elsewhere); a float mask is added as it is."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return bool_to_bias(~mask, dtype)
    if not mask.is_floating_point():
        raise TypeError(f"only bool and floating-point {name} are supported, got {mask.dtype}")
    return mask


class MultiheadAttention(nn.Module):
    r"""MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O,
    head_i = softmax(Q W_i^Q (K W_i^K)ᵀ / √d + B) V W_i^V, d = embed_dim / num_heads.

    A drop-in for ``torch.nn.MultiheadAttention`` (same arguments, ``in_proj_weight``,
    ``in_proj_bias`` and ``out_proj`` parameters, the same state_dict keys, torch's init);
    the projections are bptorch Linears (BP3/BP4 in their backward) and each head's
    softmax attention is :class:`bptorch.functions.attention.AttentionFunction`, whose
    backward is dV = Aᵀ δ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS K/√d, dK = dSᵀ Q/√d.

    Args:
        embed_dim: E, the model's width (divisible by num_heads).
        num_heads: h, the parallel heads, each of width E/h.
        dropout: p of the dropout on the attention weights (training only).
        bias: whether the projections learn biases.
        batch_first: (N, L, E) input and output instead of (L, N, E).
        add_bias_kv: learn a key b^K and a value b^V (1, 1, E) appended to each sequence's
            keys and values after the projections (an extra key every query may attend to).
        add_zero_attn: append a key and a value of zeros (after the heads are split).
        kdim, vdim: the key's and value's features (default embed_dim); where either differs
            from embed_dim, W^Q, W^K, W^V are separate parameters ``q_proj_weight`` (E, E),
            ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim).

    Shape:
        query (L, N, E), key (S, N, kdim), value (S, N, vdim) (``batch_first``: N first),
        or unbatched (L, E), (S, kdim), (S, vdim); key_padding_mask (N, S) or (S,), True (bool) or
        −∞ (float) for keys to ignore; attn_mask (L, S) or (N·h, L, S), True (bool) for
        pairs *not* allowed, or added (float). Output (L, N, E) and weights (N, L, S)
        averaged over the heads, or (N, h, L, S) with ``average_attn_weights=False`` (S
        counts the keys add_bias_kv and add_zero_attn append). The output is laid out as
        torch's, (L, N, E) in memory (with ``batch_first`` a transposed view of it), so a
        dropout after it draws its mask on the same elements as torch's under one seed.

    A query whose every key is masked gets a zero attention row (its output is the
    out_proj bias) and its weights are 0. torch gives NaN for such rows when
    ``need_weights=True`` and 0 when ``need_weights=False`` (its SDPA path).

    Set ``recompute = True`` on an instance to save the row log-sum-exp rather than the
    attention probabilities for backward (see :mod:`bptorch.functions.attention`).

    Attributes:
        in_proj_weight: (3E, E), [W^Q; W^K; W^V] stacked, Xavier-uniform (None where kdim
            or vdim differs from E: then q_proj_weight, k_proj_weight, v_proj_weight, each
            Xavier-uniform).
        in_proj_bias: (3E,), zeros.
        out_proj: Linear(E, E), W^O U(−1/√E, 1/√E) and its bias zeros.
        bias_k, bias_v: (1, 1, E), Xavier-normal, with add_bias_kv (else None).
    """

    __constants__ = ["batch_first"]
    #: bptorch only: keep each row's log-sum-exp instead of the (N, h, L, S) attention
    #: probabilities for backward, and recompute them there (set ``mha.recompute = True``)
    recompute: bool = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads} instead")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads, got embed_dim="
                             f"{embed_dim} and num_heads={num_heads}")
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads, self.dropout = num_heads, check_dropout_p(dropout)
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:  # W^Q, W^K, W^V of different widths: three parameters, in torch's order
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias,
                                                        **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """As torch: Xavier-uniform in_proj_weight (or W^Q, W^K, W^V in turn), zero biases,
        Xavier-normal bias_k and bias_v (out_proj.weight keeps Linear's U(−1/√E, 1/√E),
        drawn first, as in torch)."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            nn.init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = self._check(query, key, value, key_padding_mask, attn_mask)
        if not batched:  # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            if attn_mask is not None and attn_mask.dim() == 3:  # (h, L, S): N·h with N = 1
                attn_mask = attn_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, L, E = query.shape
        S, h, d = key.shape[1], self.num_heads, self.head_dim
        # the keys appended to every sequence: b^K (add_bias_kv), then a zero (add_zero_attn)
        extra = (self.bias_k is not None) + bool(self.add_zero_attn)

        bias = self._attention_bias(n, L, S, extra, query, key_padding_mask, attn_mask,
                                    need_weights, is_causal)
        q, k, v = self._in_projection(query, key, value)
        if self.bias_k is not None:  # one more key and value, learnt: b^K, b^V
            k = torch.cat([k, self.bias_k.expand(n, 1, E)], 1)
            v = torch.cat([v, self.bias_v.expand(n, 1, E)], 1)
        if self.add_zero_attn:  # one more key and value, zeros (torch appends them per head)
            k = torch.cat([k, k.new_zeros(n, 1, E)], 1)
            v = torch.cat([v, v.new_zeros(n, 1, E)], 1)
        # (N, L, E) -> (N, h, L, d): each head attends over its own d columns
        q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0  # the mask drawn with torch's RNG
        o, a = BF.attention(q, k, v, bias, p, 1 / math.sqrt(d), recompute=self.recompute)
        # concat heads, then W^O on an (N, L, E) view of rows in torch's order (L, N), so the
        # examples sit on dim 0 for per-example quantities (bptorch.extensions); the output
        # is then laid out (L, N, E) in memory as torch's, whatever batch_first says
        out = self.out_proj(o.permute(2, 0, 1, 3).reshape(L, n, E).transpose(0, 1))
        out = out.transpose(0, 1).contiguous()

        weights = None
        if need_weights:
            weights = a.mean(1) if average_attn_weights else a
        if not batched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        elif self.batch_first:
            out = out.transpose(0, 1)  # a view, as torch's batch_first output
        return out, weights

    def _in_projection(self, query: Tensor, key: Tensor, value: Tensor):
        """Q W^Qᵀ + b^Q, K W^Kᵀ + b^K, V W^Vᵀ + b^V, one GEMM when they share the input."""
        w, b = self.in_proj_weight, self.in_proj_bias
        b_q, b_k, b_v = b.chunk(3) if b is not None else (None, None, None)
        if not self._qkv_same_embed_dim:  # kdim or vdim ≠ E: three separate weights
            return (BF.linear(query, self.q_proj_weight, b_q),
                    BF.linear(key, self.k_proj_weight, b_k),
                    BF.linear(value, self.v_proj_weight, b_v))
        if query is key and key is value:  # self-attention
            return BF.linear(query, w, b).chunk(3, -1)
        w_q, w_k, w_v = w.chunk(3)
        return BF.linear(query, w_q, b_q), BF.linear(key, w_k, b_k), BF.linear(value, w_v, b_v)

    def _attention_bias(self, n: int, L: int, S: int, extra: int, query: Tensor,
                        key_padding_mask: Tensor | None, attn_mask: Tensor | None,
                        need_weights: bool, is_causal: bool) -> Tensor | None:
        """The additive mask B, broadcastable to (N, h, L, S + extra), from torch's
        arguments; the ``extra`` keys appended (bias_k, the zero key) are never masked."""
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch); "
                               "e.g. torch.nn.Transformer.generate_square_subsequent_mask(L)")
        kpm = _canonical_mask(key_padding_mask, "key_padding_mask", query.dtype)
        if is_causal and kpm is None and not need_weights:
            # torch then takes the hint, not the mask: key j ≤ i over all S + extra keys
            return causal_bias(L, S + extra, query)
        bias = _canonical_mask(attn_mask, "attn_mask", query.dtype)
        if bias is not None:
            check_same("attn_mask", bias, "query", query)
            bias = torch_F.pad(bias, (0, extra)) if extra else bias
            bias = bias.view(n, self.num_heads, L, S + extra) if bias.dim() == 3 else bias
        if kpm is not None:
            check_same("key_padding_mask", kpm, "query", query)
            kpm = torch_F.pad(kpm, (0, extra)) if extra else kpm
            kpm = kpm.view(n, 1, 1, S + extra)
            bias = kpm if bias is None else bias + kpm
        return bias

    def _check(self, query: Tensor, key: Tensor, value: Tensor,
               key_padding_mask: Tensor | None, attn_mask: Tensor | None) -> bool:
        """Shapes as torch's _mha_shape_check, with what was expected in each message;
        returns whether the input is batched."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            check_floating(name, t)
            if t is not query:
                check_same(name, t, "query", query)
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "expected query, key and value all 3-dim (batched: (L, N, E), or (N, L, E) "
                "with batch_first) or all 2-dim (unbatched: (L, E)), got shapes "
                f"{_shape(query)}, {_shape(key)} and {_shape(value)}")
        for name, t, dim, arg in (("query", query, self.embed_dim, "embed_dim"),
                                  ("key", key, self.kdim, "kdim"),
                                  ("value", value, self.vdim, "vdim")):
            if t.shape[-1] != dim:
                raise ValueError(f"expected {name} with {arg}={dim} features (last dim), got "
                                 f"shape {_shape(t)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"expected key and value of the same shape but the last dim, got "
                             f"{_shape(key)} and {_shape(value)}")
        seq, batch = (1, 0) if self.batch_first else (0, 1)
        if batched and query.shape[batch] != key.shape[batch]:
            raise ValueError(f"expected query and key with the same batch size (dim {batch}), "
                             f"got {_shape(query)} and {_shape(key)}")
        L = query.shape[seq] if batched else query.shape[0]
        S = key.shape[seq] if batched else key.shape[0]
        n = query.shape[batch] if batched else 1
        if key_padding_mask is not None:
            want = (n, S) if batched else (S,)
            if _shape(key_padding_mask) != want:
                raise ValueError(f"expected key_padding_mask of shape {want} "
                                 f"({'(N, S)' if batched else '(S,)'}), got "
                                 f"{_shape(key_padding_mask)}")
        if attn_mask is not None:
            ok = {(L, S), (n * self.num_heads, L, S)} if batched else \
                {(L, S), (self.num_heads, L, S)}
            if _shape(attn_mask) not in ok:
                raise ValueError(f"expected attn_mask of shape (L, S) = {(L, S)} or "
                                 f"(N·num_heads, L, S) = {(n * self.num_heads, L, S)}, got "
                                 f"{_shape(attn_mask)}")
        return batched


__all__ = ["MultiheadAttention", "NonDynamicallyQuantizableLinear"]
