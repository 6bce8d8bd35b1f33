"""Conv1d, Conv2d, Conv3d and ConvTranspose1d/2d/3d: torch.nn's names, shapes and
state_dict keys, over the backward of :mod:`bptorch.functions.conv`."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple, _pair

from .. import feedback as _feedback
from .. import functional as F
from ..functional import IntPair
from ..functions.base import moved
from ..functions.conv import conv2d_padding, conv_padding, conv_transpose_out_size


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


# ---------------------------------------------------------------- any d: Conv1d, Conv3d and
# the transposed convolutions, over ConvNdFunction / ConvTransposeNdFunction
class _ConvNd(nn.Module):
    """What the layers below share with torch's ``_ConvNd``: the arguments kept under
    torch's names (``transposed``, ``output_padding``, ``_reversed_padding_repeated_twice``
    included), the parameters, torch's init and ``extra_repr``. Not feedback= (Conv2d
    and Linear only)."""

    _d = 0  # spatial dims

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding,
                 dilation, transposed: bool, output_padding, groups: int, bias: bool,
                 padding_mode: str, device=None, dtype=None, unfold: bool = False) -> None:
        super().__init__()
        ntuple, factory = _ntuple(self._d), {"device": device, "dtype": dtype}
        kernel_size, stride, dilation = ntuple(kernel_size), ntuple(stride), ntuple(dilation)
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
        if transposed and padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for '
                             f"{type(self).__name__}, got {padding_mode!r}")
        if transposed and isinstance(padding, str):
            raise ValueError(f"{type(self).__name__} takes int padding, got {padding!r}")
        padding = padding if isinstance(padding, str) else ntuple(padding)
        if min(kernel_size) < 1 or min(stride) < 1 or min(dilation) < 1:
            raise ValueError(f"kernel_size, stride and dilation must be >= 1, got "
                             f"{kernel_size}, {stride}, {dilation}")
        # raises for an unknown padding string and for "same" with stride > 1, as torch
        sym, extra = conv_padding(padding, kernel_size, stride, dilation)
        if min(sym) < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.transposed = dilation, transposed
        self.output_padding, self.groups = output_padding, groups
        self.padding_mode, self.unfold = padding_mode, unfold
        # F.pad's order (last dim first), as torch: the padding a non-"zeros" mode adds
        self._reversed_padding_repeated_twice = [
            v for p, e in zip(reversed(sym), reversed(extra)) for v in (p, p + e)]
        shape = (in_channels, out_channels // groups) if transposed else \
            (out_channels, in_channels // groups)
        self.weight = nn.Parameter(torch.empty(*shape, *kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(−1/√fan_in, 1/√fan_in) for W and b, fan_in from W's dim 1 and the kernel
        (C_in/groups·Πk; for the transposed ones C_out/groups·Πk): torch's calls in
        torch's order, so one seed gives torch's values."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # = U(−1/√fan_in, 1/√fan_in)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            if fan_in != 0:
                k = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -k, k)

    @property
    def _path(self) -> str:
        return "unfold" if self.unfold else "conv"

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * len(self.padding):
            s += ", padding={padding}"
        if self.dilation != (1,) * len(self.dilation):
            s += ", dilation={dilation}"
        if self.output_padding != (0,) * len(self.output_padding):
            s += ", output_padding={output_padding}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode={padding_mode}"
        return s.format(**self.__dict__) + (", unfold=True" if self.unfold else "")


class _Conv(_ConvNd):
    def forward(self, input: Tensor) -> Tensor:
        conv = F.conv1d if self._d == 1 else F.conv3d
        if self.padding_mode != "zeros":  # pad first, as torch, then no zero padding
            input = F.mode_pad(input, self._reversed_padding_repeated_twice, self.padding_mode)
            return conv(input, self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups, path=self._path)
        return conv(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                    self.groups, path=self._path)


class Conv1d(_Conv):
    r"""z = W ⋆ a_prev + b over one spatial dim, the linear layer on every window of k
    samples, with BP2, BP3 and BP4 written out (:class:`ConvNdFunction`).

    A drop-in for ``torch.nn.Conv1d``: the same arguments in the same order, attributes,
    parameters, init and state_dict keys.

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size, stride, dilation: int or 1-tuple, as torch.
        padding: int, "valid" or "same" (the odd one at the end; "same" needs stride 1).
        groups: split the channels into this many independent convolutions.
        bias: if False, the layer learns no b.
        padding_mode: "zeros", or "reflect", "replicate", "circular": the input is padded
            first (:class:`ModePadFunction`, whose backward scatter-adds δ back).
        unfold: the reference path (gather + matmul + scatter-add) both ways.

    Shape:
        input (N, C_in, L) or (C_in, L) -> output (N, C_out, L_out) or (C_out, L_out),
        L_out = ⌊(L + 2p − dil(k − 1) − 1)/s⌋ + 1.

    Attributes:
        weight: (C_out, C_in/groups, k), U(−√(1/fan_in), √(1/fan_in)), fan_in = C_in/groups·k.
        bias: (C_out,), the same distribution.
    """

    _d = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int],
                 stride: int | tuple[int] = 1, padding: int | tuple[int] | str = 0,
                 dilation: int | tuple[int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, unfold: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, (0,), groups, bias, padding_mode, device, dtype, unfold)


class Conv3d(_Conv):
    r"""z = W ⋆ a_prev + b over three spatial dims (video, volumes), with BP2, BP3 and
    BP4 written out (:class:`ConvNdFunction`); a drop-in for ``torch.nn.Conv3d``.

    Args: as :class:`Conv1d`, with ints or triples (k_d, k_h, k_w).

    Shape:
        input (N, C_in, D, H, W) or (C_in, D, H, W) -> output (N, C_out, D_out, H_out,
        W_out) or unbatched, each ⌊(n + 2p − dil(k − 1) − 1)/s⌋ + 1.

    Attributes:
        weight: (C_out, C_in/groups, k_d, k_h, k_w), U(−√(1/fan_in), √(1/fan_in)).
        bias: (C_out,), the same distribution.
    """

    _d = 3

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int, int], stride: int | tuple[int, int, int] = 1,
                 padding: int | tuple[int, int, int] | str = 0,
                 dilation: int | tuple[int, int, int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, unfold: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, (0, 0, 0), groups, bias, padding_mode, device, dtype, unfold)


class _ConvTransposeNd(_ConvNd):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding,
                 output_padding, groups: int, bias: bool, dilation, padding_mode: str,
                 device, dtype, unfold: bool) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         True, _ntuple(self._d)(output_padding), groups, bias, padding_mode,
                         device, dtype, unfold)

    def _output_padding(self, input: Tensor, output_size) -> tuple[int, ...]:
        """The output_padding that gives ``output_size`` (torch's rule: its last d
        entries; each between the smallest output and that plus stride − 1)."""
        if output_size is None:
            return self.output_padding
        d = self._d
        lead = 2 if input.dim() == d + 2 else 1
        output_size = list(output_size)
        if len(output_size) == lead + d:
            output_size = output_size[lead:]
        if len(output_size) != d:
            raise ValueError(f"{type(self).__name__}: for {input.dim()}D input, output_size "
                             f"must have {d} or {lead + d} elements (got {len(output_size)})")
        smallest = conv_transpose_out_size(input.shape[lead:], self.kernel_size, self.stride,
                                           self.padding, (0,) * d, self.dilation)
        largest = tuple(m + s - 1 for m, s in zip(smallest, self.stride))
        if any(not lo <= int(n) <= hi for n, lo, hi in zip(output_size, smallest, largest)):
            raise ValueError(f"requested an output size of {output_size}, but valid sizes "
                             f"range from {list(smallest)} to {list(largest)} (for an input "
                             f"of {tuple(input.shape[lead:])})")
        return tuple(int(n) - m for n, m in zip(output_size, smallest))

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        conv_transpose = (F.conv_transpose1d, F.conv_transpose2d,
                          F.conv_transpose3d)[self._d - 1]
        output_padding = self._output_padding(input, output_size)
        return conv_transpose(input, self.weight, self.bias, self.stride, self.padding,
                              output_padding, self.groups, self.dilation, path=self._path)


_TRANSPOSED_DOC = r"""z = Wᵀ ⋆ a_prev + b over {d} spatial dim(s): the adjoint of Conv{d}d with the
    same W, with BP2 (the convolution of δ with W), BP3 and BP4 (the convolution's BP4 with a and
    δ swapped) written out (:class:`ConvTransposeNdFunction`, derivation in
    ``bptorch/functions/conv.py``). A drop-in for ``torch.nn.ConvTranspose{d}d``.

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size, stride, padding, output_padding, dilation: ints or {d}-tuples, as
            torch; output_padding (below stride or dilation) adds end rows to the output.
        groups, bias: as Conv{d}d.
        padding_mode: only "zeros" (torch raises ValueError for the others; so does this).
        unfold: the reference path (gather + matmul + scatter-add) both ways.

    ``forward(input, output_size=None)``: ``output_size`` picks output_padding, as torch.

    Shape:
        input (N, C_in, *S) or (C_in, *S) -> output (N, C_out, *S_out) or unbatched,
        S_out = (S − 1)s − 2p + dil(k − 1) + output_padding + 1.

    Attributes:
        weight: (C_in, C_out/groups, *k), U(−√(1/fan_in), √(1/fan_in)), fan_in =
            C_out/groups·Πk (torch's: from W's dim 1).
        bias: (C_out,), the same distribution.
    """


class ConvTranspose1d(_ConvTransposeNd):
    __doc__ = _TRANSPOSED_DOC.format(d=1)
    _d = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int],
                 stride: int | tuple[int] = 1, padding: int | tuple[int] = 0,
                 output_padding: int | tuple[int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | tuple[int] = 1, padding_mode: str = "zeros",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, unfold: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, groups, bias, dilation, padding_mode, device, dtype,
                         unfold)


class ConvTranspose2d(_ConvTransposeNd):
    __doc__ = _TRANSPOSED_DOC.format(d=2)
    _d = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                 groups: int = 1, bias: bool = True, dilation: IntPair = 1,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, unfold: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, groups, bias, dilation, padding_mode, device, dtype,
                         unfold)


class ConvTranspose3d(_ConvTransposeNd):
    __doc__ = _TRANSPOSED_DOC.format(d=3)
    _d = 3

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int, int], stride: int | tuple[int, int, int] = 1,
                 padding: int | tuple[int, int, int] = 0,
                 output_padding: int | tuple[int, int, int] = 0, groups: int = 1,
                 bias: bool = True, dilation: int | tuple[int, int, int] = 1,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, unfold: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, groups, bias, dilation, padding_mode, device, dtype,
                         unfold)


__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d"]

# moved out of this file (one release)
__getattr__ = moved(__name__, {"MaxPool2d": "bptorch.nn.pool", "Dropout": "bptorch.nn.dropout",
                               "Flatten": "bptorch.nn.dropout"})
