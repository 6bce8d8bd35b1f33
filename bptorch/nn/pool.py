"""The pools over 1, 2 and 3 spatial dims (MaxPool, AvgPool, AdaptiveAvgPool,
AdaptiveMaxPool): ``torch.nn``'s names and arguments, with the backward of
:mod:`bptorch.functions.pool` (δ routed to each window's winner, or δ_j/n_j spread over
each window)."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.utils import _single

from .. import functional as F
from ..functional import IntPair


class _MaxPoolNd(nn.Module):
    """The max pools' one module: torch's arguments, stored as given (as torch does)."""

    _pool = None  # the functional form, F.max_pool{d}d

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return type(self)._pool(input, self.kernel_size, self.stride, self.padding,
                                self.dilation, self.ceil_mode, self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                f", dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool1d(_MaxPoolNd):
    """a_j = max over window j of (N, C, L) or (C, L); backward routes δ_j to the winner.

    Args, as torch.nn.MaxPool1d: kernel_size, stride (default kernel_size), padding (−∞,
    at most half the kernel), dilation, return_indices, ceil_mode.

    Shape: (N, C, L) or (C, L) -> (…, L_out), L_out = ⌊(L + 2p − d(k − 1) − 1)/s⌋ + 1.
    """

    _pool = staticmethod(F.max_pool1d)


class MaxPool2d(_MaxPoolNd):
    """a_j = max over window j; backward routes δ_j to the window's winner.

    Args, as torch.nn.MaxPool2d (and stored as given, as torch does):
        kernel_size: window k or (k_h, k_w).
        stride: step between windows; defaults to ``kernel_size`` (no overlap).
        padding: −∞ padding on each side, at most half the kernel.
        dilation: spacing between window taps.
        return_indices: also return the flat per-map argmax indices, as torch.
        ceil_mode: round the output size up (a last, partial window).

    Shape:
        (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out),
        H_out = ⌊(H + 2p − d(k_h − 1) − 1)/s⌋ + 1 (⌈·⌉ with ceil_mode), W_out likewise.
    """

    _pool = staticmethod(F.max_pool2d)

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0, dilation: IntPair = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)


class MaxPool3d(_MaxPoolNd):
    """a_j = max over window j of (N, C, D, H, W) or (C, D, H, W); backward routes δ_j to
    the winner. Args as torch.nn.MaxPool3d (ints or triples)."""

    _pool = staticmethod(F.max_pool3d)


class _AvgPoolNd(nn.Module):
    """The average pools' one module: torch's arguments, stored as given (as torch does)."""

    _pool = None  # the functional form, F.avg_pool{d}d

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = stride if stride is not None else kernel_size
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input: Tensor) -> Tensor:
        return type(self)._pool(input, self.kernel_size, self.stride, self.padding,
                                self.ceil_mode, self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class AvgPool2d(_AvgPoolNd):
    r"""a_j = (1/n_j) Σ_{i ∈ window j} z_i over k_h × k_w windows; backward
    ∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j.

    A drop-in for ``torch.nn.AvgPool2d``: same arguments in the same order.

    Args:
        kernel_size: window k or (k_h, k_w).
        stride: step between windows; defaults to ``kernel_size``.
        padding: implicit zeros on both sides, at most half the window.
        ceil_mode: round the output size up (a last window may hang over the edge).
        count_include_pad: n_j counts the padding zeros (default) or only input pixels.
        divisor_override: use this n_j for every window.

    Shape:
        (N, C, H, W) or (C, H, W) -> (…, H_out, W_out),
        H_out = ⌊(H + 2p − k_h)/s⌋ + 1 (⌈·⌉ with ceil_mode).
    """

    _pool = staticmethod(F.avg_pool2d)

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override)


class _AdaptiveAvgPoolNd(nn.Module):
    """The adaptive average pools' one module: ``output_size``."""

    _pool = None  # the functional form, F.adaptive_avg_pool{d}d

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Tensor) -> Tensor:
        return type(self)._pool(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    r"""Average pooling over the windows that give an output of ``output_size``;
    backward ∂C/∂z = P_hᵀ δ P_w (δ/(H·W) everywhere for global pooling, output 1).

    A drop-in for ``torch.nn.AdaptiveAvgPool2d``.

    Args:
        output_size: H_out or (H_out, W_out); a None entry keeps the input's size.

    Shape:
        (N, C, H, W) or (C, H, W) -> (…, H_out, W_out).
    """

    _pool = staticmethod(F.adaptive_avg_pool2d)


class AvgPool1d(nn.Module):
    r"""a_j = (1/n_j) Σ_{i ∈ window j} z_i over windows of k along L; backward
    ∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j.

    A drop-in for ``torch.nn.AvgPool1d`` (no divisor_override, as torch; kernel_size,
    stride and padding stored as 1-tuples, as torch).

    Shape: (N, C, L) or (C, L) -> (…, L_out), L_out = ⌊(L + 2p − k)/s⌋ + 1.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.kernel_size = _single(kernel_size)
        self.stride = _single(stride if stride is not None else kernel_size)
        self.padding = _single(padding)
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, input: Tensor) -> Tensor:
        return F.avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class AvgPool3d(_AvgPoolNd):
    r"""a_j = (1/n_j) Σ_{i ∈ window j} z_i over k_d × k_h × k_w windows; backward
    ∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j. A drop-in for ``torch.nn.AvgPool3d``.

    Shape: (N, C, D, H, W) or (C, D, H, W) -> (…, D_out, H_out, W_out).
    """

    _pool = staticmethod(F.avg_pool3d)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    r"""Average pooling over the windows that give ``output_size`` (an int) along L,
    a = z Pᵀ; backward ∂C/∂z = δ P. A drop-in for ``torch.nn.AdaptiveAvgPool1d``."""

    _pool = staticmethod(F.adaptive_avg_pool1d)


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    r"""Average pooling over the windows that give ``output_size`` (int or triple, None
    entries keep the input's size); backward ∂C/∂z = δ ×_1 P_1ᵀ ×_2 P_2ᵀ ×_3 P_3ᵀ.
    A drop-in for ``torch.nn.AdaptiveAvgPool3d``."""

    _pool = staticmethod(F.adaptive_avg_pool3d)


class _AdaptiveMaxPoolNd(nn.Module):
    """The adaptive max pools' one module: ``output_size`` and ``return_indices``."""

    _pool = None  # the functional form, F.adaptive_max_pool{d}d

    def __init__(self, output_size, return_indices: bool = False) -> None:
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return type(self)._pool(input, self.output_size, self.return_indices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """Max pooling over the windows that give ``output_size`` along L; backward routes δ_j
    to window j's winner. A drop-in for ``torch.nn.AdaptiveMaxPool1d``."""

    _pool = staticmethod(F.adaptive_max_pool1d)


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """Max pooling over the windows that give ``output_size`` (int or pair, None entries
    keep the input's size); backward routes δ_j to window j's winner. A drop-in for
    ``torch.nn.AdaptiveMaxPool2d``.

    Shape: (N, C, H, W) or (C, H, W) -> (…, H_out, W_out).
    """

    _pool = staticmethod(F.adaptive_max_pool2d)


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    """Max pooling over the windows that give ``output_size`` (int or triple); backward
    routes δ_j to window j's winner. A drop-in for ``torch.nn.AdaptiveMaxPool3d``."""

    _pool = staticmethod(F.adaptive_max_pool3d)


__all__ = [
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "MaxPool1d", "MaxPool2d", "MaxPool3d",
]
