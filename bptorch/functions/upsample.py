"""Upsampling / interpolation (Upsample, ``F.interpolate``): modes 'nearest',
'nearest-exact', 'linear', 'bilinear' and 'trilinear', over 1, 2 or 3 spatial dims.

Every mode interpolates each axis on its own: output j along an axis of n inputs reads
a weighted sum of inputs, a_j = Σ_i M[j, i] z_i, M the (n_out, n) 1-d interpolation
matrix, and the d-dim interpolation is the separable product

    a = z ×_1 M_1 ⋯ ×_d M_d   (bilinear: a = M_h z M_wᵀ).

No weights, so no BP3/BP4: the backward is BP2's first factor, the transpose,

    ∂C/∂z = δ ×_1 M_1ᵀ ⋯ ×_d M_dᵀ   (bilinear: ∂C/∂z = M_hᵀ δ M_w).

* nearest: row j of M is one-hot at the source index src(j), so Mᵀδ is the scatter-add
  of δ_j onto z_{src(j)}: ∂C/∂z_i = Σ_{j : src(j) = i} δ_j.
* linear: row j holds (1 − λ_j) at i0_j and λ_j at i1_j = i0_j + 1, so each δ_j goes back
  to its two source pixels per axis (four in 2-d, eight in 3-d) with the forward's weights.

The source coordinates follow torch's kernels (``UpSample.h``): with ratio r = 1/scale
when a scale factor is given (and not recomputed), else n/n_out,

* nearest:        src = min(⌊j·r⌋, n − 1);
* nearest-exact:  src = min(⌊max(r·(j + ½) − ½, 0) + ½⌋, n − 1);
* linear:         x = r·(j + ½) − ½ clamped at 0 (align_corners=False), or
                  x = j·(n − 1)/(n_out − 1) (align_corners=True); i0 = min(⌊x⌋, n − 1),
                  λ = x − i0 clamped to [0, 1], i1 = i0 + 1 (i0 at the last pixel).

A linear axis whose size does not change is the identity, as in torch's kernel (whatever
the scale factor says); a nearest axis always follows the formula.

The forward is torch's op (exact values, torch's speed); the backward builds the matrices
and applies their transpose with one einsum (``pool.separable``). It takes a nearest
mode's source indices from the forward itself (run on an index ramp,
:func:`forward_source`), as max pooling takes the forward's argmax: torch's kernels round
the coordinate differently by device and dtype (the CPU's in the opmath dtype, then
float32), and one ulp there moves δ to the next pixel. The formulas are the reference, held to torch's CPU kernel by the tests.
The upsampling ops are on none of torch's autocast lists: they run in their input's dtype.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as torch_F

from .base import LOW_PRECISION, BPFunction
from .pool import separable

NEAREST_MODES = ("nearest", "nearest-exact")
LINEAR_MODES = ("linear", "bilinear", "trilinear")


def _ratio(n: int, n_out: int, scale: float | None, dtype: torch.dtype) -> Tensor:
    """torch's compute_scales_value: 1/scale if a scale factor is given, else n/n_out, as a
    0-d tensor of ``dtype`` (the precision torch's kernel computes source coordinates in)."""
    if scale is not None and scale > 0:
        return torch.tensor(1.0 / scale, dtype=torch.float64).to(dtype)
    return torch.tensor(n, dtype=dtype) / n_out


def nearest_source(n: int, n_out: int, scale: float | None, exact: bool, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    """src(j) for j < n_out: the input each output copies (torch's CPU kernel: the
    coordinate in ``dtype``, torch's opmath type, rounded to float32 before the floor)."""
    j = torch.arange(n_out, device=device, dtype=dtype)
    r = _ratio(n, n_out, scale, dtype).to(device)
    if exact:  # round(r·(j + ½) − ½), the pixel whose centre is nearest
        x = torch.clamp((j + 0.5) * r - 0.5, min=0) + 0.5
    else:  # ⌊r·j⌋, the legacy rule (OpenCV's INTER_NEAREST)
        x = j * r
    return torch.clamp(torch.floor(x.float()).long(), max=n - 1)


def linear_source(n: int, n_out: int, scale: float | None, align_corners: bool,
                  dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(i0, i1, λ): output j = (1 − λ_j)·z[i0_j] + λ_j·z[i1_j] (torch's
    compute_source_index_and_lambda, in ``dtype``, torch's opmath type)."""
    j = torch.arange(n_out, device=device)
    if n_out == n:  # torch's kernel copies, whatever the scale factor
        return j, j, torch.zeros(n_out, dtype=dtype, device=device)
    if align_corners:  # the corner pixels' centres line up: x = j·(n − 1)/(n_out − 1)
        r = (torch.tensor(n - 1, dtype=dtype) / (n_out - 1) if n_out > 1
             else torch.zeros((), dtype=dtype))
        x = j.to(dtype) * r.to(device)
    else:  # pixel centres: x + ½ = r·(j + ½), clamped at the first pixel
        r = _ratio(n, n_out, scale, dtype).to(device)
        x = torch.clamp((j.to(dtype) + 0.5) * r - 0.5, min=0)
    i0 = torch.clamp(torch.floor(x.float()).long(), max=n - 1)
    lam = torch.clamp(x - i0.to(dtype), 0, 1)
    i1 = torch.where(i0 < n - 1, i0 + 1, i0)
    return i0, i1, lam


def forward_source(n: int, n_out: int, scale: float | None, mode: str, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    """src(j) as torch's nearest forward picks it on ``device``: the forward run on the
    ramp 0, 1, …, n − 1 returns each output's source index (exact: integers below 2²⁴).

    The backward reads the sources this way, as max pooling reads the forward's argmax:
    torch's kernels round the coordinate differently by device and dtype, and a nearest
    index is discontinuous, so an ulp decides which pixel gets δ. On the CPU it equals
    :func:`nearest_source` (tested)."""
    ramp = torch.arange(n, dtype=dtype, device=device).view(1, 1, n)
    if scale is not None:
        picked = torch_F.interpolate(ramp, scale_factor=scale, mode=mode,
                                     recompute_scale_factor=False)
    else:
        picked = torch_F.interpolate(ramp, size=n_out, mode=mode)
    return picked.view(n_out).long()


def interpolation_matrix(n: int, n_out: int, scale: float | None, mode: str,
                         align_corners: bool | None, dtype: torch.dtype,
                         device: torch.device, forward_sources: bool = False) -> Tensor:
    """M (n_out, n): a_j = Σ_i M[j, i] z_i along one axis, in ``mode``. Nearest sources
    from the formula, or (``forward_sources``) from the forward (:func:`forward_source`)."""
    if mode in NEAREST_MODES:
        if forward_sources:
            src = forward_source(n, n_out, scale, mode, dtype, device)
        else:
            src = nearest_source(n, n_out, scale, mode == "nearest-exact", dtype, device)
        return torch.nn.functional.one_hot(src, n).to(dtype)
    i0, i1, lam = linear_source(n, n_out, scale, bool(align_corners), dtype, device)
    # row j: (1 − λ_j) at i0_j plus λ_j at i1_j (the same column at the last pixel)
    return ((1 - lam)[:, None] * torch.nn.functional.one_hot(i0, n).to(dtype)
            + lam[:, None] * torch.nn.functional.one_hot(i1, n).to(dtype))


def interpolate_fwd(z: Tensor, size: tuple[int, ...], scales: tuple[float, ...] | None,
                    mode: str, align_corners: bool | None) -> Tensor:
    """a = z ×_1 M_1 ⋯ ×_d M_d, by torch's kernel (the matrices are only built for the
    backward, and by :func:`interpolate_ref` in the tests)."""
    if scales is not None:
        return torch_F.interpolate(z, scale_factor=list(scales), mode=mode,
                                   align_corners=align_corners, recompute_scale_factor=False)
    return torch_F.interpolate(z, size=list(size), mode=mode, align_corners=align_corners)


def _matrices(spatial: tuple[int, ...], size: tuple[int, ...],
              scales: tuple[float, ...] | None, mode: str, align_corners: bool | None,
              dtype: torch.dtype, device: torch.device,
              forward_sources: bool = False) -> list[Tensor]:
    scales = scales if scales is not None else (None,) * len(size)
    return [interpolation_matrix(n, o, s, mode, align_corners, dtype, device, forward_sources)
            for n, o, s in zip(spatial, size, scales)]


def interpolate_ref(z: Tensor, size: tuple[int, ...], scales: tuple[float, ...] | None,
                    mode: str, align_corners: bool | None) -> Tensor:
    """The forward written as the separable product a = z ×_1 M_1 ⋯ ×_d M_d (the
    reference the tests hold torch's kernel and the matrices to)."""
    mats = _matrices(z.shape[2:], size, scales, mode, align_corners, z.dtype, z.device)
    return separable(z, mats)


def interpolate_bwd(delta: Tensor, input_shape: torch.Size, scales: tuple[float, ...] | None,
                    mode: str, align_corners: bool | None) -> Tensor:
    """∂C/∂z = δ ×_1 M_1ᵀ ⋯ ×_d M_dᵀ: BP2's transpose of the interpolation. Nearest: δ
    scatter-added onto each output's source; linear: δ_j split onto its two source pixels
    per axis with the forward's weights. Half-precision δs summed in float32, rounded once."""
    acc = torch.float32 if delta.dtype in LOW_PRECISION else delta.dtype
    mats = _matrices(input_shape[2:], delta.shape[2:], scales, mode, align_corners, acc,
                     delta.device, forward_sources=True)
    # a = z ×_a M_a  →  BP2's factor: dz = δ ×_a M_aᵀ
    return separable(delta.to(acc), [m.t() for m in mats]).to(delta.dtype)


class InterpolateFunction(BPFunction):
    """a = z ×_1 M_1 ⋯ ×_d M_d, M_a the 1-d interpolation matrices of ``mode``;
    backward ∂C/∂z = δ ×_1 M_1ᵀ ⋯ ×_d M_dᵀ (:func:`interpolate_bwd`).

    Batch-first: (N, C, *spatial) -> (N, C, *size), d = 1, 2 or 3. ``scales``: the scale
    factors torch's kernel uses for the source coordinates (None: from the sizes). Saves
    nothing but the input's shape: the matrices are rebuilt from the sizes.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, size: tuple[int, ...], scales: tuple[float, ...] | None,
                mode: str, align_corners: bool | None) -> Tensor:
        return interpolate_fwd(input, size, scales, mode, align_corners)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, _size, ctx.scales, ctx.mode, ctx.align_corners = inputs
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = interpolate_bwd(grad_output, ctx.input_shape, ctx.scales, ctx.mode,
                                     ctx.align_corners)
        return grad_input, None, None, None, None


__all__ = [
    "InterpolateFunction", "forward_source", "interpolate_bwd", "interpolate_fwd",
    "interpolate_ref", "interpolation_matrix", "linear_source", "nearest_source",
]
