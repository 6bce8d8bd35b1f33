"""Dropout (element- and channel-wise, alpha) and Flatten: ``torch.nn``'s names and
arguments, with the backward of :mod:`bptorch.functions.dropout` (δ ⊙ m, δ reshaped back)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F
from .._checks import check_dropout_p


class _DropoutNd(nn.Module):
    """``p`` and ``inplace``, as torch's ``_DropoutNd``: the base of every dropout."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = check_dropout_p(p)
        self.inplace = inplace

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd):
    """Inverted dropout: in training a = z ⊙ m, m_i ∈ {0, 1/(1 − p)} with P(0) = p; in
    eval mode a = z. Backward multiplies δ by the same m. p = 1 drops everything.

    The mask is drawn from torch's global RNG (``torch.manual_seed`` fixes it); on the
    CPU it is the mask ``torch.nn.Dropout`` draws from the same seed. ``inplace=True``
    writes a over z, as torch.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(_DropoutNd):
    """Channel-wise dropout of (N, C, L) or (C, L): in training each channel is kept
    (×1/(1 − p)) or zeroed whole, a = z ⊙ m with one m per (example, channel); backward
    δ ⊙ m, so a dropped channel passes no error down. On the CPU the mask is the one
    ``torch.nn.Dropout1d`` draws from the same seed."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_DropoutNd):
    """Channel-wise dropout of (N, C, H, W), as :class:`Dropout1d` (a 3-D input is taken
    as (N, C, L), with torch's warning)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(_DropoutNd):
    """Channel-wise dropout of (N, C, D, H, W) or (C, D, H, W), as :class:`Dropout1d`."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(_DropoutNd):
    """Alpha dropout for SELU networks: in training a = z ⊙ m + b (m = A·keep,
    b = λα·A·(keep − 1 + p)), which keeps SELU's zero mean and unit variance; backward
    δ ⊙ m. On the CPU the draw is ``torch.nn.AlphaDropout``'s from the same seed."""

    def forward(self, input: Tensor) -> Tensor:
        return F.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(_DropoutNd):
    """Alpha dropout with one (m, b) per example and channel of (N, C, *)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.feature_alpha_dropout(input, self.p, self.training)


class Flatten(nn.Module):
    """Merge dims ``start_dim``..``end_dim`` (default: all but the batch dim), as torch."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input: Tensor) -> Tensor:
        return F.flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


__all__ = ["AlphaDropout", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
           "FeatureAlphaDropout", "Flatten"]
