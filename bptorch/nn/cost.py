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


# ---------------------------------------------------------------- torch's losses
# torch.nn's loss modules under torch's names, arguments and buffers (weight, pos_weight
# are buffers, as torch's, so state_dicts match); each calls its functional form.
from torch.nn import _reduction as _Reduction  # noqa: E402


class _Loss(nn.Module):
    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _Reduction.legacy_get_string(size_average, reduce)
        self.reduction = reduction


class _WeightedLoss(_Loss):
    def __init__(self, weight: Tensor | None = None, size_average=None, reduce=None,
                 reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.weight: Tensor | None


class CrossEntropyLoss(_WeightedLoss):
    """ℓ_n = −Σ_c q_{n,c} ln softmax(z_n)_c; BP1: δ = (Σ_c q_c) softmax(z) − q.

    Input (N, C), (N, C, d1, ...) or (C,); target class indices (N, d1, ...) or
    probabilities of the input's shape. q: the target weighted, masked at ``ignore_index``
    and smoothed by ``label_smoothing`` (bptorch/functions/costs.py).
    """

    def __init__(self, weight: Tensor | None = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    """ℓ_n = −w_{y_n} x_{n, y_n} for log-probabilities x (classes on dim 1); ∂ℓ/∂x = −q."""

    def __init__(self, weight: Tensor | None = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(_Loss):
    """ℓ = (x − y)²; ∂ℓ/∂x = 2(x − y)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """ℓ = |x − y|; ∂ℓ/∂x = sign(x − y)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """ℓ = ½(x − y)²/β inside |x − y| < β, else |x − y| − ½β."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean",
                 beta: float = 1.0) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class BCELoss(_WeightedLoss):
    """ℓ = −w[y ln x + (1 − y) ln(1 − x)], x in [0, 1]."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight,
                                      reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """ℓ = −w[p y ln σ(x) + (1 − y) ln(1 − σ(x))]; δ = w[(1 + (p − 1)y) σ(x) − p y]."""

    def __init__(self, weight: Tensor | None = None, size_average=None, reduce=None,
                 reduction: str = "mean", pos_weight: Tensor | None = None) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.weight: Tensor | None
        self.pos_weight: Tensor | None

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class KLDivLoss(_Loss):
    """ℓ = y (ln y − x) for log-probabilities x (``log_target``: e^y (y − x))."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean",
                 log_target: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class LogSoftmax(nn.Module):
    """a = z − logsumexp(z) along ``dim``; ∂C/∂z = g − softmax(z) Σ g."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        return F.log_softmax(input, self.dim, _stacklevel=5)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
