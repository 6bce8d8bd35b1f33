"""AvgPool2d and AdaptiveAvgPool2d: ``torch.nn``'s names and arguments, with the
backward of :mod:`bptorch.functions.pooling` (δ_j/n_j spread over each window)."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ..functions.pooling import (
    AdaptiveAvgPool2dFunction, AvgPool2dFunction, adaptive_output_size, check_avg_pool2d,
    check_pool_input,
)

IntPair = int | tuple[int, int]


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
        k, s, p = _pair(self.kernel_size), _pair(self.stride), _pair(self.padding)
        check_avg_pool2d(input, k, s, p, self.divisor_override)
        return AvgPool2dFunction.apply(input, k, s, p, self.ceil_mode, self.count_include_pad,
                                       self.divisor_override)

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
        check_pool_input(input)
        return AdaptiveAvgPool2dFunction.apply(
            input, adaptive_output_size(input, self.output_size))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


__all__ = ["AdaptiveAvgPool2d", "AvgPool2d"]
