"""Sampling a feature map at real-valued points by bilinear interpolation: torchvision's
``roi_align`` (each box's bins) and ``F.grid_sample`` (points a grid gives, the grid taking
a gradient too), with their backward written out.

Bilinear interpolation. A point (y, x) between the pixels y₀ = ⌊y⌋, y₁ = y₀ + 1 and
x₀ = ⌊x⌋, x₁ = x₀ + 1, with l_y = y − y₀, l_x = x − x₀, reads

    v(y, x) = Σ_{corners (i, j)} w_ij X[y_i, x_j],
    w_00 = (1−l_y)(1−l_x), w_01 = (1−l_y) l_x, w_10 = l_y (1−l_x), w_11 = l_y l_x.

The weights depend on the point, not on X: v is linear in X, ∂v/∂X[y_i, x_j] = w_ij, and
0 for every other pixel. So, given δ = ∂C/∂v, BP2 through a sample is a scatter:

    ∂C/∂X[y_i, x_j] += w_ij δ      (each sample's δ to its four source pixels, with the
                                    forward's weights; samples that share a pixel add)

RoIAlign. Box n (its image b, corners scaled by ``spatial_scale``, shifted by ½ pixel if
``aligned``) is cut into pooled_height × pooled_width bins; bin (p, q) averages a grid of
g_h × g_w samples at the grid's cell centres (g = ``sampling_ratio``, or ⌈box size / bins⌉
per box when it is ≤ 0):

    out[n, c, p, q] = (1 / (g_h g_w)) Σ_{samples s of bin (p, q)} v_s(X[b, c])
    ∂C/∂X[b, c, y_i, x_j] += (1 / (g_h g_w)) w_ij(s) δ[n, c, p, q]  for each sample s, corner ij

torchvision's conventions, kept: a sample further than one pixel outside the map reads 0
(and gets no gradient); a coordinate in [−1, 0] reads as 0; a sample past the last row or
column reads that row or column. The boxes take no gradient (torchvision's op gives none).

The sampling plan (the weights as a sparse matrix M, bins × pixels) is computed from the
boxes and kept; the forward is M X, the backward Mᵀ δ, a differentiable torch op (double
backward, gradgradcheck).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import BPFunction

Plan = tuple[Tensor, Tensor]


# ---------------------------------------------------------------- the sampling plan
def _axis(start: Tensor, size: Tensor, bins: int, grid: Tensor, g_max: int,
          length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One axis of every box's samples: (low, high, weight of low, weight of high), each
    (K, bins, g_max); samples beyond a box's own grid and samples outside the map weigh 0."""
    bin_size = size / bins  # (K,)
    p = torch.arange(bins, dtype=size.dtype, device=size.device)
    i = torch.arange(g_max, dtype=size.dtype, device=size.device)
    g = grid.clamp(min=1).to(size.dtype)
    # the sample's coordinate: the box start, the bin, the grid cell's centre (torchvision's)
    t = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
         + (i[None, None, :] + 0.5) * bin_size[:, None, None] / g[:, None, None])
    inside = (t >= -1.0) & (t <= length) & (i[None, None, :] < grid[:, None, None])
    t = t.clamp(min=0)  # [−1, 0] reads as 0
    low = t.floor().long()
    last = low >= length - 1  # past the last pixel: read the last one
    low = torch.where(last, length - 1, low)
    high = torch.where(last, low, low + 1)
    t = torch.where(last, low.to(t.dtype), t)
    l = t - low  # l_y (or l_x): the distance from the low pixel
    zero = torch.zeros((), dtype=t.dtype, device=t.device)
    return low, high, torch.where(inside, 1 - l, zero), torch.where(inside, l, zero)


def roi_align_plan(rois: Tensor, n_images: int, height: int, width: int,
                   spatial_scale: float, pooled_height: int, pooled_width: int,
                   sampling_ratio: int, aligned: bool, dtype: torch.dtype) -> Plan:
    """(the weights as a sparse matrix M (K·PH·PW, B·H·W): row (n, p, q) holds each of
    its samples' four w_ij at column b·H·W + y_i·W + x_j, repeats summed; the per-box
    count g_h g_w (K,))."""
    rois = rois.detach().to(dtype)
    offset = 0.5 if aligned else 0.0
    b = rois[:, 0].long()
    x0, y0 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    w, h = rois[:, 3] * spatial_scale - offset - x0, rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)  # torchvision's legacy: boxes ≥ 1 pixel
    if sampling_ratio > 0:
        gh = torch.full_like(b, sampling_ratio)
        gw = torch.full_like(b, sampling_ratio)
    else:
        gh = torch.ceil(h / pooled_height).long().clamp(min=0)
        gw = torch.ceil(w / pooled_width).long().clamp(min=0)
    count = (gh * gw).clamp(min=1).to(dtype)
    gh_max = max(int(gh.max()), 1) if len(b) else 1
    gw_max = max(int(gw.max()), 1) if len(b) else 1
    ylo, yhi, wylo, wyhi = _axis(y0, h, pooled_height, gh, gh_max, height)
    xlo, xhi, wxlo, wxhi = _axis(x0, w, pooled_width, gw, gw_max, width)
    base = (b * height * width)[:, None, None]  # (K, 1, 1)
    columns, weights = [], []
    for iy in range(gh_max):
        for ix in range(gw_max):
            for yy, wy in ((ylo, wylo), (yhi, wyhi)):
                for xx, wx in ((xlo, wxlo), (xhi, wxhi)):
                    columns.append(base + yy[:, :, None, iy] * width + xx[:, None, :, ix])
                    weights.append(wy[:, :, None, iy] * wx[:, None, :, ix])  # w_ij = w_i w_j
    n_rows = len(b) * pooled_height * pooled_width
    columns = torch.stack([c.reshape(-1) for c in columns])  # (samples·4, K·PH·PW)
    weights = torch.stack([w.reshape(-1) for w in weights])
    rows = torch.arange(n_rows, device=rois.device).expand_as(columns)
    keep = weights != 0
    matrix = torch.sparse_coo_tensor(torch.stack((rows[keep], columns[keep])), weights[keep],
                                     (n_rows, n_images * height * width),
                                     check_invariants=False).coalesce()
    return matrix, count


# ---------------------------------------------------------------- the reference pair
# The weights w_ij(s) of every sample and corner form a sparse matrix M, one row per bin
# (n, p, q) and one column per pixel (b, y, x): the forward is out = M X / count, rows of X
# being pixels (C channels each), and BP2 is its transpose, ∂C/∂X = Mᵀ (δ / count): each
# sample's δ scattered to its four source pixels with the forward's weights.
def roi_align_fwd(x: Tensor, plan: Plan, pooled: tuple[int, int]) -> Tensor:
    """out[n, c, p, q] = (1 / count_n) Σ_s Σ_ij w_ij(s) X[b_n, c, y_i, x_j], (K, C, PH, PW)."""
    matrix, count = plan
    n_rois, channels = count.shape[0], x.shape[1]
    rows = x.permute(0, 2, 3, 1).reshape(-1, channels)  # (B·H·W, C): one pixel per row
    out = torch.sparse.mm(matrix, rows)  # Σ_s Σ_ij w_ij X[y_i, x_j], (K·PH·PW, C)
    out = out.reshape(n_rois, pooled[0], pooled[1], channels).permute(0, 3, 1, 2)
    return out / count[:, None, None, None]  # the bin's mean over its samples


def roi_align_bwd(delta: Tensor, plan: Plan, shape: torch.Size) -> Tensor:
    """∂C/∂X of :func:`roi_align_fwd`, given δ = ∂C/∂out (K, C, PH, PW)."""
    matrix, count = plan
    channels = shape[1]
    # out = (1 / count) Σ ...  →  δ / count for each sample of the bin
    delta = delta / count[:, None, None, None]
    delta_rows = delta.permute(0, 2, 3, 1).reshape(-1, channels)  # (K·PH·PW, C)
    # v = Σ_ij w_ij X[y_i, x_j]  →  BP2: ∂C/∂X[y_i, x_j] += w_ij δ, i.e. Mᵀ δ (a scatter)
    grad = torch.sparse.mm(matrix.t(), delta_rows)
    return grad.reshape(shape[0], shape[2], shape[3], channels).permute(0, 3, 1, 2)


class RoIAlignFunction(BPFunction):
    """out = RoIAlign(X, boxes): each box's bins, the mean of bilinear samples, as
    torchvision's ``roi_align`` op (``rois`` (K, 5): image index, x1, y1, x2, y2).

    Backward: each sample's δ / count scattered to its four source pixels with the
    forward's bilinear weights (:func:`roi_align_bwd`); the boxes get none. Saves the
    sampling plan (indices and weights, from the boxes), not X: the map is linear in X.
    Forward mode (``jvp``): dout = RoIAlign(dX, boxes), the same linear map.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
        n, _, height, width = input.shape
        plan = roi_align_plan(rois, n, height, width, spatial_scale, pooled_height,
                              pooled_width, sampling_ratio, aligned, input.dtype)
        return roi_align_fwd(input, plan, (pooled_height, pooled_width))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, rois, scale, ph, pw, ratio, aligned = inputs
        # the plan again: a few small index tensors, cheaper to rebuild than to thread out
        ctx.plan = roi_align_plan(rois, x.shape[0], x.shape[2], x.shape[3], scale, ph, pw,
                                  ratio, aligned, x.dtype)
        ctx.shape, ctx.pooled = x.shape, (ph, pw)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = roi_align_bwd(grad_output, ctx.plan, ctx.shape)
        return grad_input, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, *_rest) -> Tensor:
        return roi_align_fwd(dx, ctx.plan, ctx.pooled)  # linear in X: the same map


# ---------------------------------------------------------------- grid_sample
# F.grid_sample (bilinear) reads X at the points a grid gives in [−1, 1]: x = ((g_x + 1) / 2)
# (W − 1) with align_corners, ((g_x + 1) W − 1) / 2 without (x' = dx/dg_x = (W − 1) / 2 or
# W / 2); "border" clamps x to [0, W − 1] (x' = 0 where it clamps, at the bounds too, as
# torch's), "zeros" reads 0 at every corner outside the map. Here the point moves too: the
# grid takes a gradient. With l_x = x − x₀, l_y = y − y₀,
#
#     v = Σ_ij w_ij X[y_i, x_j],   ∂w/∂x = (1−l_y, l_y) ⊗ (−1, +1),  ∂w/∂y = (−1, +1) ⊗ (1−l_x, l_x)
#     ∂C/∂X[y_i, x_j] += w_ij δ                    (the scatter, as RoIAlign's)
#     ∂C/∂g_x = x' Σ_c δ_c Σ_ij (∂w_ij/∂x) X_c[y_i, x_j]    (and g_y alike)
def _unnormalize(g: Tensor, size: int, align_corners: bool, border: bool) -> tuple[Tensor, Any]:
    """(the pixel coordinate, its derivative dx/dg) of a grid coordinate g in [−1, 1]."""
    if align_corners:
        x, slope = (g + 1) / 2 * (size - 1), (size - 1) / 2
    else:
        x, slope = ((g + 1) * size - 1) / 2, size / 2
    if border:
        inside = (x > 0) & (x < size - 1)  # clamped: the point no longer moves with g
        x = x.clamp(0, size - 1)
        slope = inside.to(x.dtype) * slope
    return x, slope


def _corners(x: Tensor, y: Tensor, height: int, width: int):
    """Each corner (i, j): flat index y_i W + x_j (clamped into the map), 0/1 for inside,
    (1 − l_y or l_y, ∂/∂y of it), (1 − l_x or l_x, ∂/∂x of it)."""
    x0, y0 = x.floor(), y.floor()
    lx, ly = x - x0, y - y0
    for yi, wy, dwy in ((y0, 1 - ly, -1.0), (y0 + 1, ly, 1.0)):
        for xj, wx, dwx in ((x0, 1 - lx, -1.0), (x0 + 1, lx, 1.0)):
            inside = (xj >= 0) & (xj <= width - 1) & (yi >= 0) & (yi <= height - 1)
            index = yi.clamp(0, height - 1).long() * width + xj.clamp(0, width - 1).long()
            yield index, inside.to(x.dtype), (wy, dwy), (wx, dwx)


def grid_sample_fwd(x: Tensor, grid: Tensor, align_corners: bool, border: bool) -> Tensor:
    """out[n, c, h, w] = Σ_ij w_ij X[n, c, y_i, x_j] at grid[n, h, w], (N, C, Ho, Wo)."""
    n, c, height, width = x.shape
    px, _ = _unnormalize(grid[..., 0], width, align_corners, border)
    py, _ = _unnormalize(grid[..., 1], height, align_corners, border)
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # (N·H·W, C)
    base = (torch.arange(n, device=x.device) * height * width)[:, None, None]
    out = rows.new_zeros(grid.shape[0] * grid.shape[1] * grid.shape[2], c)
    for index, inside, (wy, _), (wx, _) in _corners(px, py, height, width):
        w = (wy * wx * inside).reshape(-1, 1)  # w_ij, 0 outside the map ("zeros")
        out = out + w * rows[(base + index).reshape(-1)]
    return out.reshape(*grid.shape[:3], c).permute(0, 3, 1, 2)


def grid_sample_bwd(delta: Tensor, x: Tensor, grid: Tensor, align_corners: bool,
                    border: bool, need: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂X, ∂C/∂grid) of :func:`grid_sample_fwd`, given δ = ∂C/∂out (N, C, Ho, Wo)."""
    n, c, height, width = x.shape
    px, sx = _unnormalize(grid[..., 0], width, align_corners, border)
    py, sy = _unnormalize(grid[..., 1], height, align_corners, border)
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)
    delta_rows = delta.permute(0, 2, 3, 1).reshape(-1, c)  # (N·Ho·Wo, C)
    base = (torch.arange(n, device=x.device) * height * width)[:, None, None]
    grad_x = delta_rows.new_zeros(rows.shape) if need[0] else None
    dv_dx = dv_dy = None
    for index, inside, (wy, dwy), (wx, dwx) in _corners(px, py, height, width):
        flat = (base + index).reshape(-1)
        if need[0]:
            # v = Σ_ij w_ij X[y_i, x_j]  →  BP2: ∂C/∂X[y_i, x_j] += w_ij δ (a scatter)
            grad_x = grad_x.index_add(0, flat, (wy * wx * inside).reshape(-1, 1) * delta_rows)
        if need[1]:
            # v = Σ_ij w_ij X[y_i, x_j]  →  ∂C/∂x = Σ_c δ_c Σ_ij (∂w_ij/∂x) X_c[y_i, x_j]
            dx_term = (delta_rows * rows[flat]).sum(1).reshape(px.shape) * inside
            dv_dx = (0 if dv_dx is None else dv_dx) + dwx * wy * dx_term  # ∂w/∂x = ±(wy)
            dv_dy = (0 if dv_dy is None else dv_dy) + dwy * wx * dx_term  # ∂w/∂y = ±(wx)
    if need[0]:
        grad_x = grad_x.reshape(n, height, width, c).permute(0, 3, 1, 2)
    grad_grid = None
    if need[1]:
        # x = unnormalize(g_x)  →  ∂C/∂g_x = ∂C/∂x · dx/dg_x (0 where border clamps)
        grad_grid = torch.stack((dv_dx * sx, dv_dy * sy), dim=-1)
    return grad_x, grad_grid


class GridSampleFunction(BPFunction):
    """out = grid_sample(X, grid), bilinear, "zeros" or "border" padding, as F.grid_sample
    on 4-D input.

    Backward: X gets each sample's δ scattered to its four corners with the forward's
    weights; the grid gets δ · ∂v/∂x · dx/dg (:func:`grid_sample_bwd`). Saves X and the
    grid: the grid's gradient reads X at the corners.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, grid: Tensor, align_corners: bool, border: bool) -> Tensor:
        return grid_sample_fwd(input, grid, align_corners, border)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, grid, ctx.align_corners, ctx.border = inputs
        ctx.save_for_backward(x, grid)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, grid = ctx.saved_tensors
        grad_x, grad_grid = grid_sample_bwd(grad_output, x, grid, ctx.align_corners,
                                            ctx.border, ctx.needs_input_grad[:2])
        return grad_x, grad_grid, None, None


roi_align = RoIAlignFunction.apply
grid_sample = GridSampleFunction.apply

__all__ = ["GridSampleFunction", "RoIAlignFunction", "grid_sample", "grid_sample_bwd",
           "grid_sample_fwd", "roi_align", "roi_align_bwd", "roi_align_fwd", "roi_align_plan"]
