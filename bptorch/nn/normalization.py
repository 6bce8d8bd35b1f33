"""BatchNorm1d/2d/3d, LayerNorm, GroupNorm and InstanceNorm1d/2d/3d: ``torch.nn``'s names,
parameters, buffers and state_dict keys, over the written-out backward of
:mod:`bptorch.functions.normalization`."""
from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor, nn

from .. import functional as F


class _NormBase(nn.Module):
    r"""What BatchNorm and InstanceNorm share, as torch's ``_NormBase``: per-channel γ, β
    and running statistics.

    Args, attributes and buffers as ``torch.nn.BatchNorm2d``: ``weight`` γ (ones) and
    ``bias`` β (zeros) when ``affine`` (no β with ``bias=False``); ``running_mean``
    (zeros), ``running_var`` (ones) and ``num_batches_tracked`` when
    ``track_running_stats``. running_var tracks the unbiased variance.
    """

    _version = 2
    expected_dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(
                0, dtype=torch.long, **{k: v for k, v in factory.items() if k != "dtype"}))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """γ = 1, β = 0 and fresh running statistics, as torch."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self.expected_dims:
            want = " or ".join(f"{d}D" for d in self.expected_dims)
            raise ValueError(
                f"{type(self).__name__} expects {want} input, got {input.dim()}D input of "
                f"shape {tuple(input.shape)}"
            )

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # as torch: state_dicts from before num_batches_tracked existed still load
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class _BatchNorm(_NormBase):
    r"""y = γ ⊙ (x − μ)/√(σ² + ε) + β per channel; μ, σ² from the batch while training
    (and the running estimates updated), from the running estimates in eval mode.
    ``momentum=None`` keeps a cumulative average. An empty batch gives an empty output
    and leaves the running estimates alone, as torch.
    """

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        # batch statistics while training, and in eval mode when there are no running ones
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_running else None
        running_var = self.running_var if use_running else None
        return F.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                            batch_stats, momentum, self.eps)


class BatchNorm1d(_BatchNorm):
    r"""Batch normalization over (N, C) or (N, C, L): statistics per channel over N (and L).

    A drop-in for ``torch.nn.BatchNorm1d``: same arguments, parameters, buffers and
    state_dict keys. Backward: ∂C/∂β = Σ δ (BP3), ∂C/∂γ = Σ δ ⊙ x̂ (BP4) and
    ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)) while training.

    Args:
        num_features: C.
        eps: ε added to σ² (default 1e-5).
        momentum: m in r ← (1 − m) r + m s (default 0.1); None for a cumulative average.
        affine: learn γ (ones) and β (zeros).
        track_running_stats: keep running_mean / running_var for eval mode; without them
            eval mode uses the batch's statistics too.
        bias: (keyword) with affine, also learn β.

    Shape:
        (N, C) or (N, C, L) -> the same shape.
    """

    expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    r"""Batch normalization over (N, C, H, W): statistics per channel over N, H and W.

    A drop-in for ``torch.nn.BatchNorm2d`` (arguments as :class:`BatchNorm1d`); the sums
    of BP3/BP4 and the two means of ∂C/∂x run over N, H and W.

    Shape:
        (N, C, H, W) -> the same shape.
    """

    expected_dims = (4,)


class BatchNorm3d(_BatchNorm):
    r"""Batch normalization over (N, C, D, H, W): statistics per channel over N, D, H, W.

    A drop-in for ``torch.nn.BatchNorm3d`` (arguments as :class:`BatchNorm1d`); the sums
    of BP3/BP4 and the two means of ∂C/∂x run over N, D, H and W.

    Shape:
        (N, C, D, H, W) -> the same shape.
    """

    expected_dims = (5,)


class _InstanceNorm(_NormBase):
    r"""y = γ ⊙ (x − μ)/√(σ² + ε) + β, μ and σ² per example and channel over the spatial
    axes (GroupNorm with one channel per group).

    With ``track_running_stats`` the running estimates are updated in training, from
    the statistics averaged over the batch, and used in eval mode; without them (the
    default) every mode uses the input's own statistics. Unlike BatchNorm, no affine map
    by default, ``momentum=None`` freezes the running estimates (torch passes 0), and
    ``num_batches_tracked`` is kept but never counted, all as torch.
    """

    no_batch_dim = 0  # the dims of an unbatched input

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)

    def _instance_norm(self, input: Tensor) -> Tensor:
        return F.instance_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            0.0 if self.momentum is None else self.momentum, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self.no_batch_dim
        if input.shape[feature_dim] != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features "
                    f"({self.num_features}), but got: {input.shape[feature_dim]}.")
            warnings.warn(  # as torch: without γ and β, num_features is not used
                f"input's size at dim={feature_dim} does not match num_features. You can "
                "silence this warning by not passing in num_features, which is not used "
                "because affine=False", stacklevel=2)
        if input.dim() == self.no_batch_dim:  # unbatched: a batch of one
            return self._instance_norm(input.unsqueeze(0)).squeeze(0)
        return self._instance_norm(input)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # as torch: checkpoints from before torch 0.4 kept running statistics that a
        # layer without track_running_stats has no place for; reported, then dropped
        version = local_metadata.get("version", None)
        if version is None and not self.track_running_stats:
            keys = [prefix + k for k in ("running_mean", "running_var")
                    if prefix + k in state_dict]
            if keys:
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {' and '.join(map(repr, keys))} "
                    f"for {type(self).__name__} with track_running_stats=False; remove "
                    "them from the state_dict, or set track_running_stats=True to use them")
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class InstanceNorm1d(_InstanceNorm):
    r"""Instance normalization over (N, C, L) or unbatched (C, L): statistics per example
    and channel over L.

    A drop-in for ``torch.nn.InstanceNorm1d``: same arguments (``affine=False`` and
    ``track_running_stats=False`` by default), parameters, buffers and state_dict keys.
    Backward: ∂C/∂β = Σ δ (BP3), ∂C/∂γ = Σ δ ⊙ x̂ (BP4), both over N and L, and
    ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)), the means over L; in eval
    mode with running statistics ∂C/∂x = γ·rstd·δ.

    Shape:
        (N, C, L) or (C, L) -> the same shape.
    """

    expected_dims = (2, 3)
    no_batch_dim = 2


class InstanceNorm2d(_InstanceNorm):
    r"""Instance normalization over (N, C, H, W) or unbatched (C, H, W): statistics per
    example and channel over H and W. Arguments and backward as :class:`InstanceNorm1d`.

    Shape:
        (N, C, H, W) or (C, H, W) -> the same shape.
    """

    expected_dims = (3, 4)
    no_batch_dim = 3


class InstanceNorm3d(_InstanceNorm):
    r"""Instance normalization over (N, C, D, H, W) or unbatched (C, D, H, W): statistics
    per example and channel over D, H and W. Arguments and backward as
    :class:`InstanceNorm1d`.

    Shape:
        (N, C, D, H, W) or (C, D, H, W) -> the same shape.
    """

    expected_dims = (4, 5)
    no_batch_dim = 4


class GroupNorm(nn.Module):
    r"""y = γ ⊙ (x − μ)/√(σ² + ε) + β, μ and σ² per example over each of ``num_groups``
    groups of channels (and every spatial position); γ and β per channel.

    A drop-in for ``torch.nn.GroupNorm``. Backward: ∂C/∂β = Σ δ (BP3) and
    ∂C/∂γ = Σ δ ⊙ x̂ (BP4) per channel, over N and the spatial axes, and
    ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)), the means over each group.

    Args:
        num_groups: G, dividing num_channels.
        num_channels: C.
        eps: ε added to σ² (default 1e-5).
        affine: learn γ (ones) and β (zeros), per channel.
        bias: (keyword) with affine, also learn β.

    Shape:
        (N, C, *) -> the same shape.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps, self.affine = eps, affine
        if affine:
            self.weight = nn.Parameter(torch.empty(num_channels, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_channels, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ = 1, β = 0, as torch."""
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")


class LayerNorm(nn.Module):
    r"""y = γ ⊙ (x − μ)/√(σ² + ε) + β, μ and σ² over each example's last
    ``len(normalized_shape)`` axes.

    A drop-in for ``torch.nn.LayerNorm``. Backward: ∂C/∂β = Σ_rows δ (BP3),
    ∂C/∂γ = Σ_rows δ ⊙ x̂ (BP4), ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)),
    the means over each row's normalized axes.

    Args:
        normalized_shape: the trailing shape to normalize over (int or sequence).
        eps: ε added to σ² (default 1e-5).
        elementwise_affine: learn γ (ones) of shape normalized_shape.
        bias: with elementwise_affine, also learn β (zeros).

    Shape:
        (*, *normalized_shape) -> the same shape.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | list[int] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(n) for n in normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ = 1, β = 0, as torch."""
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "LayerNorm"]
