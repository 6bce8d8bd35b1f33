"""Embedding: ``torch.nn.Embedding``'s names, parameter and state_dict key, with the
scatter-add backward of :mod:`bptorch.functions.embedding`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from .._checks import check_embedding_unsupported, wrap_padding_idx


class Embedding(nn.Module):
    r"""z = W[i], row i of a (num_embeddings, embedding_dim) table for each index i.

    A drop-in for ``torch.nn.Embedding``: same arguments in the same order, parameter
    ``weight`` and state_dict key. Backward: BP4 for one-hot inputs, ∂C/∂W = Σ δ e_iᵀ, a
    scatter-add of each δ into the row it looked up; the row ``padding_idx`` gets none.

    Args:
        num_embeddings: V, the table's rows.
        embedding_dim: D, each row's size.
        padding_idx: a row that gets no gradient (initialised to zero); negative counts
            from the end.
        max_norm, norm_type: row renormalisation; ``max_norm`` raises NotImplementedError.
        scale_grad_by_freq: divide each δ by its index's count in the batch.
        sparse: True raises NotImplementedError.
        _weight: a (V, D) tensor to use as the table; _freeze: do not learn it.

    Shape:
        input (*) integer indices -> output (*, D).

    Attributes:
        weight: (V, D), initialised N(0, 1), the padding row zero.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_embedding_unsupported(max_norm, sparse)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = wrap_padding_idx(padding_idx, num_embeddings)
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        if _weight is None:
            self.weight = nn.Parameter(
                torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype),
                requires_grad=not _freeze)
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(
                    f"_weight must have shape (num_embeddings, embedding_dim) = "
                    f"({num_embeddings}, {embedding_dim}), got {tuple(_weight.shape)}"
                )
            self.weight = nn.Parameter(_weight, requires_grad=not _freeze)

    def reset_parameters(self) -> None:
        """N(0, 1) for W and the padding row zeroed, as torch."""
        nn.init.normal_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:  # torch's order and conditions
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        if self.sparse:
            s += ", sparse=True"
        return s

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True,
                        padding_idx: int | None = None, max_norm: float | None = None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False) -> "Embedding":
        """An Embedding holding ``embeddings`` (V, D), frozen by default, as torch's."""
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be 2-D (V, D), got shape "
                             f"{tuple(embeddings.shape)}")
        rows, cols = embeddings.shape
        return cls(rows, cols, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                   _weight=embeddings, _freeze=freeze)


__all__ = ["Embedding"]
