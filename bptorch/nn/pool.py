"""MaxPool2d, AvgPool2d and AdaptiveAvgPool2d: ``torch.nn``'s names and arguments, with
the backward of :mod:`bptorch.functions.pool` (δ routed to each window's winner, or δ_j/n_j
spread over each window)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F
from ..functional import IntPair


class MaxPool2d(nn.Module):
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

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0, dilation: IntPair = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                f", dilation={self.dilation}, ceil_mode={self.ceil_mode}")



class AvgPool2d(nn.Module):
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

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = stride if stride is not None else kernel_size
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input: Tensor) -> Tensor:
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class AdaptiveAvgPool2d(nn.Module):
    r"""Average pooling over the windows that give an output of ``output_size``;
    backward ∂C/∂z = P_hᵀ δ P_w (δ/(H·W) everywhere for global pooling, output 1).

    A drop-in for ``torch.nn.AdaptiveAvgPool2d``.

    Args:
        output_size: H_out or (H_out, W_out); a None entry keeps the input's size.

    Shape:
        (N, C, H, W) or (C, H, W) -> (…, H_out, W_out).
    """

    def __init__(self, output_size: int | None | tuple[int | None, int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d"]
