"""Conv2d, MaxPool2d, Dropout and Flatten: ``torch.nn``'s names, shapes and state_dict keys."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ..functions.conv import (
    Conv2dFunction, DropoutFunction, FlattenFunction, MaxPool2dFunction,
    check_conv2d, check_dropout_p, check_pool2d, dropout_mask,
)

IntPair = int | tuple[int, int]


class Conv2d(nn.Module):
    r"""z = W ⋆ a_prev + b, the linear layer on every k_h × k_w patch, with the seed's
    BP3 and BP4 (summed over positions) in its backward.

    A drop-in for ``torch.nn.Conv2d`` without dilation and groups: same arguments,
    parameters, init and state_dict keys, so state_dicts load both ways.

    Args:
        in_channels: input feature maps, C_in.
        out_channels: output feature maps (kernels), C_out.
        kernel_size: k or (k_h, k_w).
        stride, padding: int or pair, as torch (zero padding).
        bias: if False, the layer learns no b.
        unfold: use the reference path (unfold + matmul + fold) instead of ATen's kernels.

    Shape:
        input (N, C_in, H, W) -> output (N, C_out, H_out, W_out),
        H_out = ⌊(H + 2p − k_h)/s⌋ + 1 and W_out likewise.

    Attributes:
        weight: (C_out, C_in, k_h, k_w), initialised U(−k, k), k = 1/√(C_in·k_h·k_w).
        bias: (C_out,), initialised the same way.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        unfold: bool = False,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding = _pair(padding)
        if min(self.stride) < 1 or min(self.padding) < 0 or min(self.kernel_size) < 1:
            raise ValueError(
                f"kernel_size and stride must be >= 1 and padding >= 0, got "
                f"{self.kernel_size}, {self.stride}, {self.padding}"
            )
        self.unfold = unfold
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *self.kernel_size, **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(−1/√fan_in, 1/√fan_in) for W and b, the distribution ``torch.nn.Conv2d`` uses
        (its kaiming_uniform_(a=√5)), drawn in the same order: one seed, the same values."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        k = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(self.weight, -k, k)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -k, k)

    def forward(self, input: Tensor) -> Tensor:
        check_conv2d(input, self.weight, self.bias, self.stride, self.padding)
        return Conv2dFunction.apply(
            input, self.weight, self.bias, self.stride, self.padding, self.unfold
        )

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        return s + (", unfold=True" if self.unfold else "")


class MaxPool2d(nn.Module):
    """a_j = max over window j; backward routes δ_j to the window's winner.

    Args:
        kernel_size: window k or (k_h, k_w).
        stride: step between windows; defaults to ``kernel_size`` (no overlap), as torch.

    Shape:
        (N, C, H, W) -> (N, C, ⌊(H − k_h)/s⌋ + 1, ⌊(W − k_w)/s⌋ + 1).
    """

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size

    def forward(self, input: Tensor) -> Tensor:
        check_pool2d(input, self.kernel_size, self.stride)
        return MaxPool2dFunction.apply(input, self.kernel_size, self.stride)[0]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Dropout(nn.Module):
    """Inverted dropout: in training a = z ⊙ m, m_i ∈ {0, 1/(1 − p)} with P(0) = p; in
    eval mode a = z. Backward multiplies δ by the same m.

    The mask is drawn from torch's global RNG (``torch.manual_seed`` fixes it); on the
    CPU it is the mask ``torch.nn.Dropout`` draws from the same seed.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_dropout_p(p)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or not input.is_floating_point():
            raise TypeError("Dropout expects a floating-point tensor")
        if not self.training or self.p == 0.0:
            return input
        return DropoutFunction.apply(input, dropout_mask(input, self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(nn.Module):
    """Merge dims ``start_dim``..``end_dim`` (default: all but the batch dim), as torch."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input: Tensor) -> Tensor:
        return FlattenFunction.apply(input, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


__all__ = ["Conv2d", "Dropout", "Flatten", "MaxPool2d"]
