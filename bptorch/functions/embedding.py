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

from .base import (PER_EXAMPLE, BPFunction, count_launch, kernel_family, kernel_op, moved,
                   per_example, use_kernel)


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
        ctx.kernel = use_kernel(weight)  # bptorch.kernels: the scatter-add kernel, for backward
        ctx.save_for_backward(input)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (input,) = ctx.saved_tensors
        # bptorch.kernels: the scatter-add in one kernel (the file's end), outside create_graph
        bwd = (embedding_bwd_triton if ctx.kernel and not torch.is_grad_enabled()
               else embedding_bwd)
        grads = bwd(grad_output, input, ctx.num_embeddings, ctx.padding_idx,
                    ctx.scale_grad_by_freq, ctx.needs_input_grad)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and the indices to it
            grads = per_example("embedding", ctx, grads, grad_output, input)
        return (*grads, None, None)


__all__ = ["EmbeddingFunction", "embedding_bwd", "embedding_fwd"]


# ---------------------------------------------------------------- Triton kernel
# BP4's scatter-add in one launch, where the reference launches a mask, a division
# (scale_grad_by_freq) and index_add_: one program per (position p, block of D columns)
# adds its δ_p row into row i_p of ∂C/∂W with atomic adds (rows used twice get the sum,
# in an order the hardware picks: equal to the reference to rounding, not bit for bit),
# skipping the positions whose index is padding_idx. The sums accumulate in float32
# (float64 for float64), then round once to the table's dtype. Built on first use;
# tests/test_kernels2.py runs it through Triton's interpreter against the reference and
# torch.nn.functional.embedding.
EMBEDDING_BLOCK = 256  # columns of D a program holds


def _build_triton_kernels() -> dict[str, Any]:
    """Each kernel's custom op by name (run once, on first use: :func:`base.kernel_family`)."""
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    @triton.jit
    def embedding_bwd_kernel(delta_ptr, index_ptr, counts_ptr, dw_ptr, D, padding_idx,
                             HAS_PADDING: tl.constexpr, SCALE_BY_FREQ: tl.constexpr,
                             BLOCK: tl.constexpr):
        """Position p, columns [k·BLOCK, (k+1)·BLOCK): ∂C/∂W[i_p] += δ_p (/ count(i_p))."""
        p = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        i = tl.load(index_ptr + p)  # the row position p looked up
        mask = cols < D
        if HAS_PADDING:
            mask = mask & (i != padding_idx)  # the padding row gets no gradient
        delta = tl.load(delta_ptr + p * D + cols, mask=mask, other=0.0).to(
            dw_ptr.dtype.element_ty)
        if SCALE_BY_FREQ:  # δ_p / (times i_p occurs in the batch)
            delta = delta / tl.load(counts_ptr + i).to(dw_ptr.dtype.element_ty)
        # z = W e_i  →  BP4: ∂C/∂W = Σ_p δ_p e_{i_p}ᵀ, δ_p added into row i_p
        tl.atomic_add(dw_ptr + i * D + cols, delta, mask=mask)

    def _fake(delta, index, counts, num_embeddings, padding_idx):
        acc = torch.float64 if delta.dtype == torch.float64 else torch.float32
        return delta.new_empty(num_embeddings, delta.shape[1], dtype=acc)

    @kernel_op("embedding_bwd", _fake)
    def embedding_bwd_op(delta: Tensor, index: Tensor, counts: Tensor | None,
                         num_embeddings: int, padding_idx: int) -> Tensor:
        rows, d = delta.shape
        acc = torch.float64 if delta.dtype == torch.float64 else torch.float32
        dw = delta.new_zeros(num_embeddings, d, dtype=acc)  # the sums, in float32 or 64
        count_launch("embedding_bwd")
        if rows:
            wrap_triton(embedding_bwd_kernel)[(rows, triton.cdiv(d, EMBEDDING_BLOCK))](
                delta, index, counts if counts is not None else index, dw, d, padding_idx,
                HAS_PADDING=padding_idx >= 0, SCALE_BY_FREQ=counts is not None,
                BLOCK=EMBEDDING_BLOCK)
        return dw

    return {"embedding_bwd": embedding_bwd_op}


_triton_kernels = kernel_family(_build_triton_kernels)


def embedding_bwd_triton(delta: Tensor, input: Tensor, num_embeddings: int,
                         padding_idx: int | None, scale_grad_by_freq: bool,
                         need: tuple[bool, ...]) -> tuple[None, Tensor | None]:
    """:func:`embedding_bwd` in one kernel (and torch's bincount for scale_grad_by_freq)."""
    if not need[1]:
        return None, None
    index = input.reshape(-1).contiguous()
    counts = torch.bincount(index, minlength=num_embeddings) if scale_grad_by_freq else None
    dw = _triton_kernels()["embedding_bwd"](
        delta.reshape(-1, delta.shape[-1]).contiguous(), index, counts, num_embeddings,
        -1 if padding_idx is None else padding_idx)
    return None, dw.to(delta.dtype)


__all__ += ["embedding_bwd_triton"]

# moved out of this file (one release): the input checks
__getattr__ = moved(__name__, {"check_embedding": "bptorch._checks",
                               "wrap_padding_idx": "bptorch._checks"})
