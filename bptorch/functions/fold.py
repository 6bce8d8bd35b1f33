"""Unfold (im2col) and Fold (col2im): a map's sliding k_h × k_w blocks laid out as
columns, and the columns summed back onto a map, as ``F.unfold`` / ``F.fold``.

Unfold reads, for every tap t < K = k_h k_w of the kernel and every block position
p < P, the zero-padded input pixel q = p·s + t·dil − pad (per axis):

    a_col[n, c·K + t, p] = a_pad[n, c, p·s + t·dil]           (N, C·K, P)

It is the gather a convolution starts with (``conv.py``: z_col = W_col @ a_col + b), here
a layer of its own (raft's convex upsampling reads each pixel's 3 × 3 neighbourhood so).
No weights: only BP2's factor. Each entry of a_col is a copy of one pixel, so
∂a_col/∂a is a 0/1 matrix G (a row per entry, a column per pixel), and

    ∂C/∂a = Gᵀ δ = fold(δ)      each entry's δ added back onto the pixel it was read
                                from; a pixel read by several blocks sums their δs; the
                                padding's share is dropped.

Fold is that adjoint map as a layer, a = Gᵀ a_col (blocks that overlap add up), so its
backward is G δ = unfold(δ), the gather. The two maps are linear and each one's backward
is the other's forward: :class:`UnfoldFunction`'s backward applies :class:`FoldFunction`
and the other way round, so the double backward is written out as well.

The reference pair is the gather and the scatter-add by one index map (``conv_unfold``,
``conv_fold`` of ``conv.py``, any number of spatial dims); the Functions run torch's own
forward ops im2col and col2im (``F.unfold``, ``F.fold``: the same maps, exact, fast), and
the tests hold them equal to the reference. Neither op is on torch's autocast lists: they
run in their input's dtype.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as torch_F

from .base import BPFunction, Pair
from .conv import conv_fold, conv_out_size, conv_unfold


# ---------------------------------------------------------------- the reference pair
def unfold_fwd(a: Tensor, kernel_size: Pair, dilation: Pair, padding: Pair,
               stride: Pair) -> Tensor:
    """a_col[n, c·K + t, p] = a_pad[n, c, p·s + t·dil], (N, C·K, P): the gather."""
    return conv_unfold(a, kernel_size, stride, padding, dilation)


def unfold_bwd(delta: Tensor, size: Pair, kernel_size: Pair, dilation: Pair, padding: Pair,
               stride: Pair) -> Tensor:
    """∂C/∂a of :func:`unfold_fwd` on maps of ``size``, given δ = ∂C/∂a_col (N, C·K, P)."""
    blocks = conv_out_size(size, kernel_size, stride, padding, dilation)
    # a_col = G a  →  BP2's factor: ∂C/∂a = Gᵀ δ, each δ added onto its source pixel
    return conv_fold(delta, size, kernel_size, stride, padding, dilation, blocks)


def fold_fwd(a_col: Tensor, output_size: Pair, kernel_size: Pair, dilation: Pair,
             padding: Pair, stride: Pair) -> Tensor:
    """a = Gᵀ a_col, (N, C, *output_size): every block's entries summed onto its pixels."""
    blocks = conv_out_size(output_size, kernel_size, stride, padding, dilation)
    return conv_fold(a_col, output_size, kernel_size, stride, padding, dilation, blocks)


def fold_bwd(delta: Tensor, kernel_size: Pair, dilation: Pair, padding: Pair,
             stride: Pair) -> Tensor:
    """∂C/∂a_col of :func:`fold_fwd`, given δ = ∂C/∂a (N, C, H, W)."""
    # a = Gᵀ a_col  →  BP2's factor: ∂C/∂a_col = G δ, each entry reads its pixel's δ
    return conv_unfold(delta, kernel_size, stride, padding, dilation)


# ---------------------------------------------------------------- the Functions
class UnfoldFunction(BPFunction):
    """a_col = unfold(a): (N, C, H, W) → (N, C·k_h·k_w, P), torch's im2col.

    Backward: ∂C/∂a = fold(δ) (:class:`FoldFunction`, the adjoint; reference
    :func:`unfold_bwd`). Saves nothing but the input's size: the map is linear in a.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: Pair, dilation: Pair, padding: Pair,
                stride: Pair) -> Tensor:
        return torch_F.unfold(input, kernel_size, dilation, padding, stride)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, *ctx.args = inputs
        ctx.size = tuple(input.shape[2:])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = None
        if ctx.needs_input_grad[0]:
            # a_col = G a  →  BP2's factor: ∂C/∂a = Gᵀ δ = fold(δ)
            grad_input = FoldFunction.apply(grad_output, ctx.size, *ctx.args)
        return grad_input, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, da: Tensor, *_rest) -> Tensor:
        return torch_F.unfold(da, *ctx.args)  # linear in a: the same map


class FoldFunction(BPFunction):
    """a = fold(a_col): (N, C·k_h·k_w, P) → (N, C, *output_size), torch's col2im (blocks
    that overlap add up).

    Backward: ∂C/∂a_col = unfold(δ) (:class:`UnfoldFunction`, the adjoint; reference
    :func:`fold_bwd`). Saves nothing: the map is linear in a_col.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, output_size: Pair, kernel_size: Pair, dilation: Pair,
                padding: Pair, stride: Pair) -> Tensor:
        return torch_F.fold(input, output_size, kernel_size, dilation, padding, stride)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        _, ctx.output_size, *ctx.args = inputs

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = None
        if ctx.needs_input_grad[0]:
            # a = Gᵀ a_col  →  BP2's factor: ∂C/∂a_col = G δ = unfold(δ)
            grad_input = UnfoldFunction.apply(grad_output, *ctx.args)
        return grad_input, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, da_col: Tensor, *_rest) -> Tensor:
        return torch_F.fold(da_col, ctx.output_size, *ctx.args)  # linear: the same map


unfold = UnfoldFunction.apply
fold = FoldFunction.apply

__all__ = ["FoldFunction", "UnfoldFunction", "fold", "fold_bwd", "fold_fwd", "unfold",
           "unfold_bwd", "unfold_fwd"]
