"""Unfold and Fold: ``torch.nn``'s names and arguments, with the backward of
:mod:`bptorch.functions.fold` (each one's backward is the other's forward: ∂C/∂a =
fold(δ) for Unfold, ∂C/∂a_col = unfold(δ) for Fold)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F


class Unfold(nn.Module):
    r"""a_col[n, c·K + t, p] = a_pad[n, c, p·s + t·dil]: the sliding blocks as columns;
    backward ∂C/∂a = fold(δ) (each δ added back onto the pixel it was read from).

    A drop-in for ``torch.nn.Unfold``: the same arguments, stored as given.

    Args:
        kernel_size: the blocks' size (int or pair).
        dilation: the spacing of a block's taps.
        padding: zeros added on both sides of each spatial axis.
        stride: the step between blocks.

    Shape: (N, C, H, W) -> (N, C·k_h·k_w, L), or (C, H, W) -> (C·k_h·k_w, L); L the
    number of blocks.
    """

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = padding
        self.stride = stride

    def forward(self, input: Tensor) -> Tensor:
        return F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return ("kernel_size={kernel_size}, dilation={dilation}, padding={padding}, "
                "stride={stride}".format(**self.__dict__))


class Fold(nn.Module):
    r"""a = Σ_blocks a_col: the columns summed back onto maps (overlapping blocks add up);
    backward ∂C/∂a_col = unfold(δ) (each entry reads its pixel's δ).

    A drop-in for ``torch.nn.Fold``: the same arguments, stored as given.

    Args:
        output_size: the maps' spatial size (int or pair).
        kernel_size: the blocks' size (int or pair).
        dilation: the spacing of a block's taps.
        padding: zeros on both sides of each axis (their share is dropped).
        stride: the step between blocks.

    Shape: (N, C·k_h·k_w, L) -> (N, C, *output_size), or (C·k_h·k_w, L) -> (C, *output_size).
    """

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1) -> None:
        super().__init__()
        self.output_size = output_size
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = padding
        self.stride = stride

    def forward(self, input: Tensor) -> Tensor:
        return F.fold(input, self.output_size, self.kernel_size, self.dilation, self.padding,
                      self.stride)

    def extra_repr(self) -> str:
        return ("output_size={output_size}, kernel_size={kernel_size}, dilation={dilation}, "
                "padding={padding}, stride={stride}".format(**self.__dict__))


__all__ = ["Fold", "Unfold"]
