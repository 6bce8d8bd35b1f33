"""Pooling: max over a window (MaxPool2d), mean over a window (AvgPool2d), mean over the
windows that give a fixed output size (AdaptiveAvgPool2d).

A pooling layer has no weights, so no BP3/BP4: its backward is the first factor of BP2
alone, ∂C/∂z = Jᵀ δ, J the Jacobian of the window map.

* Max: a_j = max_{i ∈ window j} z_i. ∂a_j/∂z_i is 1 for the input that won window j and 0
  for the others, so ∂C/∂z_i = Σ_{j : i won j} δ_j: δ is routed to the winners, summed
  where overlapping windows share a winner. On ties torch's kernel picks one winner;
  that one gets δ. Padding never wins (torch pads with −∞). Saves the winners' indices.
* Mean: a_j = (1/n_j) Σ_{i ∈ window j} z_i, a linear layer with fixed weights 1/n_j and no
  bias. Every input pixel collects δ_j/n_j from each window j it lies in,

      ∂C/∂z_i = Σ_{j : i ∈ window j} δ_j / n_j.

  Only the input's shape is saved. Along each axis the adaptive windows form a matrix P
  (rows: windows, entries 1/n_j): a = P_h z P_wᵀ, so ∂C/∂z = P_hᵀ δ P_w.

Every pool runs in its input's dtype under ``torch.autocast``, as torch's (none is on
torch's autocast lists).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import adaptive_avg_pool2d, avg_pool2d, fold, max_pool2d

from .base import LOW_PRECISION, BPFunction, Pair


# ---------------------------------------------------------------- max: the reference pair
def max_pool2d_fwd(z: Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair,
                   ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """(a, indices): a_j = max over window j, and the flat per-map index (h·w) of its winner."""
    return max_pool2d(z, kernel_size, stride, padding, dilation, ceil_mode,
                      return_indices=True)


def max_pool2d_bwd(delta: Tensor, indices: Tensor, input_shape: torch.Size) -> Tensor:
    """∂C/∂z_i = Σ_{j : i won j} δ_j: each window's δ routed to the pixel that won it.

    scatter_add, not scatter: a pixel that wins several overlapping windows receives the
    sum of their δs. Differentiable in δ (its derivative is a gather). Half-precision δs
    are summed in float32 and rounded once, as torch's kernel does.
    """
    n, c, h, w = input_shape
    acc = delta.float() if delta.dtype in LOW_PRECISION else delta
    # a_j = z[indices_j]  →  BP2's factor: dz[indices_j] += δ_j
    grad = acc.new_zeros(n, c, h * w).scatter_add(2, indices.flatten(2), acc.flatten(2))
    return grad.view(n, c, h, w).to(delta.dtype)


class MaxPool2dFunction(BPFunction):
    """a_j = max_{i ∈ window j} z_i; backward ∂C/∂z_i = Σ_{j : i won j} δ_j
    (:func:`max_pool2d_bwd`).

    Batch-first: (N, C, H, W) -> (N, C, H_out, W_out). Saves the flat per-map argmax
    indices (int64, the size of the output), not the input. Returns (output, indices).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: Pair, stride: Pair, padding: Pair = (0, 0),
                dilation: Pair = (1, 1), ceil_mode: bool = False) -> tuple[Tensor, Tensor]:
        return max_pool2d_fwd(input, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        _a, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.input_shape = inputs[0].shape
        ctx.save_for_backward(indices)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None):
        (indices,) = ctx.saved_tensors
        return (max_pool2d_bwd(grad_output, indices, ctx.input_shape),
                None, None, None, None, None)


# ---------------------------------------------------------------- mean: the reference pairs
def _window_sizes(n: int, n_out: int, k: int, s: int, p: int, include_pad: bool,
                  device: torch.device) -> Tensor:
    """n_j along one axis for each of the n_out windows: the window clipped to the padded
    input (count_include_pad) or to the input itself (torch's convention)."""
    start = torch.arange(n_out, device=device) * s - p
    end = torch.clamp(start + k, max=n + p)  # a ceil_mode window may run past the padding
    if include_pad:
        return end - start
    return torch.clamp(end, max=n) - torch.clamp(start, min=0)


def avg_pool2d_bwd(delta: Tensor, input_shape: torch.Size, kernel_size: Pair, stride: Pair,
                   padding: Pair, count_include_pad: bool,
                   divisor_override: int | None) -> Tensor:
    """∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j: each window's δ_j/n_j copied to its k_h·k_w pixels
    (an expand) and summed back onto the padded input (fold, col2im), then the padding
    cropped off."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    h, w = input_shape[-2:]
    oh, ow = delta.shape[-2:]
    if divisor_override is not None:
        n_j = divisor_override
    else:
        n_h = _window_sizes(h, oh, kh, sh, ph, count_include_pad, delta.device)
        n_w = _window_sizes(w, ow, kw, sw, pw, count_include_pad, delta.device)
        n_j = (n_h[:, None] * n_w[None, :]).to(delta.dtype)  # (H_out, W_out)
    share = (delta / n_j).reshape(-1, 1, oh * ow)  # δ_j / n_j, one row per map
    cols = share.expand(-1, kh * kw, -1)  # the same share for each pixel of window j
    # a canvas holding the padding and, in ceil_mode, any window that runs past it
    hp, wp = max(h + 2 * ph, (oh - 1) * sh + kh), max(w + 2 * pw, (ow - 1) * sw + kw)
    # a_j = (1/n_j) Σ_{i ∈ j} z_i  →  BP2's factor: dz_i = Σ_{j ∋ i} δ_j / n_j (fold sums
    # the windows' shares back onto the pixels: Wᵀ δ)
    grad = fold(cols, (hp, wp), (kh, kw), stride=(sh, sw))
    return grad[:, 0, ph:ph + h, pw:pw + w].reshape(input_shape)


class AvgPool2dFunction(BPFunction):
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over k_h × k_w windows.

    Backward, given δ = ∂C/∂a: ∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j, BP2's Wᵀδ for the fixed
    weights 1/n_j. n_j is k_h·k_w, or the window clipped to the input when
    ``count_include_pad`` is False, or ``divisor_override``.

    Batch-first: (N, C, H, W) or (C, H, W) -> (…, H_out, W_out). Saves nothing but the
    input's shape.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: Pair, stride: Pair, padding: Pair = (0, 0),
                ceil_mode: bool = False, count_include_pad: bool = True,
                divisor_override: int | None = None) -> Tensor:
        return avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                          divisor_override)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, ctx.kernel_size, ctx.stride, ctx.padding, _ceil, ctx.count_include_pad, \
            ctx.divisor_override = inputs
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = avg_pool2d_bwd(grad_output, ctx.input_shape, ctx.kernel_size,
                                    ctx.stride, ctx.padding, ctx.count_include_pad,
                                    ctx.divisor_override)
        return grad_input, None, None, None, None, None, None


# ---------------------------------------------------------------- adaptive windows
def adaptive_pool_matrix(n: int, n_out: int, dtype: torch.dtype,
                         device: torch.device) -> Tensor:
    """P (n_out, n) with P[j, i] = 1/n_j for i in window j: the pooling along one axis.

    Window j is [⌊j·n/n_out⌋, ⌈(j+1)·n/n_out⌉), torch's adaptive windows (they may
    overlap, and vary in size by one).
    """
    j = torch.arange(n_out, device=device)
    start = (j * n) // n_out
    end = ((j + 1) * n + n_out - 1) // n_out
    i = torch.arange(n, device=device)
    inside = (i[None, :] >= start[:, None]) & (i[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def adaptive_avg_pool2d_bwd(delta: Tensor, input_shape: torch.Size) -> Tensor:
    """∂C/∂z = P_hᵀ δ P_w, the transpose of the forward a = P_h z P_wᵀ (BP2's Wᵀ δ)."""
    h, w = input_shape[-2:]
    oh, ow = delta.shape[-2:]
    if oh == ow == 1:  # global average pooling: every pixel gets δ/(H·W)
        return (delta / (h * w)).expand(input_shape)
    p_h = adaptive_pool_matrix(h, oh, delta.dtype, delta.device)  # (H_out, H)
    p_w = adaptive_pool_matrix(w, ow, delta.dtype, delta.device)  # (W_out, W)
    return p_h.t() @ delta @ p_w  # a = P_h z P_wᵀ  →  BP2's factor: dz = P_hᵀ δ P_w, (…, H, W)


class AdaptiveAvgPool2dFunction(BPFunction):
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over windows chosen to give a fixed output size.

    Along each axis the pooling is a matrix P (rows: windows, entries 1/n_j), so the
    forward is a = P_h z P_wᵀ and the backward BP2's transpose: ∂C/∂z = P_hᵀ δ P_w, exact
    for any (overlapping, unequal) windows. Global pooling (output 1 × 1) spreads δ/(H·W).

    Batch-first: (N, C, H, W) or (C, H, W) -> (…, H_out, W_out). Saves the input's shape.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, output_size: Pair) -> Tensor:
        return adaptive_avg_pool2d(input, output_size)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.input_shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        return adaptive_avg_pool2d_bwd(grad_output, ctx.input_shape), None


__all__ = [
    "AdaptiveAvgPool2dFunction", "AvgPool2dFunction", "MaxPool2dFunction",
    "adaptive_avg_pool2d_bwd", "adaptive_pool_matrix", "avg_pool2d_bwd", "max_pool2d_bwd",
    "max_pool2d_fwd",
]
