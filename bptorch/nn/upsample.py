"""Upsample (and torch's UpsamplingNearest2d, UpsamplingBilinear2d): ``torch.nn``'s names
and arguments, with the backward of :mod:`bptorch.functions.upsample` (δ sent back through
the transposed interpolation matrices, ∂C/∂z = δ ×_1 M_1ᵀ ⋯ ×_d M_dᵀ)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F


class Upsample(nn.Module):
    r"""a = z ×_1 M_1 ⋯ ×_d M_d, M_a the 1-d interpolation matrix of ``mode`` along axis a;
    backward ∂C/∂z = δ ×_1 M_1ᵀ ⋯ ×_d M_dᵀ (nearest: δ scatter-added to each output's
    source; linear: δ split onto the two source pixels per axis with the forward's weights).

    A drop-in for ``torch.nn.Upsample``: the same arguments, stored as torch stores them.

    Args:
        size: the output's spatial size (int or tuple).
        scale_factor: multiplier of the spatial size (float or tuple); one of the two.
        mode: 'nearest' (default), 'nearest-exact', 'linear' (3-d input), 'bilinear' (4-d),
            'trilinear' (5-d) or 'area' (adaptive average pooling).
        align_corners: for the linear modes, line up the corner pixels' centres.
        recompute_scale_factor: compute the source coordinates from the sizes, not from
            ``scale_factor``.

    Shape: (N, C, *spatial) -> (N, C, *spatial_out), 1 to 3 spatial dims.
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners: bool | None = None,
                 recompute_scale_factor: bool | None = None) -> None:
        super().__init__()
        self.name = type(self).__name__
        self.size = size
        if isinstance(scale_factor, tuple):
            self.scale_factor = tuple(float(factor) for factor in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input: Tensor) -> Tensor:
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             recompute_scale_factor=self.recompute_scale_factor)

    def extra_repr(self) -> str:
        if self.scale_factor is not None:
            info = "scale_factor=" + repr(self.scale_factor)
        else:
            info = "size=" + repr(self.size)
        return info + ", mode=" + repr(self.mode)


class UpsamplingNearest2d(Upsample):
    """torch's UpsamplingNearest2d: :class:`Upsample` in mode 'nearest' on (N, C, H, W)."""

    def __init__(self, size=None, scale_factor=None) -> None:
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """torch's UpsamplingBilinear2d: :class:`Upsample` in mode 'bilinear' with
    align_corners=True on (N, C, H, W)."""

    def __init__(self, size=None, scale_factor=None) -> None:
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


__all__ = ["Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d"]
