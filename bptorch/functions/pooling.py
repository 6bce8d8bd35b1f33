"""Average pooling, fixed windows (AvgPool2d) and adaptive ones (AdaptiveAvgPool2d).

Each output is the mean of its window, a_j = (1/n_j) Σ_{i ∈ window j} z_i: a linear
layer with fixed weights 1/n_j and no bias. Its backward is the first factor of BP2,
Wᵀ δ: every input pixel collects δ_j/n_j from each window j it lies in,

    ∂C/∂z_i = Σ_{j : i ∈ window j} δ_j / n_j.

There are no weights, so no BP3/BP4. Only the input's shape is saved.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import adaptive_avg_pool2d, avg_pool2d, fold

from .._checks import _shape, check_floating
from .base import BPFunction

Pair = tuple[int, int]


def check_pool_input(input: Tensor) -> None:
    """A floating (N, C, H, W) or unbatched (C, H, W) tensor."""
    check_floating("input", input)
    if input.dim() not in (3, 4):
        raise ValueError(
            f"expected input of shape (N, C, H, W) or (C, H, W), got shape {_shape(input)}"
        )


def check_avg_pool2d(input: Tensor, kernel_size: Pair, stride: Pair, padding: Pair,
                     divisor_override: int | None) -> None:
    check_pool_input(input)
    if min(kernel_size) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(
            f"kernel_size and stride must be >= 1 and padding >= 0, got kernel_size="
            f"{kernel_size}, stride={stride}, padding={padding}"
        )
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(
            f"padding must be at most half the kernel size, got padding={padding} for "
            f"kernel_size={kernel_size}"
        )
    if divisor_override is not None and divisor_override == 0:
        raise ValueError("divisor_override must be non-zero")
    h, w = input.shape[-2] + 2 * padding[0], input.shape[-1] + 2 * padding[1]
    if kernel_size[0] > h or kernel_size[1] > w:
        raise ValueError(
            f"pooling window {kernel_size} is larger than the padded input ({h}, {w}) "
            f"(input shape {_shape(input)}, padding {padding})"
        )


# ---------------------------------------------------------------- fixed windows
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
    grad = fold(cols, (hp, wp), (kh, kw), stride=(sh, sw))  # Σ over windows: Wᵀ δ (BP2)
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
def adaptive_output_size(input: Tensor, output_size) -> Pair:
    """torch's output_size (int, pair, None entries = the input's size) as a pair."""
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
    size = tuple(int(n) if o is None else int(o)
                 for o, n in zip(output_size, input.shape[-2:]))
    if min(size) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size!r}")
    return size  # type: ignore[return-value]


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
    return p_h.t() @ delta @ p_w  # (…, H, W)


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
    "AdaptiveAvgPool2dFunction", "AvgPool2dFunction", "adaptive_avg_pool2d_bwd",
    "adaptive_output_size", "adaptive_pool_matrix", "avg_pool2d_bwd", "check_avg_pool2d",
    "check_pool_input",
]
