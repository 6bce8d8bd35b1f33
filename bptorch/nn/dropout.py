"""Dropout and Flatten: ``torch.nn``'s names and arguments, with the backward of
:mod:`bptorch.functions.dropout` (δ ⊙ m, δ reshaped back)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F
from .._checks import check_dropout_p


class Dropout(nn.Module):
    """Inverted dropout: in training a = z ⊙ m, m_i ∈ {0, 1/(1 − p)} with P(0) = p; in
    eval mode a = z. Backward multiplies δ by the same m. p = 1 drops everything.

    The mask is drawn from torch's global RNG (``torch.manual_seed`` fixes it); on the
    CPU it is the mask ``torch.nn.Dropout`` draws from the same seed. ``inplace=True``
    writes a over z, as torch.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = check_dropout_p(p)
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Flatten(nn.Module):
    """Merge dims ``start_dim``..``end_dim`` (default: all but the batch dim), as torch."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input: Tensor) -> Tensor:
        return F.flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


__all__ = ["Dropout", "Flatten"]
