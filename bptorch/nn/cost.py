"""Cost modules, called as ``cost(output, target)`` like torch's losses.

``output`` is (*, C), classes last (the book's convention; not torch's (N, C, d…)).
``target`` is class indices of shape (*) (any integer dtype) or a float tensor of the
output's shape (one-hot or soft). The book's scaling: a sum over the C outputs, a mean
over every leading position (N, or N·T for a sequence). ``reduction="sum"`` drops the
mean; ``reduction="none"`` returns C_x per position, shape (*).
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
        if reduction not in F.REDUCTIONS:
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.logits, self.reduction = logits, reduction

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cost(self.name, output, target, self.logits, self.reduction)

    def extra_repr(self) -> str:
        return f"logits={self.logits}, reduction={self.reduction!r}"


class QuadraticCost(_Cost):
    """C_x = ½‖a − y‖²; ∇_a C_x = a − y."""

    name = "quadratic"
    has_logits = False

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(False, reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyCost(_Cost):
    """C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)], like ``torch.nn.BCELoss`` summed
    over the outputs; ``logits=True`` takes z^L, δ^L = σ(z) − y (``BCEWithLogitsLoss``).

    The probability form needs a in [0, 1] (ValueError otherwise: pass logits=True for
    z^L) and uses BCELoss's safeguards, ln floored at −100 and ∇_a C_x =
    (a − y)/max(a(1 − a), 1e-12), so it stays finite when σ(z) rounds to 0 or 1.
    """

    name = "cross_entropy"


class LogLikelihoodCost(_Cost):
    """C_x = −Σ_j y_j ln a_j (−ln a_y for class indices); ``logits=True`` takes z^L,
    δ^L = (Σ_j y_j) softmax(z) − y (``CrossEntropyLoss``, for rows of y that sum to 1).

    The probability form needs a in [0, 1] and is finite when a_j rounds to 0:
    ln floored at −100, ∇_a C_x = −y/max(a, 1e-12).
    """

    name = "log_likelihood"
