"""The convolutional layer Functions: conv2d, max-pool, dropout and flatten.

A convolution is the linear layer applied to patches. Unfold the input a^{l-1}
(N, C, H, W) into its k_h·k_w patches, one column per output position p:
a_col (C·k_h·k_w, P) for each example. With the kernels as rows,
W_col = W.view(C_out, C·k_h·k_w), the forward and the seed's equations read

    seed, one example, feature maps      code, per example (batch-first)
    z^l_p = W_col a_col,p + b            z_col = W_col @ a_col + b[:, None]   (C_out, P)
    ∂C/∂b = Σ_p δ_p           (BP3)      grad_bias = delta.sum((0, 2, 3))
    ∂C/∂W = Σ_p δ_p a_col,pᵀ  (BP4)      grad_weight = Σ_N delta_col @ a_col.T
    W_colᵀ δ, folded back     (BP2)      grad_input = fold(W_col.T @ delta_col)

The weights are shared across positions, so BP3 and BP4 sum over positions as well
as over examples. The fold (col2im) adds each patch's share of W_colᵀ δ back onto the
pixels it came from; equivalently, the error passed down is the full correlation of δ
with the flipped kernels. ``unfold=True`` runs this reference path literally (with
``torch.nn.functional.unfold``/``fold`` and matmuls); the default fast path gives
the same numbers with one ``conv2d`` in forward and one ``aten.convolution_backward``
(input and weight gradients in one call) in backward. Both backwards are built from
differentiable ops, so double backward works; ``tests/test_conv.py`` checks the two
paths against each other and against torch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn.functional import conv2d, fold, max_pool2d, unfold

from .._checks import _shape, check_floating, check_same
from .layers import _autocast_backward, _autocast_dtype, _cast, _record_autocast

aten = torch.ops.aten
Pair = tuple[int, int]


# ---------------------------------------------------------------- input checks
def check_4d(name: str, input: Tensor) -> None:
    """``input`` must be a floating-point (N, C, H, W) tensor."""
    check_floating(name, input)
    if input.dim() != 4:
        raise ValueError(
            f"expected {name} of shape (N, C, H, W), got shape {_shape(input)} "
            f"({input.dim()} dims); add a batch dimension with {name}.unsqueeze(0), or "
            f"reshape flat MNIST rows with {name}.view(-1, 1, 28, 28)"
        )


def check_conv2d(
    input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair
) -> None:
    """Shapes, dtypes and devices for z = conv(a_prev, W) + b; reads no values."""
    check_4d("input", input)
    check_same("input", input, "weight", weight)
    c_out, c_in, kh, kw = weight.shape
    if input.shape[1] != c_in:
        raise ValueError(
            f"expected input with in_channels={c_in} channels, got {input.shape[1]} "
            f"(input shape {_shape(input)}, weight shape {_shape(weight)})"
        )
    if bias is not None and _shape(bias) != (c_out,):
        raise ValueError(f"expected bias of shape (out_channels={c_out},), got {_shape(bias)}")
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    h, w = input.shape[2] + 2 * padding[0], input.shape[3] + 2 * padding[1]
    if kh > h or kw > w:
        raise ValueError(
            f"kernel size ({kh}, {kw}) is larger than the padded input ({h}, {w}) "
            f"(input shape {_shape(input)}, padding {padding})"
        )


def check_pool2d(input: Tensor, kernel_size: Pair, stride: Pair) -> None:
    check_4d("input", input)
    if min(kernel_size) < 1 or min(stride) < 1:
        raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")
    if kernel_size[0] > input.shape[2] or kernel_size[1] > input.shape[3]:
        raise ValueError(
            f"pooling window {kernel_size} is larger than the input maps "
            f"{_shape(input)[2:]} (input shape {_shape(input)})"
        )


def check_dropout_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must lie in [0, 1), got {p}")
    return p


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


# ---------------------------------------------------------------- conv2d
def conv2d_unfold_fwd(a_prev: Tensor, weight: Tensor, bias: Tensor | None,
                      stride: Pair, padding: Pair) -> Tensor:
    """z_col = W_col @ a_col + b: the linear layer on the unfolded patches."""
    n, _, h, w = a_prev.shape
    c_out, _, kh, kw = weight.shape
    a_col = unfold(a_prev, (kh, kw), padding=padding, stride=stride)  # (N, C·kh·kw, P)
    z_col = weight.reshape(c_out, -1) @ a_col  # (N, C_out, P)
    if bias is not None:
        z_col = z_col + bias[:, None]
    oh, ow = _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])
    return z_col.reshape(n, c_out, oh, ow)


def conv2d_unfold_bwd(ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor,
                      stride: Pair, padding: Pair):
    """BP3, BP4 and the W_colᵀ δ factor of BP2, literally, on the unfolded patches.

    a_col is recomputed from a_prev rather than saved: it is k_h·k_w times larger.
    """
    n, _, h, w = a_prev.shape
    c_out, _, kh, kw = weight.shape
    delta_col = delta.reshape(n, c_out, -1)  # (N, C_out, P)
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        # W_colᵀ δ per patch, then fold (col2im) sums each patch back onto its pixels (BP2)
        g_col = weight.reshape(c_out, -1).t() @ delta_col  # (N, C·kh·kw, P)
        grad_input = fold(g_col, (h, w), (kh, kw), padding=padding, stride=stride)
    if ctx.needs_input_grad[1]:
        a_col = unfold(a_prev, (kh, kw), padding=padding, stride=stride)
        # BP4: ∂C/∂W = Σ_p δ_p a_col,pᵀ, summed over positions and examples
        grad_weight = (delta_col @ a_col.transpose(1, 2)).sum(0).reshape(weight.shape)
    if ctx.needs_input_grad[2]:
        grad_bias = delta_col.sum((0, 2))  # BP3: ∂C/∂b = Σ_p δ_p, over positions and examples
    return grad_input, grad_weight, grad_bias


def conv2d_bwd(ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor,
               stride: Pair, padding: Pair):
    """The same three gradients through ATen's convolution kernels.

    ``aten.convolution_backward`` computes the full correlation of δ with the flipped
    kernels (= fold(W_colᵀ δ), BP2's factor) and Σ_p δ_p a_col,pᵀ (BP4) in one call; it
    has its own derivative, so double backward works.
    """
    need_in, need_w, need_b = ctx.needs_input_grad[:3]
    grad_input = grad_weight = grad_bias = None
    if need_in or need_w:
        grad_input, grad_weight, _ = aten.convolution_backward(
            delta, a_prev, weight, None, stride, padding, (1, 1), False, (0, 0), 1,
            (need_in, need_w, False),
        )  # grad_input: (W_col)ᵀ δ folded (BP2); grad_weight: BP4
    if need_b:
        grad_bias = delta.sum((0, 2, 3))  # BP3: ∂C/∂b = Σ_p δ_p, over positions and examples
    return grad_input, grad_weight, grad_bias


class Conv2dFunction(Function):
    """z^l = W^l ⋆ a^{l-1} + b^l: the linear layer on every k_h × k_w patch.

    Backward, given grad_output = ∂C/∂z^l = δ^l (one value per map and position p):
    BP3 ∂C/∂b^l = Σ_p δ^l_p, BP4 ∂C/∂W^l = Σ_p δ^l_p (a_col,p)ᵀ, and (W_col)ᵀ δ^l folded
    back onto the input pixels (the first factor of BP2) passed down.

    Batch-first: input (N, C_in, H, W), weight (C_out, C_in, k_h, k_w), bias (C_out,),
    output (N, C_out, H_out, W_out); BP3 and BP4 also sum over the N examples.
    ``unfold=True`` takes the reference path (unfold + matmul + fold).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None,
                stride: Pair = (1, 1), padding: Pair = (0, 0), unfold: bool = False) -> Tensor:
        # under torch.autocast the convolution runs in the autocast dtype, as torch's does
        input, weight, bias = _cast(_autocast_dtype(input), input, weight, bias)
        if unfold:
            return conv2d_unfold_fwd(input, weight, bias, stride, padding)
        return conv2d(input, weight, bias, stride, padding)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias, stride, padding, unfold = inputs
        ctx.stride, ctx.padding, ctx.unfold = stride, padding, unfold
        _record_autocast(ctx, input, weight, bias)
        ctx.save_for_backward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        bwd = conv2d_unfold_bwd if ctx.unfold else conv2d_bwd

        def gradients(ctx, delta, a_prev, weight):
            return bwd(ctx, delta, a_prev, weight, ctx.stride, ctx.padding)

        grads = _autocast_backward(ctx, gradients, grad_output, a_prev, weight)
        return (*grads, None, None, None)


# ---------------------------------------------------------------- max-pool
class MaxPool2dFunction(Function):
    """a_j = max_{i ∈ window j} z_i.

    Backward: ∂a_j/∂z_i is 1 for the input that won window j and 0 for the others, so
    ∂C/∂z_i = Σ_{j : i won j} ∂C/∂a_j: δ is routed to the winners (a sum where windows
    overlap). On ties torch's kernel picks one winner; that one gets δ.

    Batch-first: (N, C, H, W) -> (N, C, H_out, W_out). Saves the flat per-map argmax
    indices (int64, the size of the output), not the input. Returns (output, indices).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: Pair, stride: Pair) -> tuple[Tensor, Tensor]:
        return max_pool2d(input, kernel_size, stride, return_indices=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        input, kernel_size, stride = inputs
        _a, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.input_shape, ctx.kernel_size, ctx.stride = input.shape, kernel_size, stride
        ctx.save_for_backward(indices)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None):
        (indices,) = ctx.saved_tensors
        delta = grad_output
        # Route each window's δ to the pixel that won it, summing where windows overlap:
        #   zeros(N, C, H·W).scatter_add(2, indices.flatten(2), delta.flatten(2))
        # ATen's kernel does exactly this, 2-3x faster, and has its own derivative
        # (double backward). It reads only the shape of its `self` argument, so a
        # stride-0 stand-in replaces the input, which is not saved.
        shape_only = delta.new_empty(1).expand(ctx.input_shape)
        grad_input = aten.max_pool2d_with_indices_backward(
            delta, shape_only, ctx.kernel_size, ctx.stride, (0, 0), (1, 1), False, indices
        )
        return grad_input, None, None


# ---------------------------------------------------------------- dropout
class DropoutFunction(Function):
    """a = z ⊙ m, with m_i = 1/(1 − p) for kept units and 0 for dropped ones.

    Backward: ∂C/∂z = ∂C/∂a ⊙ m, the same mask (a dropped unit passes no error down).
    The mask is an input, drawn by the caller with torch's RNG, so the Function is
    deterministic and ``torch.manual_seed`` controls the draw.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, mask: Tensor) -> Tensor:
        return input * mask

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, mask = inputs
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, mask)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        input, mask = ctx.saved_tensors
        grad_input = grad_mask = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output * mask  # δ ⊙ m
        if ctx.needs_input_grad[1]:
            grad_mask = grad_output * input
        return grad_input, grad_mask


def dropout_mask(input: Tensor, p: float) -> Tensor:
    """m = Bernoulli(1 − p) / (1 − p), drawn as torch's CPU dropout draws it."""
    return torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)


# ---------------------------------------------------------------- flatten
class FlattenFunction(Function):
    """a = z reshaped to (N, C·H·W) (dims start_dim..end_dim merged); δ reshaped back."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
        return input.flatten(start_dim, end_dim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.input_shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        return grad_output.reshape(ctx.input_shape), None, None


__all__ = [
    "Conv2dFunction", "DropoutFunction", "FlattenFunction", "MaxPool2dFunction",
    "check_4d", "check_conv2d", "check_dropout_p", "check_pool2d", "dropout_mask",
]
