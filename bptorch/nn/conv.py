"""Conv2d: ``torch.nn.Conv2d``'s names, shapes and state_dict keys, over the backward of
:mod:`bptorch.functions.conv`."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import feedback as _feedback
from .. import functional as F
from ..functional import IntPair
from ..functions.base import moved
from ..functions.conv import conv2d_padding


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
        b = _feedback.in_backward(self, self.weight)  # B in place of W in BP2, or None
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups, path=self._path, feedback_weight=b)

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


__all__ = ["Conv2d"]

# moved out of this file (one release)
__getattr__ = moved(__name__, {"MaxPool2d": "bptorch.nn.pool", "Dropout": "bptorch.nn.dropout",
                               "Flatten": "bptorch.nn.dropout"})
