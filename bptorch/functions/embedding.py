"""Embedding: a lookup table whose backward is a scatter-add into the rows used.

An embedding is the linear layer on one-hot inputs: with e_i the one-hot column of index
i, z = W e_i is row i of the table. BP4 for that layer, ∂C/∂W = δ e_iᵀ, is δ written into
row i and zero elsewhere, so a batch's gradient adds each example's δ into the row it
looked up (rows used twice get the sum):

    seed (one example, one-hot e_i)      code (any index shape (*), table (V, D))
    z = W e_i                            z = weight[input]                (*, D)
    ∂C/∂W = δ e_iᵀ          (BP4)        grad_weight.index_add_(0, input.flatten(), δ)

No error is passed down: the indices are not differentiable. Under ``torch.autocast``
the lookup runs in the table's dtype, as torch's (embedding is on neither of its lists). The row ``padding_idx``
gets no gradient (it stays fixed, usually at zero); ``scale_grad_by_freq`` divides each
δ by the number of times its index occurs in the batch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import PER_EXAMPLE, BPFunction, moved, per_example


def embedding_fwd(input: Tensor, weight: Tensor) -> Tensor:
    """z = row ``input`` of the table: (*) indices -> (*, D)."""
    return weight.index_select(0, input.reshape(-1)).reshape(*input.shape, weight.shape[1])


def embedding_bwd(delta: Tensor, input: Tensor, num_embeddings: int,
                  padding_idx: int | None, scale_grad_by_freq: bool,
                  need: tuple[bool, ...]) -> tuple[None, Tensor | None]:
    """(None, ∂C/∂W) of :func:`embedding_fwd`: each δ added into the row its index looked
    up (BP4 on one-hot inputs); the indices get no gradient."""
    if not need[1]:
        return None, None
    index = input.reshape(-1)
    delta = delta.reshape(-1, delta.shape[-1])  # (*, D) -> (rows, D)
    if scale_grad_by_freq:
        counts = torch.bincount(index, minlength=num_embeddings)  # occurrences in the batch
        delta = delta / counts[index].unsqueeze(1).to(delta.dtype)
    if padding_idx is not None:
        delta = delta * (index != padding_idx).unsqueeze(1).to(delta.dtype)  # padding row: 0
    grad_weight = delta.new_zeros(num_embeddings, delta.shape[1])
    # z = W e_i  →  BP4: dW = Σ δ e_iᵀ, a scatter-add into rows; in place on the fresh
    # zeros (no second table)
    return None, grad_weight.index_add_(0, index, delta)


class EmbeddingFunction(BPFunction):
    """z = W e_i, row i of the table, for each index i of the input.

    Backward, given δ = ∂C/∂z: ∂C/∂W = Σ δ e_iᵀ (BP4 for one-hot inputs), a scatter-add
    of the δ rows into the table rows they came from; the row ``padding_idx`` gets none.

    Batch-first: input (*) integer indices, weight (V, D), output (*, D). Saves the
    indices only (as torch).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, padding_idx: int | None = None,
                scale_grad_by_freq: bool = False) -> Tensor:
        return embedding_fwd(input, weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, padding_idx, scale_grad_by_freq = inputs
        ctx.num_embeddings = weight.shape[0]
        ctx.padding_idx, ctx.scale_grad_by_freq = padding_idx, scale_grad_by_freq
        ctx.save_for_backward(input)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (input,) = ctx.saved_tensors
        grads = embedding_bwd(grad_output, input, ctx.num_embeddings, ctx.padding_idx,
                              ctx.scale_grad_by_freq, ctx.needs_input_grad)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and the indices to it
            grads = per_example("embedding", ctx, grads, grad_output, input)
        return (*grads, None, None)


__all__ = ["EmbeddingFunction", "embedding_bwd", "embedding_fwd"]

# moved out of this file (one release): the input checks
__getattr__ = moved(__name__, {"check_embedding": "bptorch._checks",
                               "wrap_padding_idx": "bptorch._checks"})
