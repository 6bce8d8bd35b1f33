"""Pooling over 1, 2 or 3 spatial dims: max over a window (MaxPool1d/2d/3d), max over the
windows that give a fixed output size (AdaptiveMaxPool1d/2d/3d), mean over a window
(AvgPool1d/2d/3d), mean over adaptive windows (AdaptiveAvgPool1d/2d/3d).

Each family is written once for any number d of spatial dims (input (N, C, *spatial));
the d-specific Functions (MaxPool1dFunction, ...) are that one Function under torch's
name, and the 2-d average pool keeps a fast variant (one 2-d fold), tested against the
reference.

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
* Separable in d dims. The windows are products of 1-d windows and n_j = Π_axes n_{j,axis}
  (torch's divisor, count_include_pad either way), so the mean is a product of one 1-d
  map per axis, a = z ×_1 P_1 ⋯ ×_d P_d, and its transpose is one 1-d transpose per axis:
  ∂C/∂z = δ ×_1 P_1ᵀ ⋯ ×_d P_dᵀ (:func:`separable`). For AvgPool, P_axis = W_axis / n
  with W the 0/1 window sum; Wᵀ along one axis is a 1-d fold.

Every pool runs in its input's dtype under ``torch.autocast`` (none is on torch's autocast
lists), except the 3-d pools on the CPU: torch runs max_pool3d, avg_pool3d,
adaptive_avg_pool3d and adaptive_max_pool3d in float32 there, and so do their twins.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as torch_F
from torch.nn.functional import adaptive_avg_pool2d, avg_pool2d, fold, max_pool2d

from .base import FLOAT32, LOW_PRECISION, BPFunction, Pair

# torch's forward ops, by the number of spatial dims (the forward is torch's; the backward ours)
_MAX_POOL = {1: torch_F.max_pool1d, 2: max_pool2d, 3: torch_F.max_pool3d}
_ADAPTIVE_MAX_POOL = {1: torch_F.adaptive_max_pool1d, 2: torch_F.adaptive_max_pool2d,
                      3: torch_F.adaptive_max_pool3d}
_AVG_POOL = {1: torch_F.avg_pool1d, 2: avg_pool2d, 3: torch_F.avg_pool3d}
_ADAPTIVE_AVG_POOL = {1: torch_F.adaptive_avg_pool1d, 2: adaptive_avg_pool2d,
                      3: torch_F.adaptive_avg_pool3d}
# torch's CPU autocast runs its 3-d pools in float32 (its fp32 op list); CUDA's has no pool
_POOL3D_AUTOCAST = {"cpu": FLOAT32}


# ---------------------------------------------------------------- max: the reference pair
def max_pool_fwd(z: Tensor, kernel_size: tuple[int, ...], stride: tuple[int, ...],
                 padding: tuple[int, ...], dilation: tuple[int, ...],
                 ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """(a, indices): a_j = max over window j, and the flat per-map index (into the d spatial
    dims, row-major) of its winner; d = len(kernel_size). Ties: torch's kernel's winner."""
    return _MAX_POOL[len(kernel_size)](z, kernel_size, stride, padding, dilation, ceil_mode,
                                       return_indices=True)


max_pool2d_fwd = max_pool_fwd  # the 2-d name, kept


def max_pool_bwd(delta: Tensor, indices: Tensor, input_shape: torch.Size) -> Tensor:
    """∂C/∂z_i = Σ_{j : i won j} δ_j: each window's δ routed to the pixel that won it.

    Any number of spatial dims: each map is flattened, so the winners' flat indices address
    it directly. scatter_add, not scatter: a pixel that wins several overlapping windows
    receives the sum of their δs. Differentiable in δ (its derivative is a gather).
    Half-precision δs are summed in float32 and rounded once, as torch's kernel does.
    """
    n, c = input_shape[:2]
    acc = delta.float() if delta.dtype in LOW_PRECISION else delta
    # a_j = z[indices_j]  →  BP2's factor: dz[indices_j] += δ_j
    grad = acc.new_zeros(n, c, math.prod(input_shape[2:])).scatter_add(
        2, indices.flatten(2), acc.flatten(2))
    return grad.view(input_shape).to(delta.dtype)


max_pool2d_bwd = max_pool_bwd  # the 2-d name, kept


class MaxPoolFunction(BPFunction):
    """a_j = max_{i ∈ window j} z_i; backward ∂C/∂z_i = Σ_{j : i won j} δ_j
    (:func:`max_pool_bwd`), for d = len(kernel_size) spatial dims.

    Batch-first: (N, C, *spatial) -> (N, C, *spatial_out). Saves the flat per-map argmax
    indices (int64, the size of the output), not the input. Returns (output, indices).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: tuple[int, ...], stride: tuple[int, ...],
                padding: tuple[int, ...] = (0, 0), dilation: tuple[int, ...] = (1, 1),
                ceil_mode: bool = False, return_indices: bool = False
                ) -> tuple[Tensor, Tensor]:
        # return_indices: whether the caller keeps the indices; only the autocast policy of
        # MaxPool3dFunction reads it (the indices are computed either way)
        return max_pool_fwd(input, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        _a, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.input_shape = inputs[0].shape
        ctx.save_for_backward(indices)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None):
        (indices,) = ctx.saved_tensors
        return (max_pool_bwd(grad_output, indices, ctx.input_shape),
                None, None, None, None, None, None)


class MaxPool1dFunction(MaxPoolFunction):
    """:class:`MaxPoolFunction` over (N, C, L): torch's max_pool1d forward, δ to the winners."""


class MaxPool2dFunction(MaxPoolFunction):
    """a_j = max_{i ∈ window j} z_i; backward ∂C/∂z_i = Σ_{j : i won j} δ_j
    (:func:`max_pool_bwd`).

    Batch-first: (N, C, H, W) -> (N, C, H_out, W_out). Saves the flat per-map argmax
    indices (int64, the size of the output), not the input. Returns (output, indices).
    """


class MaxPool3dFunction(MaxPoolFunction):
    """:class:`MaxPoolFunction` over (N, C, D, H, W); in float32 under CPU autocast, as torch,
    unless the caller keeps the indices: torch's CPU autocast lists max_pool3d (float32)
    but not max_pool3d_with_indices, which ``return_indices=True`` runs."""

    @classmethod
    def autocast_policy(cls, device_type: str, args: tuple) -> str | None:
        return_indices = len(args) > 6 and args[6]
        return None if return_indices else _POOL3D_AUTOCAST.get(device_type)


class AdaptiveMaxPoolFunction(BPFunction):
    """a_j = max_{i ∈ window j} z_i over torch's adaptive windows (those of
    :func:`adaptive_pool_matrix` along each axis); the backward is max pooling's,
    ∂C/∂z_i = Σ_{j : i won j} δ_j (:func:`max_pool_bwd`): only the winners matter, not
    how the windows were chosen. d = len(output_size) spatial dims.

    Batch-first: (N, C, *spatial) -> (N, C, *output_size). Saves the flat argmax indices.
    Returns (output, indices).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, output_size: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        return _ADAPTIVE_MAX_POOL[len(output_size)](input, output_size, return_indices=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        _a, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.input_shape = inputs[0].shape
        ctx.save_for_backward(indices)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None):
        (indices,) = ctx.saved_tensors
        return max_pool_bwd(grad_output, indices, ctx.input_shape), None


class AdaptiveMaxPool1dFunction(AdaptiveMaxPoolFunction):
    """:class:`AdaptiveMaxPoolFunction` over (N, C, L)."""


class AdaptiveMaxPool2dFunction(AdaptiveMaxPoolFunction):
    """:class:`AdaptiveMaxPoolFunction` over (N, C, H, W)."""


class AdaptiveMaxPool3dFunction(AdaptiveMaxPoolFunction):
    """:class:`AdaptiveMaxPoolFunction` over (N, C, D, H, W); float32 under CPU autocast."""

    autocast = _POOL3D_AUTOCAST


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


def _window_sum_t(x: Tensor, dim: int, size: int, k: int, s: int) -> Tensor:
    """Wᵀ x along ``dim``, W the 1-d window sum (W[j, i] = 1 for j·s ≤ i < j·s + k) onto a
    canvas of ``size``: each window's value copied to its k positions (an expand), summed
    where windows overlap (fold with a (k, 1) kernel; the axes after ``dim`` ride along as
    the fold's width, those before it as its batch)."""
    shape = x.shape
    b, o, m = math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])
    cols = x.reshape(b, 1, o * m).expand(b, k, o * m)  # the same value for each of k taps
    y = fold(cols, (size, m), (k, 1), stride=(s, 1))  # (b, 1, size, m)
    return y.reshape(*shape[:dim], size, *shape[dim + 1:])


def avg_pool_bwd(delta: Tensor, input_shape: torch.Size, kernel_size: tuple[int, ...],
                 stride: tuple[int, ...], padding: tuple[int, ...], count_include_pad: bool,
                 divisor_override: int | None) -> Tensor:
    """∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j for d = len(kernel_size) spatial dims, the reference.

    The window sum is separable, W = W_1 ⊗ ⋯ ⊗ W_d, and n_j = Π_axes n_{j,axis}, so
    Wᵀ (δ / n) is one 1-d transpose per axis (:func:`_window_sum_t`) on a canvas holding
    the padding, then the padding cropped off.
    """
    d = len(kernel_size)
    spatial, out = input_shape[-d:], delta.shape[-d:]
    if divisor_override is not None:
        n_j: Tensor | int = divisor_override
    else:
        n_j = delta.new_ones(())
        for n, o, k, s, p in zip(spatial, out, kernel_size, stride, padding):
            n_axis = _window_sizes(n, o, k, s, p, count_include_pad, delta.device)
            n_j = n_j[..., None] * n_axis.to(delta.dtype)  # the outer product: (*spatial_out)
    grad = delta / n_j  # δ_j / n_j, window j's share for each of its pixels
    crop = []
    for axis, (n, o, k, s, p) in enumerate(zip(spatial, out, kernel_size, stride, padding)):
        # a canvas holding the padding and, in ceil_mode, any window that runs past it
        size = max(n + 2 * p, (o - 1) * s + k)
        # a_j = (1/n_j) Σ_{i ∈ j} z_i  →  BP2's factor along this axis: dz = W_axisᵀ (δ / n)
        grad = _window_sum_t(grad, grad.dim() - d + axis, size, k, s)
        crop.append(slice(p, p + n))
    return grad[(..., *crop)].reshape(input_shape)


def avg_pool2d_bwd(delta: Tensor, input_shape: torch.Size, kernel_size: Pair, stride: Pair,
                   padding: Pair, count_include_pad: bool,
                   divisor_override: int | None) -> Tensor:
    """∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j in 2-d, the fast variant of :func:`avg_pool_bwd`:
    each window's δ_j/n_j copied to its k_h·k_w pixels (an expand) and summed back onto
    the padded input in one 2-d fold (col2im), then the padding cropped off."""
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


class AvgPoolFunction(BPFunction):
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over windows of ``kernel_size`` (d spatial dims).

    Backward, given δ = ∂C/∂a: ∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j, BP2's Wᵀδ for the fixed
    weights 1/n_j (:func:`avg_pool_bwd`). n_j is Π k, or the window clipped to the input
    when ``count_include_pad`` is False, or ``divisor_override``.

    Batch-first: (N, C, *spatial) or (C, *spatial) -> (…, *spatial_out). Saves nothing but
    the input's shape.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: tuple[int, ...], stride: tuple[int, ...],
                padding: tuple[int, ...] = (0, 0), ceil_mode: bool = False,
                count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
        pool = _AVG_POOL[len(kernel_size)]
        if divisor_override is None:  # torch's avg_pool1d takes no divisor_override
            return pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
        return pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, ctx.kernel_size, ctx.stride, ctx.padding, _ceil, ctx.count_include_pad, \
            ctx.divisor_override = inputs
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = avg_pool_bwd(grad_output, ctx.input_shape, ctx.kernel_size, ctx.stride,
                                  ctx.padding, ctx.count_include_pad, ctx.divisor_override)
        return grad_input, None, None, None, None, None, None


class AvgPool1dFunction(AvgPoolFunction):
    """:class:`AvgPoolFunction` over (N, C, L) or (C, L)."""


class AvgPool2dFunction(AvgPoolFunction):
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over k_h × k_w windows.

    Backward, given δ = ∂C/∂a: ∂C/∂z_i = Σ_{j ∋ i} δ_j / n_j, BP2's Wᵀδ for the fixed
    weights 1/n_j. n_j is k_h·k_w, or the window clipped to the input when
    ``count_include_pad`` is False, or ``divisor_override``. The fast variant
    (:func:`avg_pool2d_bwd`, one 2-d fold), tested against :func:`avg_pool_bwd`.

    Batch-first: (N, C, H, W) or (C, H, W) -> (…, H_out, W_out). Saves nothing but the
    input's shape.
    """

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = avg_pool2d_bwd(grad_output, ctx.input_shape, ctx.kernel_size,
                                    ctx.stride, ctx.padding, ctx.count_include_pad,
                                    ctx.divisor_override)
        return grad_input, None, None, None, None, None, None


class AvgPool3dFunction(AvgPoolFunction):
    """:class:`AvgPoolFunction` over (N, C, D, H, W); in float32 under CPU autocast, as torch."""

    autocast = _POOL3D_AUTOCAST


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


def separable(x: Tensor, mats: list[Tensor]) -> Tensor:
    """x ×_1 M_1 ⋯ ×_d M_d: the 1-d map M_a (m_a, n_a) applied along the a-th of x's d
    trailing axes, (…, n_1, …, n_d) -> (…, m_1, …, m_d). A linear map that acts on each
    axis on its own; its transpose is ``separable(δ, [M.T for M in mats])``."""
    ins, outs = "ijk"[:len(mats)], "pqr"[:len(mats)]
    terms = ",".join(o + i for o, i in zip(outs, ins))
    return torch.einsum(f"...{ins},{terms}->...{outs}", x, *mats)


def adaptive_avg_pool_bwd(delta: Tensor, input_shape: torch.Size, d: int) -> Tensor:
    """∂C/∂z = δ ×_1 P_1ᵀ ⋯ ×_d P_dᵀ, the transpose of the forward a = z ×_1 P_1 ⋯ ×_d P_d
    (BP2's Wᵀ δ), over the d trailing (spatial) dims. Global pooling spreads δ/Π n."""
    spatial, out = input_shape[-d:], delta.shape[-d:]
    if all(o == 1 for o in out):  # global average pooling: every pixel gets δ/Π n
        return (delta / math.prod(spatial)).expand(input_shape)
    mats = [adaptive_pool_matrix(n, o, delta.dtype, delta.device) for n, o in zip(spatial, out)]
    # a = z ×_a P_a  →  BP2's factor: dz = δ ×_a P_aᵀ, (…, *spatial)
    return separable(delta, [p.t() for p in mats])


def adaptive_avg_pool2d_bwd(delta: Tensor, input_shape: torch.Size) -> Tensor:
    """∂C/∂z = P_hᵀ δ P_w, the transpose of the forward a = P_h z P_wᵀ (BP2's Wᵀ δ): the
    2-d form of :func:`adaptive_avg_pool_bwd`, two matmuls."""
    h, w = input_shape[-2:]
    oh, ow = delta.shape[-2:]
    if oh == ow == 1:  # global average pooling: every pixel gets δ/(H·W)
        return (delta / (h * w)).expand(input_shape)
    p_h = adaptive_pool_matrix(h, oh, delta.dtype, delta.device)  # (H_out, H)
    p_w = adaptive_pool_matrix(w, ow, delta.dtype, delta.device)  # (W_out, W)
    return p_h.t() @ delta @ p_w  # a = P_h z P_wᵀ  →  BP2's factor: dz = P_hᵀ δ P_w, (…, H, W)


class AdaptiveAvgPoolFunction(BPFunction):
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over windows chosen to give a fixed output size,
    d = len(output_size) spatial dims.

    Along each axis the pooling is a matrix P (rows: windows, entries 1/n_j), so the
    forward is a = z ×_1 P_1 ⋯ ×_d P_d and the backward BP2's transpose:
    ∂C/∂z = δ ×_1 P_1ᵀ ⋯ ×_d P_dᵀ (:func:`adaptive_avg_pool_bwd`), exact for any
    (overlapping, unequal) windows. Global pooling (output 1 × ⋯ × 1) spreads δ/Π n.

    Batch-first: (N, C, *spatial) or (C, *spatial) -> (…, *output_size). Saves the
    input's shape.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, output_size: tuple[int, ...]) -> Tensor:
        return _ADAPTIVE_AVG_POOL[len(output_size)](input, output_size)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.input_shape = inputs[0].shape
        ctx.d = len(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        return adaptive_avg_pool_bwd(grad_output, ctx.input_shape, ctx.d), None


class AdaptiveAvgPool1dFunction(AdaptiveAvgPoolFunction):
    """:class:`AdaptiveAvgPoolFunction` over (N, C, L) or (C, L)."""


class AdaptiveAvgPool2dFunction(AdaptiveAvgPoolFunction):
    """a_j = (1/n_j) Σ_{i ∈ window j} z_i over windows chosen to give a fixed output size.

    Along each axis the pooling is a matrix P (rows: windows, entries 1/n_j), so the
    forward is a = P_h z P_wᵀ and the backward BP2's transpose: ∂C/∂z = P_hᵀ δ P_w, exact
    for any (overlapping, unequal) windows (:func:`adaptive_avg_pool2d_bwd`). Global
    pooling (output 1 × 1) spreads δ/(H·W).

    Batch-first: (N, C, H, W) or (C, H, W) -> (…, H_out, W_out). Saves the input's shape.
    """

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        return adaptive_avg_pool2d_bwd(grad_output, ctx.input_shape), None


class AdaptiveAvgPool3dFunction(AdaptiveAvgPoolFunction):
    """:class:`AdaptiveAvgPoolFunction` over (N, C, D, H, W); float32 under CPU autocast."""

    autocast = _POOL3D_AUTOCAST


__all__ = [
    "AdaptiveAvgPool1dFunction", "AdaptiveAvgPool2dFunction", "AdaptiveAvgPool3dFunction",
    "AdaptiveAvgPoolFunction", "AdaptiveMaxPool1dFunction", "AdaptiveMaxPool2dFunction",
    "AdaptiveMaxPool3dFunction", "AdaptiveMaxPoolFunction", "AvgPool1dFunction",
    "AvgPool2dFunction", "AvgPool3dFunction", "AvgPoolFunction", "MaxPool1dFunction",
    "MaxPool2dFunction", "MaxPool3dFunction", "MaxPoolFunction", "adaptive_avg_pool2d_bwd",
    "adaptive_avg_pool_bwd", "adaptive_pool_matrix", "avg_pool2d_bwd", "avg_pool_bwd",
    "max_pool2d_bwd", "max_pool2d_fwd", "max_pool_bwd", "max_pool_fwd", "separable",
]
