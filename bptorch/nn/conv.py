"""Conv2d, MaxPool2d, Dropout and Flatten: ``torch.nn``'s names, shapes and state_dict keys."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import feedback as _feedback
from ..functions.conv import (
    Conv2dFeedbackFunction, Conv2dFunction, DropoutFunction, FlattenFunction, MaxPool2dFunction,
    check_conv2d, check_dropout_p, check_pool2d, conv2d_padding, dropout_mask,
)

IntPair = int | tuple[int, int]


def _unbatched(fn, input: Tensor):
    """Apply a (N, C, H, W) function to an unbatched (C, H, W) input, as torch accepts."""
    if input.dim() == 3:
        out = fn(input.unsqueeze(0))
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(input)


class Conv2d(nn.Module):
    r"""z = W ⋆ a_prev + b, the linear layer on every k_h × k_w patch, with the seed's
    BP2, BP3 and BP4 (summed over positions) written out in its backward.

    A drop-in for ``torch.nn.Conv2d``: same arguments in the same order, parameters,
    attributes, init and state_dict keys, so state_dicts load both ways.

    Args:
        in_channels: input feature maps, C_in.
        out_channels: output feature maps (kernels), C_out.
        kernel_size: k or (k_h, k_w).
        stride, dilation: int or pair, as torch.
        padding: int, pair, "valid" or "same" (torch's rule: the odd row/column of an
            even kernel goes at the bottom/right; "same" needs stride 1).
        groups: split input and output channels into this many independent convolutions.
        bias: if False, the layer learns no b.
        padding_mode: only "zeros"; "reflect", "replicate", "circular" raise
            NotImplementedError.
        unfold: use the reference path (unfold + matmul + fold) in forward and backward.
        fused_backward: compute BP2 and BP4 with ATen's ``convolution_backward`` (the
            kernel torch.nn.Conv2d's autograd uses) instead of the written-out
            transposed convolution and correlation; faster on one-channel inputs.
        feedback: what the backward passes down in place of W's transposed convolution
            with δ (``bptorch.feedback``): "backprop" (default), "fa", "usf", "brsf", "frsf".

    Shape:
        input (N, C_in, H, W) or (C_in, H, W) -> output (N, C_out, H_out, W_out) or
        (C_out, H_out, W_out), H_out = ⌊(H + 2p − d(k_h − 1) − 1)/s⌋ + 1 and W_out likewise.

    Attributes:
        weight: (C_out, C_in/groups, k_h, k_w), initialised U(−k, k),
            k = 1/√(C_in/groups · k_h · k_w) (torch's kaiming_uniform_(a=√5)).
        bias: (C_out,), initialised the same way.
        feedback_weight: buffer, fa: the fixed B, U(−k, k); frsf: the fixed |R|, R U(−k, k).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        unfold: bool = False,
        fused_backward: bool = False,
        feedback: str = "backprop",
    ) -> None:
        super().__init__()
        _feedback.check_rule(feedback)
        factory = {"device": device, "dtype": dtype}
        if not isinstance(groups, int) or groups <= 0:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if in_channels % groups:
            raise ValueError(f"in_channels must be divisible by groups, got "
                             f"in_channels={in_channels}, groups={groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels must be divisible by groups, got "
                             f"out_channels={out_channels}, groups={groups}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be one of 'zeros', 'reflect', 'replicate' "
                             f"or 'circular', got {padding_mode!r}")
        if padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode={padding_mode!r} is not implemented in "
                                      f"bptorch; only 'zeros'")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.dilation = _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode
        if min(self.stride) < 1 or min(self.kernel_size) < 1 or min(self.dilation) < 1:
            raise ValueError(
                f"kernel_size, stride and dilation must be >= 1, got "
                f"{self.kernel_size}, {self.stride}, {self.dilation}"
            )
        # raises for an unknown padding string and for "same" with stride > 1, as torch
        sym, _ = conv2d_padding(self.padding, self.kernel_size, self.stride, self.dilation)
        if min(sym) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if unfold and fused_backward:
            raise ValueError("unfold=True and fused_backward=True are two different paths; "
                             "pick one")
        self.unfold, self.fused_backward = unfold, fused_backward
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        _feedback.setup(self, feedback, self.weight)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(−1/√fan_in, 1/√fan_in) for W and b, fan_in = C_in/groups · k_h · k_w: torch's
        calls in torch's order, so one seed gives torch.nn.Conv2d's values."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # = U(−1/√fan_in, 1/√fan_in)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            if fan_in != 0:
                k = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -k, k)
        _feedback.reset(self, self.weight)  # fa's B, frsf's |R|: W's distribution

    def forward(self, input: Tensor) -> Tensor:
        check_conv2d(input, self.weight, self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        if self.feedback != "backprop" and torch.is_grad_enabled():
            b = _feedback.matrix(self, self.weight)  # B in place of W in BP2
            if b is not None:
                return _unbatched(lambda x: Conv2dFeedbackFunction.apply(
                    x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                    self.groups, self._path, b), input)
        return _unbatched(lambda x: Conv2dFunction.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            self._path), input)

    @property
    def _path(self) -> str:
        return "unfold" if self.unfold else "fused" if self.fused_backward else "conv"

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + (", unfold=True" if self.unfold else "") + (
            ", fused_backward=True" if self.fused_backward else "") + _feedback.extra_repr(self)


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
        k, s, p, d = map(_pair, (self.kernel_size, self.stride, self.padding, self.dilation))
        check_pool2d(input, k, s, p, d, self.ceil_mode)
        a, indices = _unbatched(
            lambda x: MaxPool2dFunction.apply(x, k, s, p, d, self.ceil_mode), input)
        return (a, indices) if self.return_indices else a

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                f", dilation={self.dilation}, ceil_mode={self.ceil_mode}")


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
        if not isinstance(input, Tensor) or not input.is_floating_point():
            raise TypeError("Dropout expects a floating-point tensor")
        if not self.training or self.p == 0.0:
            return input
        return DropoutFunction.apply(input, dropout_mask(input, self.p), self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


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
