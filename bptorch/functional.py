"""Lowercase functional forms, as ``torch.nn.functional``: check the input (``_checks``),
handle torch's arguments, then apply the Function (``bptorch.functions``). The ``nn``
modules call these: each argument is handled here once."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.nn.functional import _get_softmax_dim
from torch.nn.modules.utils import _pair
from torch.nn.modules.utils import _ntuple

from . import _checks as C
from ._checks import check_cost_inputs, check_floating, check_linear
from .activations import Activation, get_activation
from .functions.attention import AttentionFunction, bool_to_bias, causal_bias
from .functions.attention import FlashAttentionFunction, flash_attention_applies
from .functions.base import IntPair
from .functions.conv import Conv2dFunction
from .functions.conv import ConvNdFunction, ConvTransposeNdFunction, ModePadFunction
from .functions.costs import CostFunction, get_cost
from .functions.dropout import DropoutFunction, FlattenFunction, dropout_mask
from .functions.dropout import AlphaDropoutFunction, alpha_dropout_mask, feature_dropout_mask
from .functions.embedding import EmbeddingFunction
from .functions.feedback import (
    Conv2dFeedbackFunction, DenseFeedbackFunction, LinearFeedbackFunction,
)
from .functions.linear import ActivationFunction, DenseFunction, LinearFunction
from .functions.linear import KEEPS_NO_Z_IN_PLACE, PReLUFunction
from .functions.products import BmmFunction, MatmulFunction, MulFunction
from .functions.normalization import BatchNormFunction, LayerNormFunction, update_running_stats
from .functions.normalization import GroupNormFunction
from .functions.pool import AdaptiveAvgPool2dFunction, AvgPool2dFunction, MaxPool2dFunction
from .functions.recurrent import GRULayerFunction, LSTMLayerFunction, RNNLayerFunction
from .functions.recurrent import GRUCellFunction, LSTMCellFunction, RNNCellFunction
from .functions.pool import (
    AdaptiveAvgPool1dFunction, AdaptiveAvgPool3dFunction, AdaptiveMaxPool1dFunction,
    AdaptiveMaxPool2dFunction, AdaptiveMaxPool3dFunction, AvgPool1dFunction, AvgPool3dFunction,
    MaxPool1dFunction, MaxPool3dFunction,
)
from .functions.upsample import InterpolateFunction


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None, *,
           feedback_weight: Tensor | None = None) -> Tensor:
    """z = a_prev Wᵀ + b for input (*, in_features), weight (out, in), bias (out,).

    ``feedback_weight``: a feedback rule's B (W's shape), passed down in BP2 in place
    of W (``bptorch.feedback``); None for backprop.
    """
    check_linear(input, weight, bias)
    if feedback_weight is not None:
        return LinearFeedbackFunction.apply(input, weight, bias, feedback_weight)
    return LinearFunction.apply(input, weight, bias)


def dense(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | Activation = "sigmoid",
    *,
    name: str | None = None,
    feedback_weight: Tensor | None = None,
) -> Tensor:
    """a = σ(a_prev Wᵀ + b), the fused layer; ``name`` labels it for diagnostics,
    ``feedback_weight`` as :func:`linear`."""
    act = get_activation(activation)
    check_linear(input, weight, bias)
    if feedback_weight is not None:
        return DenseFeedbackFunction.apply(input, weight, bias, act, name, feedback_weight)
    return DenseFunction.apply(input, weight, bias, act, name)


def activation(
    input: Tensor, act: Activation, name: str | None = None, inplace: bool = False
) -> Tensor:
    """a = σ(z) through :class:`ActivationFunction`, checking the input first.

    ``inplace=True`` behaves as torch's in-place activations: z is overwritten and
    returned, and a leaf that requires grad is refused with torch's error. Where σ'
    needs z (SiLU), a copy of z is kept for backward, as torch's ``silu_`` does;
    leaky_relu with a negative slope keeps none, and its backward raises as torch's.

    Integer (and bool) input has no gradient to write out: it gets torch's own σ, as
    torch.nn's activations do, with torch's result dtype (relu keeps int64, sigmoid gives
    float32) and torch's error where torch has no integer kernel.
    """
    if isinstance(input, Tensor) and not (input.is_floating_point() or input.is_complex()):
        return act.fn_(input) if inplace and act.fn_ is not None else act.fn(input)
    check_floating("input", input)
    if _overwrites_a_view(input, inplace):
        # σ' from z: z's memory is about to be overwritten, so the Function sees a copy
        z = input.clone() if act.saves == "z" else input
        return _write_back(input, ActivationFunction.apply(z, act, name, False, None))
    if not _can_overwrite(input, inplace):
        return ActivationFunction.apply(input, act, name, False, None)
    if act.fn_ is None:
        raise ValueError(f"activation {act.name!r} has no in-place form")
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    if needs_grad and input.is_leaf:
        raise RuntimeError(
            "a leaf Variable that requires grad is being used in an in-place operation."
        )
    if not needs_grad and forward_ad.unpack_dual(input).tangent is None:
        return act.fn_(input)  # nothing to differentiate: the plain in-place op
    z_before = None
    if act.saves == "z" and act.name not in KEEPS_NO_Z_IN_PLACE:
        # σ' needs the z about to be overwritten; a clone still on the graph (not detached),
        # so that double backward reaches z through σ'(z)
        z_before = input.clone()
    return ActivationFunction.apply(input, act, name, True, z_before)


_activation = activation


def _overwrites_a_view(input: Tensor, inplace: bool) -> bool:
    """``inplace=True`` on one of torch's views (``x[:, 0]`` before ``Dropout(inplace=True)``)
    that takes a gradient: a custom Function overwriting a view is wrapped by autograd in
    CopySlices, torch's node; :func:`_write_back` does the same write through bptorch's."""
    return (inplace and torch.is_grad_enabled() and input.requires_grad and input._is_view()
            and getattr(type(input.grad_fn), "_forward_cls", None) is None
            and not input._base.is_leaf  # a view of a leaf: torch's error, from below
            and not torch._C._are_functorch_transforms_active())


def _write_back(input: Tensor, out: Tensor) -> Tensor:
    """Write ``out`` (the layer's result, computed out of place) into the view ``input``,
    through its base by ``put_`` at the view's flat positions (functions/indexing.py): the
    base then holds what torch's in-place layer leaves there, and its grad_fn is
    PutFunctionBackward where torch's would be CopySlices. Returns ``input``."""
    base = input._base
    PutFunction.apply(base, positions(base, input), out, False, True)
    return input


def _can_overwrite(input: Tensor, inplace: bool) -> bool:
    """``inplace=True`` overwrites its input as torch's does, except a view that a custom
    Function returned (Flatten's, say, before torchvision's ``Dropout(inplace=True)``):
    autograd forbids overwriting those, so it gets the same values out of place; the
    model's forward uses the returned tensor either way. torch's own views (a slice, a
    transpose) are overwritten as torch overwrites them."""
    if not inplace or not torch.is_grad_enabled():
        return inplace
    made_by_function = getattr(type(input.grad_fn), "_forward_cls", None) is not None
    return not (made_by_function and input._is_view())


def apply_activation(
    input: Tensor, activation: str | Activation, *, name: str | None = None
) -> Tensor:
    """a = σ(z) for an activation given by name or object."""
    return _activation(input, get_activation(activation), name)


def sigmoid(input: Tensor) -> Tensor:
    """a = 1 / (1 + e^{−z})."""
    return _activation(input, get_activation("sigmoid"))


def tanh(input: Tensor) -> Tensor:
    """a = tanh(z)."""
    return _activation(input, get_activation("tanh"))


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """a = max(z, 0); ``inplace=True`` overwrites z with a and returns it."""
    return _activation(input, get_activation("relu"), inplace=inplace)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """a = z if z > 0 else negative_slope · z (a negative slope saves z, not a)."""
    act = get_activation("leaky_relu", negative_slope=negative_slope)
    return _activation(input, act, inplace=inplace)


def softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """a_j = e^{z_j} / Σ_k e^{z_k} along ``dim``; ``dim=None`` is torch's implicit,
    deprecated choice (0 for 0-, 1-, 3-dim input, else 1), with its warning. ``dtype``
    casts the input first, as torch's."""
    if dim is None:
        dim = _get_softmax_dim("softmax", input.dim(), _stacklevel)
    if dtype is not None:
        input = input.to(dtype)
    return _activation(input, get_activation("softmax", dim=dim))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """a = z Φ(z), Φ the standard normal CDF (``approximate="tanh"``: torch's tanh form)."""
    return _activation(input, get_activation("gelu", approximate=approximate))


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """a = z σ(z), σ the sigmoid; ``inplace=True`` overwrites z (a copy is kept for σ')."""
    return _activation(input, get_activation("silu"), inplace=inplace)


def identity(input: Tensor) -> Tensor:
    """a = z (σ' = 1), for a linear output layer."""
    return _activation(input, get_activation("identity"))


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """a = min(max(z, 0), 6); σ' = 1 on (0, 6), 0 outside and at both kinks."""
    return _activation(input, get_activation("relu6"), inplace=inplace)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    """a = min(max(z, min_val), max_val); σ' = 1 strictly inside, 0 elsewhere."""
    C.check_hardtanh(min_val, max_val)
    act = get_activation("hardtanh", min_val=min_val, max_val=max_val)
    return _activation(input, act, inplace=inplace)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """a = relu6(z + 3)/6; σ' = 1/6 on (−3, 3), else 0."""
    return _activation(input, get_activation("hardsigmoid"), inplace=inplace)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """a = z relu6(z + 3)/6; σ' = 0, z/3 + 1/2, 1 (a copy of z is kept when in place)."""
    return _activation(input, get_activation("hardswish"), inplace=inplace)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """a = z for z > 0, α(e^z − 1) else; σ' = 1 or a + α (α < 0 saves z, not a)."""
    return _activation(input, get_activation("elu", alpha=alpha), inplace=inplace)


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    """a = λ elu(z, α), torch's fixed λ ≈ 1.0507, α ≈ 1.6733; σ' = λ or a + λα."""
    return _activation(input, get_activation("selu"), inplace=inplace)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """a = (1/β) ln(1 + e^{βz}) (z where βz > threshold); σ' = sigmoid(βz)."""
    return _activation(input, get_activation("softplus", beta=beta, threshold=threshold))


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """a = z tanh(softplus(z)); σ' = t + z s (1 − t²) (a copy of z is kept when in place)."""
    return _activation(input, get_activation("mish"), inplace=inplace)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """a = max(z, 0) + α_c min(z, 0), ``weight`` α: one slope or one per channel (dim 1);
    backward gives ∂C/∂α_c = Σ ∂C/∂a ⊙ min(z, 0) (the slope's BP4)."""
    C.check_prelu(input, weight)
    return PReLUFunction.apply(input, weight)


REDUCTIONS = ("none", "mean", "sum")


def cost(
    name: str, output: Tensor, target: Tensor, logits: bool = False, reduction: str = "mean"
) -> Tensor:
    """The cost ``name`` of ``output`` (*, C), classes last, against class indices (*)
    or a float target (*, C). ``reduction``: "none" gives C_x per position, shape (*);
    "mean" the book's (1/n) Σ_x C_x over all n leading positions (N·T for a sequence,
    as torch's cross_entropy); "sum" drops the 1/n."""
    c = get_cost(name, logits)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    y = check_cost_inputs(output, target, "input" if logits else "output",
                          probabilities=c.probabilities)
    scale = 1.0 / max(output.shape[:-1].numel(), 1) if reduction == "mean" else 1.0
    return CostFunction.apply(output, y, c, scale, "none" if reduction == "none" else "sum")


_cost, _REDUCTIONS = cost, REDUCTIONS  # the old private names (network.py, one release)


def quadratic_cost(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """C_x = ½‖a − y‖² summed over the C outputs; ``reduction`` over the positions (*)."""
    return cost("quadratic", output, target, False, reduction)


def cross_entropy_cost(
    output: Tensor, target: Tensor, logits: bool = False, reduction: str = "mean"
) -> Tensor:
    """C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)], a in [0, 1]; with ``logits=True``
    ``output`` is z^L, a = σ(z). Finite at saturation (see bptorch.functions.costs)."""
    return cost("cross_entropy", output, target, logits, reduction)


def log_likelihood_cost(
    output: Tensor, target: Tensor, logits: bool = False, reduction: str = "mean"
) -> Tensor:
    """C_x = −Σ_j y_j ln a_j (−ln a_y for class indices), a in [0, 1]; with ``logits=True``
    ``output`` is z^L and a = softmax(z). Finite at saturation."""
    return cost("log_likelihood", output, target, logits, reduction)


# ---- convolution, pooling, dropout and flatten (bptorch/functions/conv.py, pool.py,
# dropout.py)


def _unbatched(fn, input: Tensor):
    """Apply a (N, C, H, W) function to an unbatched (C, H, W) input, as torch accepts."""
    if input.dim() == 3:
        out = fn(input.unsqueeze(0))
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(input)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None,
           stride: IntPair = 1, padding: IntPair | str = 0, dilation: IntPair = 1,
           groups: int = 1, *, path: str = "conv",
           feedback_weight: Tensor | None = None) -> Tensor:
    """z = W ⋆ a_prev + b for input (N, C_in, H, W) or (C_in, H, W), weight
    (C_out, C_in/groups, k_h, k_w); ``padding`` an int, pair, "valid" or "same".

    bptorch only: ``path`` picks the backward ("conv", the default; "unfold", the
    reference; "fused", ATen's kernel), ``feedback_weight`` as :func:`linear`.
    """
    stride, dilation = _pair(stride), _pair(dilation)
    padding = padding if isinstance(padding, str) else _pair(padding)
    C.check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    if feedback_weight is not None:
        return _unbatched(lambda x: Conv2dFeedbackFunction.apply(
            x, weight, bias, stride, padding, dilation, groups, path, feedback_weight), input)
    return _unbatched(lambda x: Conv2dFunction.apply(
        x, weight, bias, stride, padding, dilation, groups, path), input)


# ---- conv1d, conv3d and the transposed convolutions, any d (bptorch/functions/conv.py)
def _unbatched_nd(fn, input: Tensor, d: int) -> Tensor:
    """Apply a (N, C, *S) function to an unbatched (C, *S) input of d spatial dims."""
    if input.dim() == d + 1:
        return fn(input.unsqueeze(0)).squeeze(0)
    return fn(input)


def _conv_nd(d: int, input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
             dilation, groups: int, path: str) -> Tensor:
    ntuple = _ntuple(d)
    stride, dilation = ntuple(stride), ntuple(dilation)
    padding = padding if isinstance(padding, str) else ntuple(padding)
    C.check_conv(input, weight, bias, stride, padding, dilation, groups, d)
    return _unbatched_nd(lambda x: ConvNdFunction.apply(
        x, weight, bias, stride, padding, dilation, groups, path), input, d)


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
           padding: int | tuple[int] | str = 0, dilation=1, groups: int = 1, *,
           path: str = "conv") -> Tensor:
    """z = W ⋆ a_prev + b for input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups,
    k); ``padding`` an int, "valid" or "same". ``path`` (bptorch only): "conv" (default)
    or "unfold" (the reference)."""
    return _conv_nd(1, input, weight, bias, stride, padding, dilation, groups, path)


def conv3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
           padding: int | tuple[int, int, int] | str = 0, dilation=1, groups: int = 1, *,
           path: str = "conv") -> Tensor:
    """z = W ⋆ a_prev + b for input (N, C_in, D, H, W) or (C_in, D, H, W), weight
    (C_out, C_in/groups, k_d, k_h, k_w); ``padding`` ints, "valid" or "same"."""
    return _conv_nd(3, input, weight, bias, stride, padding, dilation, groups, path)


def _conv_transpose_nd(d: int, input: Tensor, weight: Tensor, bias: Tensor | None, stride,
                       padding, output_padding, groups: int, dilation, path: str) -> Tensor:
    ntuple = _ntuple(d)
    stride, dilation, output_padding = ntuple(stride), ntuple(dilation), ntuple(output_padding)
    padding = padding if isinstance(padding, str) else ntuple(padding)
    C.check_conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, d)
    return _unbatched_nd(lambda x: ConvTransposeNdFunction.apply(
        x, weight, bias, stride, padding, output_padding, groups, dilation, path), input, d)


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                     path: str = "conv") -> Tensor:
    """z = Wᵀ ⋆ a_prev + b, the adjoint of conv1d, for input (N, C_in, L) or (C_in, L),
    weight (C_in, C_out/groups, k); L_out = (L − 1)s − 2p + dil(k − 1) + output_padding + 1."""
    return _conv_transpose_nd(1, input, weight, bias, stride, padding, output_padding, groups,
                              dilation, path)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                     path: str = "conv") -> Tensor:
    """z = Wᵀ ⋆ a_prev + b, the adjoint of conv2d, for input (N, C_in, H, W) or
    (C_in, H, W), weight (C_in, C_out/groups, k_h, k_w)."""
    return _conv_transpose_nd(2, input, weight, bias, stride, padding, output_padding, groups,
                              dilation, path)


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                     path: str = "conv") -> Tensor:
    """z = Wᵀ ⋆ a_prev + b, the adjoint of conv3d, for input (N, C_in, D, H, W) or
    (C_in, D, H, W), weight (C_in, C_out/groups, k_d, k_h, k_w)."""
    return _conv_transpose_nd(3, input, weight, bias, stride, padding, output_padding, groups,
                              dilation, path)


def mode_pad(input: Tensor, pad: tuple[int, ...] | list[int], mode: str) -> Tensor:
    """torch's F.pad(input, pad, mode) for mode "reflect", "replicate" or "circular" (the
    padding modes of Conv), with its backward written out: the scatter-add of δ onto the
    pixels each padded one copies. ``pad``: (left, right) of the last dim first."""
    pad = tuple(int(p) for p in pad)
    C.check_mode_pad(input, pad, mode)
    return ModePadFunction.apply(input, pad, mode)


def max_pool2d(input: Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
               return_indices: bool = False):
    """a_j = max over window j; stride defaults to kernel_size. With ``return_indices``
    returns (a, flat per-map argmax indices), as torch."""
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None else k
    p, d = _pair(padding), _pair(dilation)
    C.check_pool2d(input, k, s, p, d, ceil_mode)
    a, indices = _unbatched(
        lambda x: MaxPool2dFunction.apply(x, k, s, p, d, ceil_mode), input)
    return (a, indices) if return_indices else a


def avg_pool2d(input: Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i; stride defaults to kernel_size."""
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None and stride != [] else k
    p = _pair(padding)
    C.check_avg_pool2d(input, k, s, p, divisor_override)
    return AvgPool2dFunction.apply(input, k, s, p, ceil_mode, count_include_pad,
                                   divisor_override)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Average pooling over the windows that give ``output_size`` (int, pair, None
    entries keep the input's size)."""
    C.check_pool_input(input)
    size = C.adaptive_output_size(input, output_size)
    return AdaptiveAvgPool2dFunction.apply(input, size)


# ---- pooling over 1 and 3 spatial dims, adaptive max pooling and interpolation
# (bptorch/functions/pool.py, upsample.py): one Function per family for any d


def _unbatched_nd(fn, input: Tensor, d: int):
    """Apply a (N, C, *spatial) function to an unbatched (C, *spatial) input, d spatial dims."""
    if input.dim() == d + 1:
        out = fn(input.unsqueeze(0))
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(input)


_MAX_POOLS = {1: MaxPool1dFunction, 2: MaxPool2dFunction, 3: MaxPool3dFunction}
_AVG_POOLS = {1: AvgPool1dFunction, 2: AvgPool2dFunction, 3: AvgPool3dFunction}
_ADAPTIVE_AVG_POOLS = {1: AdaptiveAvgPool1dFunction, 2: AdaptiveAvgPool2dFunction,
                       3: AdaptiveAvgPool3dFunction}
_ADAPTIVE_MAX_POOLS = {1: AdaptiveMaxPool1dFunction, 2: AdaptiveMaxPool2dFunction,
                       3: AdaptiveMaxPool3dFunction}


def _max_pool(d: int, input: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool,
              return_indices: bool):
    tup = _ntuple(d)
    k = tup(kernel_size)
    s = tup(stride) if stride is not None and stride != [] else k
    p, dl = tup(padding), tup(dilation)
    C.check_max_pool(input, d, k, s, p, dl, ceil_mode)
    a, indices = _unbatched_nd(
        lambda x: _MAX_POOLS[d].apply(x, k, s, p, dl, ceil_mode, return_indices), input, d)
    return (a, indices) if return_indices else a


def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """a_j = max over window j of (N, C, L) or (C, L); δ routed to the winners."""
    return _max_pool(1, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool3d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """a_j = max over window j of (N, C, D, H, W) or (C, D, H, W); δ routed to the winners."""
    return _max_pool(3, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def _avg_pool(d: int, input: Tensor, kernel_size, stride, padding, ceil_mode: bool,
              count_include_pad: bool, divisor_override: int | None) -> Tensor:
    tup = _ntuple(d)
    k = tup(kernel_size)
    s = tup(stride) if stride is not None and stride != [] else k
    p = tup(padding)
    C.check_avg_pool(input, d, k, s, p, ceil_mode, divisor_override)
    # unbatched input goes in as it is: the average's backward reads only trailing dims
    return _AVG_POOLS[d].apply(input, k, s, p, ceil_mode, count_include_pad, divisor_override)


def avg_pool1d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over (N, C, L) or (C, L) (torch's avg_pool1d has
    no divisor_override)."""
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     None)


def avg_pool3d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over (N, C, D, H, W) or (C, D, H, W)."""
    return _avg_pool(3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def _adaptive_avg_pool(d: int, input: Tensor, output_size) -> Tensor:
    size = C.adaptive_output_size_nd(input, output_size, d)
    return _ADAPTIVE_AVG_POOLS[d].apply(input, size)  # (C, *spatial) as it is, as in 2-d


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """Average pooling over the windows that give ``output_size`` along L."""
    return _adaptive_avg_pool(1, input, output_size)


def adaptive_avg_pool3d(input: Tensor, output_size) -> Tensor:
    """Average pooling over the windows that give ``output_size`` (int, triple, None
    entries keep the input's size)."""
    return _adaptive_avg_pool(3, input, output_size)


def _adaptive_max_pool(d: int, input: Tensor, output_size, return_indices: bool):
    size = C.adaptive_output_size_nd(input, output_size, d)
    a, indices = _unbatched_nd(lambda x: _ADAPTIVE_MAX_POOLS[d].apply(x, size), input, d)
    return (a, indices) if return_indices else a


def adaptive_max_pool1d(input: Tensor, output_size, return_indices: bool = False):
    """Max pooling over the windows that give ``output_size`` along L."""
    return _adaptive_max_pool(1, input, output_size, return_indices)


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """Max pooling over the windows that give ``output_size`` (int, pair, None entries keep
    the input's size); with ``return_indices`` also the flat per-map argmax, as torch."""
    return _adaptive_max_pool(2, input, output_size, return_indices)


def adaptive_max_pool3d(input: Tensor, output_size, return_indices: bool = False):
    """Max pooling over the windows that give ``output_size`` (int, triple, None entries)."""
    return _adaptive_max_pool(3, input, output_size, return_indices)


# torch's *_with_indices forms: (output, indices) whatever return_indices says
def max_pool1d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False):
    return _max_pool(1, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False):
    return _max_pool(2, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool3d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False):
    return _max_pool(3, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def adaptive_max_pool1d_with_indices(input: Tensor, output_size,
                                     return_indices: bool = False):
    return _adaptive_max_pool(1, input, output_size, True)


def adaptive_max_pool2d_with_indices(input: Tensor, output_size,
                                     return_indices: bool = False):
    return _adaptive_max_pool(2, input, output_size, True)


def adaptive_max_pool3d_with_indices(input: Tensor, output_size,
                                     return_indices: bool = False):
    return _adaptive_max_pool(3, input, output_size, True)


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """a = z ×_1 M_1 ⋯ ×_d M_d, M_a the 1-d interpolation matrices of ``mode`` ('nearest',
    'nearest-exact', 'linear', 'bilinear', 'trilinear'; 'area' is adaptive average
    pooling, as in torch); backward ∂C/∂z = δ ×_1 M_1ᵀ ⋯ ×_d M_dᵀ."""
    out, scales = C.interpolate_sizes(input, size, scale_factor, mode, align_corners,
                                      recompute_scale_factor, antialias)
    if mode == "area":
        return _ADAPTIVE_AVG_POOLS[input.dim() - 2].apply(input, out)
    return InterpolateFunction.apply(input, out, scales, mode, align_corners)


def upsample(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
             align_corners: bool | None = None,
             recompute_scale_factor: bool | None = None) -> Tensor:
    """torch's deprecated name for :func:`interpolate`."""
    return interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor)


def upsample_nearest(input: Tensor, size=None, scale_factor=None) -> Tensor:
    """torch's deprecated nearest upsampling: :func:`interpolate` in mode 'nearest'."""
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size=None, scale_factor=None) -> Tensor:
    """torch's deprecated bilinear upsampling: 'bilinear' with align_corners=True."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)

def dropout(input: Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> Tensor:
    """a = z ⊙ m, m_i ∈ {0, 1/(1 − p)}; the identity when not training."""
    p = C.check_dropout_p(p)
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError("dropout expects a floating-point tensor")
    if not training or p == 0.0:
        return input
    if _overwrites_a_view(input, inplace):
        return _write_back(input, DropoutFunction.apply(input, dropout_mask(input, p), False))
    return DropoutFunction.apply(input, dropout_mask(input, p), _can_overwrite(input, inplace))


def _feature_dropout(input: Tensor, p: float, training: bool, inplace: bool,
                     batched: bool) -> Tensor:
    """a = z ⊙ m with one m per (example, channel) (per channel if not ``batched``)."""
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if _overwrites_a_view(input, inplace):
        return _write_back(input, DropoutFunction.apply(
            input, feature_dropout_mask(input, p, batched), False))
    return DropoutFunction.apply(input, feature_dropout_mask(input, p, batched), inplace)


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel-wise dropout of (N, C, L) or unbatched (C, L): each channel kept (×1/(1 − p))
    or zeroed whole; the identity when not training."""
    p = C.check_dropout_p(p)
    C.check_dropout_nd("dropout1d", input, 2)
    if input.dim() not in (2, 3):
        raise ValueError(f"dropout1d expects (N, C, L) or (C, L) input, got shape "
                         f"{tuple(input.shape)}; use dropout2d/dropout3d for more dims")
    return _feature_dropout(input, p, training, inplace, batched=input.dim() == 3)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel-wise dropout of (N, C, H, W). As torch: a 3-D input is taken as (N, C, L)
    (1-D behaviour), with torch's warnings for 3-D and other than 3-/4-D input."""
    p = C.check_dropout_p(p)
    if isinstance(input, Tensor) and input.dim() not in (3, 4):
        warnings.warn(
            f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior and "
            "silence this warning, please use dropout instead. Note that dropout2d exists to "
            "provide channel-wise dropout on inputs with 2 spatial dimensions, a channel "
            "dimension, and an optional batch dimension (i.e. 3D or 4D inputs).", stacklevel=2)
    if isinstance(input, Tensor) and input.dim() == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D "
            "dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret "
            "the input as one without a batch dimension, i.e. shape (C, H, W). To maintain "
            "the 1D channel-wise dropout behavior, please switch to using dropout1d "
            "instead.", stacklevel=2)
    C.check_dropout_nd("dropout2d", input, 2)
    return _feature_dropout(input, p, training, inplace, batched=True)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel-wise dropout of (N, C, D, H, W) or unbatched (C, D, H, W); other than 4-/5-D
    input is taken as unbatched, with torch's warning."""
    p = C.check_dropout_p(p)
    if isinstance(input, Tensor) and input.dim() not in (4, 5):
        warnings.warn(
            f"dropout3d: Received a {input.dim()}-D input to dropout3d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior and "
            "silence this warning, please use dropout instead. Note that dropout3d exists to "
            "provide channel-wise dropout on inputs with 3 spatial dimensions, a channel "
            "dimension, and an optional batch dimension (i.e. 4D or 5D inputs).", stacklevel=2)
    C.check_dropout_nd("dropout3d", input, 1)
    return _feature_dropout(input, p, training, inplace, batched=input.dim() == 5)


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                  inplace: bool = False) -> Tensor:
    """a = z ⊙ m + b, alpha dropout for SELU networks (mean and variance kept); the
    identity when not training (torch's default here: ``training=False``)."""
    p = C.check_dropout_p(p)
    C.check_dropout_nd("alpha_dropout", input, 0)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    mask, shift = alpha_dropout_mask(input, p)
    if shift is None:  # p = 1: zeros, as torch
        return DropoutFunction.apply(input, mask, inplace)
    return AlphaDropoutFunction.apply(input, mask, shift, inplace)


def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                          inplace: bool = False) -> Tensor:
    """Alpha dropout with one (m, b) per example and channel of (N, C, *)."""
    p = C.check_dropout_p(p)
    C.check_dropout_nd("feature_alpha_dropout", input, 2)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    mask, shift = alpha_dropout_mask(input, p, feature=True)
    if shift is None:  # p = 1: zeros, as torch
        return DropoutFunction.apply(input, mask, inplace)
    return AlphaDropoutFunction.apply(input, mask, shift, inplace)


def flatten(input: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """Merge dims start_dim..end_dim; the backward reshapes δ back."""
    return FlattenFunction.apply(input, start_dim, end_dim)


# ---- normalization and embedding (bptorch/functions/normalization.py, embedding.py)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β per channel of (N, C, *); batch statistics when
    ``training`` (the running ones, if given, updated in place with ``momentum``),
    else the running statistics."""
    C.check_batch_norm(input, running_mean, running_var, weight, bias, training)
    y, mean, rstd = BatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, training, eps)
    # an empty batch leaves the running statistics alone, as torch
    if training and (running_mean is not None or running_var is not None) and input.numel():
        update_running_stats(running_mean, running_var, mean, rstd, eps,
                             input.numel() // input.shape[1], momentum)
    return y


def layer_norm(input: Tensor, normalized_shape: int | tuple[int, ...] | list[int],
               weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β, μ and σ² over the trailing ``normalized_shape``."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
        tuple(int(n) for n in normalized_shape)
    C.check_layer_norm(input, shape, weight, bias)
    return LayerNormFunction.apply(input, shape, weight, bias, eps)[0]


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β, μ and σ² per example over each group of
    C/num_groups channels of (N, C, *); γ, β per channel."""
    C.check_group_norm(input, num_groups, weight, bias)
    return GroupNormFunction.apply(input, num_groups, weight, bias, eps)[0]


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β, μ and σ² per example and channel of (N, C, *) over
    the spatial axes (``use_input_stats``; the running statistics, if given, updated with
    their averages over the batch), else the running statistics, as BatchNorm's eval."""
    C.check_instance_norm(input, running_mean, running_var, weight, bias, use_input_stats)
    if not use_input_stats:  # fixed statistics: BatchNorm's eval mode, the same equation
        # on a contiguous input, as torch's instance_norm: the output has torch's strides
        x = input if input.is_contiguous() else input.contiguous()
        return BatchNormFunction.apply(x, weight, bias, running_mean, running_var, False, eps)[0]
    # one group per channel: GroupNorm's Function with num_groups=None
    y, mean, rstd = GroupNormFunction.apply(input, None, weight, bias, eps)
    if running_mean is not None or running_var is not None:
        update_running_stats(running_mean, running_var, mean, rstd, eps,
                             math.prod(input.shape[2:]), momentum)
    return y


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """z = weight[input]: row i of the (V, D) table for each index i; the padding row
    gets no gradient. ``max_norm`` and ``sparse=True`` raise NotImplementedError."""
    C.check_embedding_unsupported(max_norm, sparse)
    check_floating("weight", weight)
    padding_idx = C.wrap_padding_idx(padding_idx, weight.shape[0])
    C.check_embedding(input, weight, padding_idx)
    return EmbeddingFunction.apply(input, weight, padding_idx, scale_grad_by_freq)


# ---- attention (bptorch/functions/attention.py)


def attention(query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None = None,
              dropout_p: float = 0.0, scale: float | None = None, *,
              recompute: bool = False) -> tuple[Tensor, Tensor]:
    """(O, A): O = A V, A = softmax(scale · Q Kᵀ + B) ⊙ M, for query (*, L, E), key
    (*, S, E), value (*, S, Ev) and an additive ``bias`` B (−∞ where masked; None for
    none). ``dropout_p`` > 0 draws the mask M with torch's RNG; ``scale`` defaults to
    1/√E. The attention weights A are what ``MultiheadAttention`` returns."""
    p = C.check_dropout_p(dropout_p)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    drop = None
    if p > 0.0:
        batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
        drop = dropout_mask(query.new_empty((*batch, query.shape[-2], key.shape[-2])), p)
    o, a, _aux = AttentionFunction.apply(query, key, value, bias, drop, scale, recompute)
    return o, a


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False, *, recompute: bool = False) -> Tensor:
    """O = (softmax(scale · Q Kᵀ + B) ⊙ M) V for query (*, L, E), key (*, S, E), value
    (*, S, Ev): torch's contract. A boolean ``attn_mask`` marks with True the keys that take
    part, a float one is added to the scores; ``is_causal`` masks keys j > i (top-left);
    ``scale`` defaults to 1/√E; dropout (always on when ``dropout_p`` > 0, as torch's) draws
    its mask with torch's RNG. Rows with every key masked give 0, as torch's.

    ``recompute=True`` (bptorch only) keeps the row log-sum-exp instead of the (*, L, S)
    probabilities for backward and recomputes them there: L per row instead of L·S.
    ``enable_gqa=True`` raises NotImplementedError.
    """
    if enable_gqa:
        raise NotImplementedError("scaled_dot_product_attention: enable_gqa=True (grouped-"
                                  "query attention) is not implemented in bptorch")
    C.check_attention(query, key, value, attn_mask, is_causal)
    if attn_mask is None and dropout_p == 0.0 and flash_attention_applies(query, key, value):
        # bptorch.kernels: the flash kernels (functions/attention.py's end); an explicit
        # mask and dropout take the reference below
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        return FlashAttentionFunction.apply(query, key, value, scale, is_causal)[0]
    if is_causal:
        bias = causal_bias(query.shape[-2], key.shape[-2], query)
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        bias = bool_to_bias(attn_mask, query.dtype)
    else:
        bias = attn_mask
    return attention(query, key, value, bias, dropout_p, scale, recompute=recompute)[0]


# ---- recurrent layers, one layer and one direction (bptorch/functions/recurrent.py)


def rnn_layer(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None, nonlinearity: str = "tanh") -> tuple[Tensor, Tensor]:
    """(output (T, N, H), h_n) of h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), input
    (T, N, H_in) time-first; ``nn.RNN`` checks the shapes."""
    return RNNLayerFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity)


def lstm_layer(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None,
               w_hr: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(output, h_n, c_n) of torch's LSTM for one layer and direction, time-first;
    ``w_hr`` (proj_size, H) projects h_t = W_hr (o_t ⊙ tanh(c_t))."""
    out, h_n, c_n, _gates, _cells = LSTMLayerFunction.apply(input, h0, c0, w_ih, w_hh, b_ih,
                                                            b_hh, w_hr)
    return out, h_n, c_n


def gru_layer(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """(output, h_n) of torch's GRU for one layer and direction, time-first."""
    out, h_n, _gates, _hns = GRULayerFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh)
    return out, h_n


# ---- recurrent cells, one step (bptorch/functions/recurrent.py), under the names and
# signatures of torch's own (torch.rnn_tanh_cell, torch.lstm_cell, ...): batched, (N, H_in)


def rnn_tanh_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh), input (N, H_in), hx (N, H)."""
    C.check_rnn_cell("rnn_tanh_cell", input, (hx,), w_ih, w_hh, b_ih, b_hh, 1)
    return RNNCellFunction.apply(input, hx, w_ih, w_hh, b_ih, b_hh, "tanh")


def rnn_relu_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """h' = relu(W_ih x + b_ih + W_hh h + b_hh), input (N, H_in), hx (N, H)."""
    C.check_rnn_cell("rnn_relu_cell", input, (hx,), w_ih, w_hh, b_ih, b_hh, 1)
    return RNNCellFunction.apply(input, hx, w_ih, w_hh, b_ih, b_hh, "relu")


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor] | list[Tensor], w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None = None,
              b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(h', c') of one LSTM step, input (N, H_in), hx = (h, c) each (N, H); gates (i, f, g, o)
    stacked in W_ih (4H, H_in) and W_hh (4H, H)."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"lstm_cell: hx must be a pair (h, c), got {type(hx).__name__}")
    C.check_rnn_cell("lstm_cell", input, tuple(hx), w_ih, w_hh, b_ih, b_hh, 4)
    h, c, _gates = LSTMCellFunction.apply(input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh)
    return h, c


def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """h' of one GRU step, input (N, H_in), hx (N, H); gates (r, z, n) stacked in W_ih
    (3H, H_in) and W_hh (3H, H)."""
    C.check_rnn_cell("gru_cell", input, (hx,), w_ih, w_hh, b_ih, b_hh, 3)
    h, _gates, _hn = GRUCellFunction.apply(input, hx, w_ih, w_hh, b_ih, b_hh)
    return h


# ---- torch's losses and log_softmax, under torch's names and signatures
# (bptorch/functions/costs.py, section "torch's losses")
from torch.nn import _reduction as _Reduction  # noqa: E402

from .functions.costs import (  # noqa: E402
    ClassCostFunction, LogSoftmaxFunction, PointwiseCostFunction, class_target,
)


def _legacy(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's deprecated size_average/reduce pair, mapped to ``reduction`` as torch does."""
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> Tensor:
    """a = z − logsumexp(z) along ``dim`` (``dim=None``: torch's implicit choice, warned)."""
    check_floating("input", input)
    if dim is None:
        dim = _get_softmax_dim("log_softmax", input.dim(), _stacklevel)
    if dtype is not None:
        input = input.to(dtype)
    return LogSoftmaxFunction.apply(input, dim)


def _class_loss(fn: str, input: Tensor, target: Tensor, weight: Tensor | None,
                ignore_index: int, reduction: str, label_smoothing: float) -> Tensor:
    C.check_class_loss(fn, input, target, weight)
    C.check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    unbatched = input.dim() == 1
    if unbatched:  # (C,) and a 0-d target: one example
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    q, denom = class_target(input, target, weight, ignore_index, label_smoothing)
    out = ClassCostFunction.apply(input, q, denom, fn == "cross_entropy", reduction)
    return out.squeeze(0) if unbatched and reduction == "none" else out


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """ℓ_n = −Σ_c q_c ln softmax(z_n)_c, classes on dim 1, target class indices or
    probabilities; δ = (Σq) softmax(z) − q (BP1)."""
    return _class_loss("cross_entropy", input, target, weight, ignore_index,
                       _legacy(size_average, reduce, reduction), label_smoothing)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             size_average: bool | None = None, ignore_index: int = -100,
             reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """ℓ_n = −w_{y_n} x_{n, y_n} for log-probabilities x, classes on dim 1."""
    return _class_loss("nll_loss", input, target, weight, ignore_index,
                       _legacy(size_average, reduce, reduction), 0.0)


def _pointwise(fn: str, kind: str, input: Tensor, target: Tensor, reduction: str,
               weight: Tensor | None = None, pos_weight: Tensor | None = None,
               opt=None) -> Tensor:
    C.check_pointwise_loss(fn, input, target, weight=weight, pos_weight=pos_weight)
    C.check_reduction(reduction, ("none", "mean", "sum", "batchmean") if kind == "kl_div"
                      else ("none", "mean", "sum"))
    scale = 1.0
    if reduction == "mean":
        scale = 1.0 / max(input.numel(), 1) if input.numel() else float("nan")
    elif reduction == "batchmean":
        scale = 1.0 / input.shape[0] if input.dim() > 0 else 1.0
    if weight is not None:
        weight = weight.expand_as(input)
        if reduction == "mean" and kind in ("mse", "l1"):  # torch's: Σ wℓ / Σ w
            scale = 1.0 / weight.sum()  # a tensor: w's gradient flows through it too
    if pos_weight is not None:
        pos_weight = pos_weight.expand_as(input)
    return PointwiseCostFunction.apply(input, target, weight, pos_weight, kind, opt,
                                       "none" if reduction == "none" else "sum", scale)


def mse_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean",
             weight: Tensor | None = None) -> Tensor:
    """ℓ = (x − y)², ∂ℓ/∂x = 2(x − y); ``weight`` multiplies each ℓ."""
    return _pointwise("mse_loss", "mse", input, target,
                      _legacy(size_average, reduce, reduction), weight)


def l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
            reduce: bool | None = None, reduction: str = "mean",
            weight: Tensor | None = None) -> Tensor:
    """ℓ = |x − y|, ∂ℓ/∂x = sign(x − y) (0 at the kink, as torch)."""
    return _pointwise("l1_loss", "l1", input, target,
                      _legacy(size_average, reduce, reduction), weight)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                   reduce: bool | None = None, reduction: str = "mean",
                   beta: float = 1.0) -> Tensor:
    """ℓ = ½(x − y)²/β inside |x − y| < β, |x − y| − ½β outside; β = 0 is l1_loss."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    reduction = _legacy(size_average, reduce, reduction)
    if beta == 0.0:  # torch's rule: the quadratic piece is empty
        return _pointwise("smooth_l1_loss", "l1", input, target, reduction)
    return _pointwise("smooth_l1_loss", "smooth_l1", input, target, reduction, opt=beta)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average: bool | None = None, reduce: bool | None = None,
                         reduction: str = "mean") -> Tensor:
    """ℓ = −w[y ln x + (1 − y) ln(1 − x)], x in [0, 1], with BCELoss's safeguards."""
    C.check_probabilities("input", input)
    return _pointwise("binary_cross_entropy", "bce", input, target,
                      _legacy(size_average, reduce, reduction), weight)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None,
                                     size_average: bool | None = None,
                                     reduce: bool | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """ℓ = −w[p y ln σ(x) + (1 − y) ln(1 − σ(x))]; δ = w[(1 + (p − 1)y) σ(x) − p y]."""
    return _pointwise("binary_cross_entropy_with_logits", "bce_logits", input, target,
                      _legacy(size_average, reduce, reduction), weight, pos_weight)


def kl_div(input: Tensor, target: Tensor, size_average: bool | None = None,
           reduce: bool | None = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """ℓ = y (ln y − x) for log-probabilities x (``log_target``: e^y (y − x));
    "batchmean" divides the sum by the batch size, the KL divergence per example."""
    return _pointwise("kl_div", "kl_div", input, target,
                      _legacy(size_average, reduce, reduction), opt=log_target)


# ---- products (bptorch/functions/products.py), under torch's names and signatures


def matmul(input: Tensor, other: Tensor) -> Tensor:
    """C = A B with torch.matmul's shapes (1-D, 2-D, batched with broadcast batch dims);
    backward dA = δ Bᵀ, dB = Aᵀ δ, summed back over broadcast dims."""
    C.check_matmul(input, other)
    return MatmulFunction.apply(input, other)


def bmm(input: Tensor, mat2: Tensor) -> Tensor:
    """C_i = A_i B_i for (b, n, m) and (b, m, p); backward dA_i = δ_i B_iᵀ, dB_i = A_iᵀ δ_i."""
    C.check_bmm(input, mat2)
    return BmmFunction.apply(input, mat2)


def mul(input: Tensor | float, other: Tensor | float) -> Tensor:
    """c = x ⊙ y, broadcast, either a tensor or a Python number (not both); backward by the
    product rule, ∂C/∂x = δ ⊙ y, ∂C/∂y = δ ⊙ x, summed back to each shape."""
    if not isinstance(input, Tensor) and isinstance(other, Tensor):
        input, other = other, input  # x ⊙ y = y ⊙ x: the tensor first
    C.check_mul(input, other)
    return MulFunction.apply(input, other)


# ---- elementwise arithmetic (bptorch/functions/arithmetic.py), einsum (products.py) and
# roi_align (sampling.py), under torch's names and signatures; an option bptorch lacks is
# NotImplementedError, on which a routed call falls back to torch
from .functions.arithmetic import DivFunction, PointwiseFunction  # noqa: E402
from .functions.products import EinsumFunction  # noqa: E402
from .functions.sampling import GridSampleFunction, RoIAlignFunction  # noqa: E402

_Number = (int, float, bool)


def _number_arg(name: str, value) -> None:
    """A bound or exponent bptorch takes: a Python number (or None)."""
    if value is not None and not isinstance(value, _Number):
        raise NotImplementedError(f"{name}: bptorch takes a Python number here, got "
                                  f"{type(value).__name__}")


def div(input: Tensor | float, other: Tensor | float, *,
        rounding_mode: str | None = None) -> Tensor:
    """c = x / y, broadcast (either may be a Python number); backward ∂C/∂x = δ / y,
    ∂C/∂y = −δ x / y², summed back to each shape. ``rounding_mode`` is torch's."""
    if rounding_mode is not None:
        raise NotImplementedError("div: rounding_mode (a step function, no gradient)")
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        raise TypeError("div: expected a tensor operand")
    return DivFunction.apply(input, other)


def _pointwise_call(name: str, input: Tensor, p=None, q=None) -> Tensor:
    if not isinstance(input, Tensor):
        raise NotImplementedError(f"{name}: bptorch takes a tensor input")
    return PointwiseFunction.apply(input, name, p, q)


def exp(input: Tensor) -> Tensor:
    """a = e^x; backward δ ⊙ a."""
    return _pointwise_call("exp", input)


def log(input: Tensor) -> Tensor:
    """a = ln x; backward δ / x."""
    return _pointwise_call("log", input)


def sqrt(input: Tensor) -> Tensor:
    """a = √x; backward δ / (2a)."""
    return _pointwise_call("sqrt", input)


def rsqrt(input: Tensor) -> Tensor:
    """a = 1/√x; backward −½ δ a³."""
    return _pointwise_call("rsqrt", input)


def pow(input: Tensor | float, exponent: Tensor | float) -> Tensor:
    """a = x^p for a Python number p, backward δ ⊙ p x^(p−1); or a = c^x for a Python
    number base c (``torch.pow(2, x)``, ``2 ** x``), backward δ ⊙ a ln c. A tensor
    raised to a tensor is NotImplementedError."""
    if isinstance(input, _Number) and isinstance(exponent, Tensor):
        return _pointwise_call("rpow", exponent, input)
    _number_arg("pow", exponent)
    return _pointwise_call("pow", input, exponent)


def abs(input: Tensor) -> Tensor:
    """a = |x|; backward δ ⊙ sgn x (0 at x = 0)."""
    return _pointwise_call("abs", input)


def clamp(input: Tensor, min: float | None = None, max: float | None = None) -> Tensor:
    """a = min(max(x, lo), hi) for Python-number bounds; backward δ where lo < x < hi,
    0 elsewhere (at the bounds too, as torch's). Tensor bounds are NotImplementedError."""
    _number_arg("clamp", min)
    _number_arg("clamp", max)
    if min is None and max is None:
        raise TypeError("clamp: at least one of 'min' or 'max' must not be None")
    return _pointwise_call("clamp", input, min, max)


def clamp_min(input: Tensor, min: float) -> Tensor:
    """clamp(x, min=lo)."""
    return clamp(input, min, None)


def clamp_max(input: Tensor, max: float) -> Tensor:
    """clamp(x, max=hi)."""
    return clamp(input, None, max)


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """torch.einsum(equation, *operands) (or a list of operands); backward for operand i:
    the einsum of δ with the other operands, A_i's and the output's subscripts swapped.
    torch's sublist form (operand, [0, 1], ...) is NotImplementedError."""
    if not isinstance(equation, str):
        raise NotImplementedError("einsum: the sublist form; use an equation string")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands or not all(isinstance(t, Tensor) for t in operands):
        raise TypeError("einsum: expected tensor operands")
    return EinsumFunction.apply(equation, *operands)


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size,
              spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align: (K, C, PH, PW), each box's bins the mean of bilinear
    samples of ``input`` (N, C, H, W). ``boxes`` (K, 5) (image index, x1, y1, x2, y2) or a
    list of (L, 4) per image. Backward: each sample's δ scattered to its four source
    pixels with the forward's weights; the boxes get no gradient."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"roi_align: expected input (N, C, H, W), got "
                         f"{getattr(input, 'shape', type(input).__name__)}")
    if isinstance(boxes, (list, tuple)):
        boxes = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                           for i, b in enumerate(boxes)], dim=0)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"roi_align: expected boxes (K, 5) or a list of (L, 4), got "
                         f"{tuple(boxes.shape)}")
    ph, pw = _pair(output_size)
    return RoIAlignFunction.apply(input, boxes, float(spatial_scale), int(ph), int(pw),
                                  int(sampling_ratio), bool(aligned))


def grid_sample(input: Tensor, grid: Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool | None = None) -> Tensor:
    """F.grid_sample on 4-D input, bilinear, "zeros" or "border" padding: X read at the
    grid's points. Backward: X gets each sample's δ scattered to its four corners with the
    forward's weights, the grid δ · ∂v/∂x · dx/dg. Other modes, "reflection" and 5-D
    input are NotImplementedError."""
    if mode != "bilinear" or padding_mode not in ("zeros", "border"):
        raise NotImplementedError(f"grid_sample: mode={mode!r}, padding_mode={padding_mode!r}"
                                  " (bptorch: bilinear, zeros or border)")
    if not isinstance(input, Tensor) or not isinstance(grid, Tensor) or input.dim() != 4:
        raise NotImplementedError("grid_sample: bptorch takes 4-D input (N, C, H, W)")
    if grid.dim() != 4 or grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid_sample: expected grid (N={input.shape[0]}, H_out, W_out, 2), "
                         f"got {tuple(grid.shape)}")
    if input.dtype != grid.dtype:
        raise ValueError(f"grid_sample: input ({input.dtype}) and grid ({grid.dtype}) must "
                         "have the same dtype")
    return GridSampleFunction.apply(input, grid, bool(align_corners),
                                    padding_mode == "border")


# ---- unfold (im2col) and fold (col2im) (bptorch/functions/fold.py), under torch's names
from .functions.fold import FoldFunction, UnfoldFunction  # noqa: E402


def unfold(input: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """a_col = unfold(a): the sliding blocks of input (N, C, H, W) or (C, H, W) as columns,
    (N, C·k_h·k_w, L) or (C·k_h·k_w, L). Backward: fold(δ), each δ added back onto the pixel
    it was read from."""
    kernel_size, dilation, padding, stride = (_pair(v) for v in (kernel_size, dilation,
                                                                 padding, stride))
    C.check_unfold(input, kernel_size, dilation, padding, stride)
    return _unbatched(lambda x: UnfoldFunction.apply(x, kernel_size, dilation, padding,
                                                     stride), input)


def fold(input: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """a = fold(a_col): columns (N, C·k_h·k_w, L) or (C·k_h·k_w, L) summed back onto maps
    (N, C, *output_size) or (C, *output_size), overlapping blocks adding up. Backward:
    unfold(δ), each entry reads its pixel's δ."""
    output_size, kernel_size, dilation, padding, stride = (
        _pair(v) for v in (output_size, kernel_size, dilation, padding, stride))
    C.check_fold(input, output_size, kernel_size, dilation, padding, stride)
    if input.dim() == 2:
        return FoldFunction.apply(input.unsqueeze(0), output_size, kernel_size, dilation,
                                  padding, stride).squeeze(0)
    return FoldFunction.apply(input, output_size, kernel_size, dilation, padding, stride)


# ---- the larger and the smaller of two tensors (bptorch/functions/arithmetic.py), under
# torch's names and signatures
from .functions.arithmetic import ExtremumFunction  # noqa: E402


def _extremum(name: str, input: Tensor, other: Tensor, larger: bool) -> Tensor:
    if not isinstance(input, Tensor) or not isinstance(other, Tensor):
        raise TypeError(f"{name}: expected two tensors, got {type(input).__name__} and "
                        f"{type(other).__name__}")
    if not (input.is_floating_point() and other.is_floating_point()):
        raise NotImplementedError(f"{name}: bptorch takes floating tensors (no gradient "
                                  "otherwise)")
    torch.broadcast_shapes(input.shape, other.shape)  # torch's error for shapes that differ
    return ExtremumFunction.apply(input, other, larger)


def maximum(input: Tensor, other: Tensor) -> Tensor:
    """c = max(x, y) elementwise, broadcast; backward δ to the larger, δ/2 to each at a tie,
    summed back to each shape."""
    return _extremum("maximum", input, other, True)


def minimum(input: Tensor, other: Tensor) -> Tensor:
    """c = min(x, y) elementwise, broadcast; backward δ to the smaller, δ/2 to each at a
    tie, summed back to each shape."""
    return _extremum("minimum", input, other, False)


# ---- vector norms and F.normalize (bptorch/functions/vector_norm.py), torch.put and its
# in-place form (bptorch/functions/indexing.py), under torch's names and signatures
from .functions.indexing import PutFunction, positions  # noqa: E402
from .functions.vector_norm import NormalizeFunction, VectorNormFunction  # noqa: E402
from .functions.vector_norm import finite_order  # noqa: E402


def _norm_order(fn: str, p) -> float:
    if not finite_order(p):
        raise NotImplementedError(f"{fn}: bptorch takes a finite order p >= 1, got {p!r}")
    return float(p)


def _norm_dims(dim) -> tuple[int, ...] | None:
    if dim is None:
        return None
    return (int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim)


def vector_norm(input: Tensor, ord: float = 2, dim: int | tuple[int, ...] | None = None,
                keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Tensor:
    """torch.linalg.vector_norm: n = (Σ|x_i|^p)^(1/p) over ``dim`` (all if None), for a
    finite p ≥ 1; backward δ · sgn x |x|^(p−1) / n^(p−1) (0 where n = 0). Another order
    or ``dtype`` is NotImplementedError."""
    p = _norm_order("vector_norm", ord)
    if dtype is not None:
        raise NotImplementedError("vector_norm: dtype")
    dims = _norm_dims(dim)
    C.check_vector_norm("vector_norm", input, dims)
    if dims is not None and not dims:  # torch: an empty dim list reduces over all dims
        dims = None
    return VectorNormFunction.apply(input, p, dims, bool(keepdim))


def norm(input: Tensor, p: float | str | None = "fro", dim=None, keepdim: bool = False,
         out: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """torch.norm / Tensor.norm for vector norms: "fro" (and None) is the 2-norm of the
    entries over ``dim``; a finite p ≥ 1 as :func:`vector_norm`. "nuc", matrix norms and
    ``out`` are NotImplementedError."""
    if out is not None:
        raise NotImplementedError("norm: out=")
    if p in ("fro", None):
        p = 2
    return vector_norm(input, p, dim, keepdim, dtype=dtype)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
              out: Tensor | None = None) -> Tensor:
    """F.normalize: y = x / max(‖x‖_p, eps) along ``dim``; backward δ / d − [n ≥ eps]
    (Σ δ ⊙ x) / d² · ∂n/∂x, d = max(n, eps). Another order or ``out`` is
    NotImplementedError."""
    if out is not None:
        raise NotImplementedError("normalize: out=")
    p = _norm_order("normalize", p)
    C.check_vector_norm("normalize", input, (dim,))
    return NormalizeFunction.apply(input, p, int(dim), float(eps))


def put(input: Tensor, index: Tensor, source: Tensor, accumulate: bool = False) -> Tensor:
    """torch.put: input with source written (``accumulate``: added) at the flat positions
    ``index``; backward ∂C/∂input = δ with those positions zeroed (accumulate: δ),
    ∂C/∂source = δ.take(index)."""
    C.check_put(input, index, source)
    return PutFunction.apply(input, index, source, bool(accumulate), False)


def put_(input: Tensor, index: Tensor, source: Tensor, accumulate: bool = False) -> Tensor:
    """Tensor.put_: :func:`put` into ``input`` itself (returned); the same backward."""
    C.check_put(input, index, source)
    return PutFunction.apply(input, index, source, bool(accumulate), True)
