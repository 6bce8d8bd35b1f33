"""Cost modules, called as ``cost(output, target)`` like torch's losses.

``target`` is class indices (int64, shape (N,)) or a float tensor of the output's
shape (one-hot or soft). The book's scaling: a sum over outputs, a mean over the
batch (``reduction="sum"`` drops the mean).
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F


class _Cost(nn.Module):
    name = ""
    has_logits = True

    def __init__(self, logits: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        if logits and not self.has_logits:
            raise ValueError(f"{type(self).__name__} has no logits form")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.logits, self.reduction = logits, reduction

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return F._cost(self.name, output, target, self.logits, self.reduction)

    def extra_repr(self) -> str:
        return f"logits={self.logits}, reduction={self.reduction!r}"


class QuadraticCost(_Cost):
    """C = ½‖a − y‖²; ∇_a C = a − y."""

    name = "quadratic"
    has_logits = False

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(False, reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyCost(_Cost):
    """C = −Σ[y ln a + (1 − y) ln(1 − a)]; ``logits=True`` takes z^L, δ^L = σ(z) − y."""

    name = "cross_entropy"


class LogLikelihoodCost(_Cost):
    """C = −ln a_y; ``logits=True`` takes z^L, δ^L = softmax(z) − y."""

    name = "log_likelihood"
