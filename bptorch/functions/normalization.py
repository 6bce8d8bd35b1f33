"""Batch, layer, group and instance normalization, with the backward written out.

Each layer standardises z over some axes, then applies a per-feature affine map:

    x̂ = (x − μ) · rstd,   rstd = 1/√(σ² + ε),   y = γ ⊙ x̂ + β

where μ and σ² (biased) are taken over the *reduced* axes: the batch (and spatial) axes
for BatchNorm, one per channel; the trailing ``normalized_shape`` axes for LayerNorm, one
per example; each group of C/G channels and its spatial axes for GroupNorm, one per
(example, group); the spatial axes for InstanceNorm, one per (example, channel), which is
GroupNorm with one channel per group. The output y is the layer's z^l in the seed's
notation, so δ = ∂C/∂y is its error δ^l, handed down by the layer above; with M the
number of values in each reduction:

    ∂C/∂β = Σ δ                   (BP3's analogue, β is a bias)
    ∂C/∂γ = Σ δ ⊙ x̂               (BP4's analogue, x̂ plays a^{l−1})
    ∂C/∂x̂ = δ ⊙ γ
    ∂C/∂x = rstd · (∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂))

the sums in the first two over the axes γ is shared across (BatchNorm, GroupNorm and
InstanceNorm: the batch and spatial axes, γ per channel; LayerNorm: the rows, γ per
element), the means in the last over the reduced axes. The last line is the chain rule
through μ and σ², which both depend on every x in the reduction; the two means are what
is left of those paths. When the statistics are fixed (BatchNorm in eval mode, running
statistics) μ and rstd are constants and ∂C/∂x = rstd · ∂C/∂x̂, the affine map's backward.

Saved for backward, as torch saves them: the input x and the per-reduction ``mean`` and
``rstd`` (small). x̂ is recomputed from them rather than saved, and the output y is never
saved, so an in-place op on y in a model's forward (``out += identity``, a ReLU(inplace)
after BatchNorm) leaves the backward intact. The saved mean and rstd are constants to
autograd; when the backward itself is differentiated (``create_graph=True``) it recomputes
them from x so that the second derivative sees their dependence on x.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import (FLOAT32, LOW_PRECISION, PER_EXAMPLE, BPFunction, kernel_family, moved,
                   per_example, use_kernel)

Dims = tuple[int, ...]


# ---------------------------------------------------------------- the reference pair
def stats(x: Tensor, dims: Dims, eps: float) -> tuple[Tensor, Tensor]:
    """μ and rstd = 1/√(σ² + ε) over ``dims`` (biased σ², as the forward uses), kept as
    broadcastable (keepdim) tensors."""
    mean = x.mean(dims, keepdim=True)
    # two passes: as stable as Welford's var_mean and, over (0, 2, 3) of an (N, C, H, W)
    # tensor, several times faster on the CPU
    centred = x - mean
    var = (centred * centred).mean(dims, keepdim=True)
    return mean, torch.rsqrt(var + eps)


def _sum(t: Tensor, dims: Dims) -> Tensor:
    """Σ over ``dims`` (keepdim); no dims is no sum (``t.sum(())`` would sum everything)."""
    return t.sum(dims, keepdim=True) if dims else t


def norm_fwd(x: Tensor, mean: Tensor, rstd: Tensor, gamma: Tensor | None,
             beta: Tensor | None) -> Tensor:
    """y = γ ⊙ (x − μ) · rstd + β, with γ, β already shaped to broadcast against x."""
    x_hat = (x - mean) * rstd
    if gamma is not None:
        x_hat = x_hat * gamma
    return x_hat + beta if beta is not None else x_hat


def norm_bwd(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, gamma: Tensor | None,
             reduce_dims: Dims, param_dims: Dims, need: tuple[bool, bool, bool],
             fixed_stats: bool = False) -> tuple[Tensor | None, ...]:
    """∂C/∂x, ∂C/∂γ, ∂C/∂β of y = γ ⊙ x̂ + β from δ = ∂C/∂y, μ and σ² from x itself
    (``fixed_stats``: μ and rstd are constants, BatchNorm's running statistics).

    ``reduce_dims``: the axes μ and σ² are taken over; ``param_dims``: the axes γ and β
    are shared across (summed in BP3/BP4). γ is shaped to broadcast against x; the
    parameter gradients come back in that shape (keepdim).
    """
    need_x, need_gamma, need_beta = need
    x_hat = (x - mean) * rstd  # x̂ = (x − μ)·rstd, recomputed, not saved: one pass
    grad_input = grad_gamma = grad_beta = None
    if need_gamma:
        grad_gamma = _sum(delta * x_hat, param_dims)  # y = γ ⊙ x̂ + β  →  BP4: dγ = Σ δ ⊙ x̂
    if need_beta:
        grad_beta = _sum(delta, param_dims)  # y = γ ⊙ x̂ + β  →  BP3: dβ = Σ δ
    if need_x:
        # y = γ ⊙ x̂ + β  →  ∂C/∂x̂ = δ ⊙ γ
        dx_hat = delta * gamma if gamma is not None else delta
        if fixed_stats:  # x̂ = (x − μ)·rstd, μ and rstd constants  →  ∂C/∂x = ∂C/∂x̂ · rstd
            return dx_hat * rstd, grad_gamma, grad_beta
        # x̂ = (x − μ(x))·rstd(x)  →  the two reductions, what is left of the paths
        # through μ and σ², then ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂))
        dx_hat_mean = dx_hat.mean(reduce_dims, keepdim=True)
        dx_hat_x_hat_mean = (dx_hat * x_hat).mean(reduce_dims, keepdim=True)
        grad_input = (dx_hat - dx_hat_mean - x_hat * dx_hat_x_hat_mean) * rstd
    return grad_input, grad_gamma, grad_beta


# ---------------------------------------------------------------- batch norm
def _float32(*tensors: Tensor | None) -> tuple:
    """bfloat16/half tensors in float32: the statistics and reductions run there and the
    result is rounded once, as torch's kernels do."""
    return tuple(t.float() if t is not None and t.dtype in LOW_PRECISION else t
                 for t in tensors)


def _channel_view(t: Tensor | None, ndim: int) -> Tensor | None:
    """A per-channel (C,) tensor as (1, C, 1, ...) to broadcast against (N, C, *)."""
    return None if t is None else t.reshape(1, -1, *([1] * (ndim - 2)))


class BatchNormFunction(BPFunction):
    """y = γ ⊙ (x − μ_B)/√(σ²_B + ε) + β, per channel, statistics over the batch.

    Training (``training=True``): μ_B and σ²_B (biased) are the batch's, over every axis
    but the channel axis; backward, with x̂ the standardised input and δ = ∂C/∂y:
    ∂C/∂β = Σ δ (BP3), ∂C/∂γ = Σ δ ⊙ x̂ (BP4), and
    ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)), ∂C/∂x̂ = δ ⊙ γ, passed down;
    with γ constant per channel this is γ·rstd·(δ − ∂C/∂β/M − x̂ ⊙ ∂C/∂γ/M), M values
    per channel (:func:`batch_norm_bwd`).
    Eval (``training=False``): μ, σ² are the given running statistics, constants, and
    ∂C/∂x = δ ⊙ γ · rstd.

    Batch-first: input (N, C, *), weight, bias, running_mean, running_var (C,); sums and
    means over (0, 2, 3, ...). Returns (output, mean, rstd), the last two (C,) and not
    differentiable: the caller updates running statistics from them. Saves x, mean and
    rstd (torch's batch norm saves the same).
    """

    generate_vmap_rule = True  # autocast: runs in its input's dtype, as torch's batch_norm

    @staticmethod
    def forward(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None,
                training: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        if use_kernel(input):  # bptorch.kernels: the Triton kernel (the file's end)
            return batch_norm_fwd_triton(input, weight, bias, running_mean, running_var,
                                         training, eps)
        if input.dtype in LOW_PRECISION:  # statistics and the affine map in float32, y rounded once
            y, mean, rstd = BatchNormFunction.forward(
                *_float32(input, weight, bias, running_mean, running_var), training, eps)
            return y.to(input.dtype), mean, rstd
        nd = input.dim()
        if training:
            dims = (0, *range(2, nd))
            mean, rstd = stats(input, dims, eps)
        else:
            mean = _channel_view(running_mean, nd)
            rstd = torch.rsqrt(_channel_view(running_var, nd) + eps)
        # one pass over x: y = x · (γ rstd) + (β − μ γ rstd), the scale and shift per channel
        gamma, beta = _channel_view(weight, nd), _channel_view(bias, nd)
        scale = rstd * gamma if gamma is not None else rstd
        shift = -mean * scale
        if beta is not None:
            shift = shift + beta
        if not training:  # fresh tensors, not views of the running statistics
            mean = mean.clone()
        return torch.addcmul(shift, input, scale), mean.flatten(), rstd.flatten()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, weight, bias, _rm, _rv, training, eps = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.training, ctx.eps = training, eps
        ctx.kernel = use_kernel(input)  # the forward's choice, for the backward
        ctx.save_for_backward(input, weight, mean, rstd)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_mean: Tensor, _grad_rstd: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        delta = grad_output
        if ctx.kernel and not torch.is_grad_enabled():  # bptorch.kernels (the file's end)
            return (*batch_norm_bwd_triton(delta, x, mean, rstd, weight, ctx.training,
                                           ctx.needs_input_grad[:3]), None, None, None, None)
        nd = x.dim()
        if ctx.training and torch.is_grad_enabled():  # differentiable, for double backward
            mean, rstd = stats(x, (0, *range(2, nd)), ctx.eps)
        else:
            mean, rstd = _channel_view(mean, nd), _channel_view(rstd, nd)
        need = ctx.needs_input_grad[:3]
        grad_input, grad_weight, grad_bias = batch_norm_bwd(
            *_float32(delta, x, mean, rstd, _channel_view(weight, nd)), ctx.training,
            (need[0], need[1] and weight is not None, need[2]))
        if grad_input is not None:
            grad_input = grad_input.to(x.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.flatten().to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.flatten()
        grads = grad_input, grad_weight, grad_bias, None, None, None, None
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and x̂ to it; batch
            # statistics (training) mix the examples, and the collector raises on them
            kind = "batch_norm" if ctx.training else "batch_norm_eval"
            grads = per_example(kind, ctx, grads, delta, (x - mean) * rstd)
        return grads


# ---------------------------------------------------------------- layer norm
class LayerNormFunction(BPFunction):
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β, statistics over each example's last k axes.

    μ and σ² (biased) are taken over the trailing ``normalized_shape`` axes, one pair per
    example (row); γ and β have shape ``normalized_shape``. Backward, with x̂ the
    standardised input and δ = ∂C/∂y: ∂C/∂β = Σ_rows δ (BP3), ∂C/∂γ = Σ_rows δ ⊙ x̂ (BP4),
    and ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)), ∂C/∂x̂ = δ ⊙ γ, the
    means over each row's normalized axes.

    Batch-first: input (*, *normalized_shape). Returns (output, mean, rstd), mean and
    rstd of shape (*, 1, ..., 1) and not differentiable. Saves x, mean and rstd, as torch.
    """

    generate_vmap_rule = True
    autocast = {"cuda": FLOAT32}  # torch's lists: layer_norm is a float32 op on CUDA

    @staticmethod
    def forward(input: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None,
                bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        if use_kernel(input):  # bptorch.kernels: the Triton kernel (the file's end)
            return layer_norm_fwd_triton(input, normalized_shape, weight, bias, eps)
        dims = tuple(range(input.dim() - len(normalized_shape), input.dim()))
        if input.dtype in (torch.float32, torch.float64):  # in place (speed)
            return layer_norm_fwd(input, dims, eps, weight, bias)
        # bfloat16/half: statistics and the affine map in float32 (μ and rstd kept in float32),
        # y rounded once, as torch's kernels do
        y, mean, rstd = layer_norm_fwd(*_float32(input), dims, eps, *_float32(weight, bias))
        return y.to(input.dtype), mean, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, normalized_shape, weight, bias, eps = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.normalized_shape, ctx.eps = normalized_shape, eps
        ctx.kernel = use_kernel(input)  # the forward's choice, for the backward
        ctx.save_for_backward(input, weight, mean, rstd)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_mean: Tensor, _grad_rstd: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        delta = grad_output
        k = len(ctx.normalized_shape)
        reduce_dims = tuple(range(x.dim() - k, x.dim()))  # each row's normalized axes
        row_dims = tuple(range(x.dim() - k))  # γ and β are shared across rows
        if torch.is_grad_enabled():
            mean, rstd = stats(x, reduce_dims, ctx.eps)  # differentiable, for double backward
        need = ctx.needs_input_grad
        need = (need[0], need[2] and weight is not None, need[3])
        if torch.is_grad_enabled():  # double backward: the out-of-place reference form
            grad_input, grad_weight, grad_bias = norm_bwd(
                delta, x, mean, rstd, weight, reduce_dims, row_dims, need)
        elif ctx.kernel:  # bptorch.kernels: the Triton kernel (the file's end)
            grad_input, grad_weight, grad_bias = layer_norm_bwd_triton(
                delta, x, mean, rstd, weight, k, need)
        elif x.dtype in (torch.float32, torch.float64):  # the in-place form (speed)
            grad_input, grad_weight, grad_bias = layer_norm_bwd(
                delta, x, mean, rstd, weight, reduce_dims, need)
        else:  # bfloat16/half: the reductions in float32, rounded once at the end, as torch
            grads = layer_norm_bwd(*_float32(delta, x, mean, rstd, weight), reduce_dims, need)
            grad_input, grad_weight, grad_bias = (
                None if g is None else g.to(t.dtype)
                for g, t in zip(grads, (x, weight if weight is not None else x, x)))
        if grad_weight is not None:
            grad_weight = grad_weight.reshape(weight.shape)
        if grad_bias is not None:
            grad_bias = grad_bias.reshape(ctx.normalized_shape)
        grads = grad_input, None, grad_weight, grad_bias, None
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and x̂ (γ's a^{l-1}) to it
            grads = per_example("layer_norm", ctx, grads, delta, (x - mean) * rstd)
        return grads


# ---------------------------------------------------------------- group and instance norm
def _group_view(t: Tensor, num_groups: int) -> Tensor:
    """(N, C, *) as (N, G, C/G, S), S the number of spatial positions: each (example, group)
    is then axes (2, 3), and a per-channel γ broadcasts as (1, G, C/G, 1)."""
    n, c = t.shape[:2]
    s = 1
    for k in t.shape[2:]:
        s *= k  # not -1: a tensor with no values has no single size for it
    return t.reshape(n, num_groups, c // num_groups, s)


def _group_param(t: Tensor | None, num_groups: int) -> Tensor | None:
    """A per-channel (C,) γ or β as (1, G, C/G, 1), to broadcast against :func:`_group_view`."""
    return None if t is None else t.reshape(1, num_groups, -1, 1)


GROUP_DIMS = (2, 3)  # of the (N, G, C/G, S) view: the statistics, one pair per (n, g)
SHARED_DIMS = (0, 3)  # of the same view: γ and β are per channel, shared over n and s


class GroupNormFunction(BPFunction):
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β, statistics per example and group of channels,
    γ and β per channel.

    The C channels of (N, C, *) fall into G groups of C/G; μ and σ² (biased) are each
    (example, group)'s, over its C/G channels and every spatial position. Seen as
    (N, G, C/G, S), S spatial positions, that is the reference pair :func:`norm_fwd` /
    :func:`norm_bwd` with the statistics over axes (2, 3) and γ, β as (1, G, C/G, 1),
    shared across axes (0, 3). Backward, with x̂ the standardised input and δ = ∂C/∂y:

        ∂C/∂β_c = Σ_{n,s} δ                  (BP3)
        ∂C/∂γ_c = Σ_{n,s} δ ⊙ x̂              (BP4)
        ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)),  ∂C/∂x̂ = δ ⊙ γ,

    the means over each (example, group). ``num_groups=None`` is one channel per group,
    InstanceNorm's statistics (per example and channel, over the spatial axes).

    Batch-first: input (N, C, *), weight and bias (C,). Returns (output, mean, rstd),
    mean and rstd (N, G) and not differentiable (InstanceNorm's running statistics are
    updated from them). Saves x, γ, mean and rstd, as torch's group norm.
    """

    generate_vmap_rule = True

    @classmethod
    def autocast_policy(cls, device_type: str, args: tuple) -> str | None:
        # torch's lists: group_norm is a float32 op on CUDA, instance_norm on neither list
        return FLOAT32 if device_type == "cuda" and args[1] is not None else None

    @staticmethod
    def forward(input: Tensor, num_groups: int | None, weight: Tensor | None,
                bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        g = input.shape[1] if num_groups is None else num_groups
        # bfloat16/half: statistics and the affine map in float32 (μ and rstd kept in
        # float32), y rounded once, as torch's kernels do
        x, weight, bias = _float32(input, weight, bias)
        x = _group_view(x, g)
        mean, rstd = stats(x, GROUP_DIMS, eps)
        y = norm_fwd(x, mean, rstd, _group_param(weight, g), _group_param(bias, g))
        y = y.reshape(input.shape).to(input.dtype)
        if num_groups is None:  # torch's instance_norm runs on a contiguous copy: its strides
            y = y.contiguous()
        n = input.shape[0]
        return y, mean.reshape(n, g), rstd.reshape(n, g)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, num_groups, weight, bias, eps = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.num_groups = input.shape[1] if num_groups is None else num_groups
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, weight, mean, rstd)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_mean: Tensor, _grad_rstd: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        g = ctx.num_groups
        delta, x4 = _group_view(grad_output, g), _group_view(x, g)
        if torch.is_grad_enabled():  # differentiable, for double backward
            mean, rstd = stats(_float32(x4)[0], GROUP_DIMS, ctx.eps)
        else:
            mean, rstd = mean.reshape(*mean.shape, 1, 1), rstd.reshape(*rstd.shape, 1, 1)
        need = ctx.needs_input_grad
        need = (need[0], need[2] and weight is not None, need[3])
        # y = γ ⊙ x̂ + β on the (N, G, C/G, S) view  →  norm_bwd: BP3 dβ = Σ δ and BP4
        # dγ = Σ δ ⊙ x̂ over (n, s), ∂C/∂x through μ and σ² of each (n, g) over (c, s).
        # bfloat16/half: the reductions in float32, each gradient rounded once, as torch
        grad_input, grad_weight, grad_bias = norm_bwd(
            *_float32(delta, x4, mean, rstd, _group_param(weight, g)), GROUP_DIMS,
            SHARED_DIMS, need)
        if grad_input is not None:
            grad_input = grad_input.reshape(x.shape).to(x.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.reshape(weight.shape).to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.reshape(x.shape[1]).to(ctx.bias_dtype)
        grads = grad_input, None, grad_weight, grad_bias, None
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and x̂ (γ's a^{l-1}) to
            # it; the statistics are each example's own, so its δ_n are its own
            x_hat = ((_float32(x4)[0] - mean) * rstd).reshape(x.shape)
            grads = per_example("group_norm", ctx, grads, grad_output, x_hat)
        return grads


# ---------------------------------------------------------------- running statistics
@torch.no_grad()
def update_running_stats(running_mean: Tensor | None, running_var: Tensor | None,
                         mean: Tensor, rstd: Tensor, eps: float, n: int,
                         momentum: float) -> None:
    """r ← (1 − m) r + m s, with the batch's μ and its *unbiased* variance σ²·n/(n − 1)
    (n values per channel), as torch; in place, outside autograd.

    InstanceNorm's statistics, one per example and channel ((N, C) ``mean`` and ``rstd``,
    n values each), enter averaged over the N examples, as torch averages them."""
    if use_kernel(mean) and (running_mean is None or mean.numel() == running_mean.numel()):
        # bptorch.kernels: the Triton kernel (the file's end), for one statistic per channel
        return update_running_stats_triton(running_mean, running_var, mean, rstd, eps, n,
                                           momentum)
    if running_mean is not None:
        mean = mean.reshape(-1, running_mean.numel()).mean(0)  # (C,) as it is; (N, C): mean_n
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        var = rstd.double().pow(-2) - eps  # the biased σ²_B the forward used
        unbiased = (var * (n / (n - 1))).reshape(-1, running_var.numel()).mean(0)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


# ---------------------------------------------------------------- fast variants
# The default paths. Each computes what norm_fwd/norm_bwd compute, in fewer passes over
# memory; tests/test_normalization.py compares each with the reference at every test
# shape. Double backward (create_graph=True) takes the reference instead.
def batch_norm_bwd(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                   gamma: Tensor | None, batch_stats: bool,
                   need: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """:func:`norm_bwd` for BatchNorm, where γ is per channel, constant over the reduced
    axes: mean(∂C/∂x̂) = γ Σδ/M and mean(∂C/∂x̂ ⊙ x̂) = γ Σδ⊙x̂/M are γ/M times BP3's and
    BP4's sums, so

        ∂C/∂x = γ · rstd · (δ − ∂C/∂β / M − x̂ ⊙ ∂C/∂γ / M),

    M values per channel. ``batch_stats`` False (running statistics, constants):
    ∂C/∂x = γ · rstd · δ. Tensors broadcast as (1, C, 1, ...); gradients keep that shape.
    """
    need_x, need_gamma, need_beta = need
    dims = (0, *range(2, x.dim()))  # every axis but the channels
    scale = rstd * gamma if gamma is not None else rstd  # γ · rstd, per channel
    grad_input = grad_gamma = grad_beta = None
    if need_gamma or (need_x and batch_stats):
        x_hat = torch.addcmul(-mean * rstd, x, rstd)  # (x − μ)·rstd, recomputed, not saved
        grad_gamma = (delta * x_hat).sum(dims, keepdim=True)  # BP4: ∂C/∂γ = Σ δ ⊙ x̂
        grad_beta = delta.sum(dims, keepdim=True)  # BP3: ∂C/∂β = Σ δ
    elif need_beta:
        grad_beta = delta.sum(dims, keepdim=True)  # BP3
    if need_x:
        if batch_stats:
            m = x.numel() // x.shape[1]
            # the paths through μ and σ²: BP3's and BP4's sums, averaged over the M values;
            # γ·rstd·(δ − ∂C/∂β/M − x̂ ⊙ ∂C/∂γ/M) as two fused multiply-adds (two passes)
            grad_input = torch.addcmul(
                torch.addcmul(-scale * grad_beta / m, x_hat, -scale * grad_gamma / m),
                delta, scale)
        else:
            grad_input = delta * scale  # fixed statistics: the affine map's backward
    return (grad_input, grad_gamma if need_gamma else None,
            grad_beta if need_beta else None)


def layer_norm_fwd(x: Tensor, dims: Dims, eps: float, gamma: Tensor | None,
                   beta: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(y, μ, rstd) of y = γ ⊙ (x − μ)·rstd + β over each row's ``dims`` (the trailing axes).

    σ² = ‖x − μ‖²/D, D values per row, as a 2-norm reduction (one read, nothing written).
    One full-size buffer, x − μ, then x̂, then y, updated in place: on the CPU a fresh
    large tensor costs about as much as a pass over it (torch.profiler, 1 thread). The
    2-norm has a kink at a constant row, so the backward's double-differentiable
    recomputation of μ and rstd uses :func:`stats`.
    """
    d = 1
    for k in dims:
        d *= x.shape[k]
    mean = x.mean(dims, keepdim=True)
    y = x - mean  # the one full-size buffer
    var = torch.linalg.vector_norm(y, 2, dims, keepdim=True).square() / d  # ‖x − μ‖²/D
    rstd = torch.rsqrt(var + eps)
    y.mul_(rstd)  # x̂ = (x − μ)·rstd
    if gamma is not None:
        y.mul_(gamma)
    if beta is not None:
        y.add_(beta)
    return y, mean, rstd


# values of a LayerNorm backward taken together on the CPU, in whole rows (see
# layer_norm_bwd): 512 KB of float32 per tensor
BLOCK_ELEMENTS = 128 * 1024


def layer_norm_bwd(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                   gamma: Tensor | None, reduce_dims: Dims,
                   need: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """:func:`norm_bwd` for LayerNorm, with x̂ = (x − μ)·rstd and rstd per row, γ along
    the row: ∂C/∂γ and the second row mean are matrix-vector products (read-only) with
    P = δ ⊙ (x − μ), rows by D:

        ∂C/∂β = Σ_rows δ                                       (BP3)
        ∂C/∂γ = Σ_rows δ ⊙ x̂ = Pᵀ rstd                         (BP4)
        mean(∂C/∂x̂ ⊙ x̂) = rstd · (P γ)/D

    then ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)) built in place in
    ∂C/∂x̂'s buffer. mean(∂C/∂x̂) is taken from that same buffer, so that
    ∂C/∂x̂ − mean(∂C/∂x̂) is exactly 0 where it should be (one value per row). In place,
    so not for double backward: there the caller uses :func:`norm_bwd`.

    Every row is independent but for the two sums over rows, so on the CPU the rows go
    through :func:`_layer_norm_bwd_rows` a block at a time, ``BLOCK_ELEMENTS`` values (at
    least one row) per block: each block's tensors stay in cache across its nine passes,
    where the whole tensor would be read from memory nine times. On other devices, and
    when compiling, all rows at once.
    """
    need_x, need_gamma, need_beta = need
    d = 1
    for k in reduce_dims:
        d *= x.shape[k]
    rows = rstd.numel()
    x2, delta2 = x.reshape(rows, d), delta.reshape(rows, d)
    mean2, rstd2 = mean.reshape(rows, 1), rstd.reshape(rows, 1)
    g = None if gamma is None else gamma.reshape(d)
    grad_gamma = x2.new_zeros(d) if need_gamma else None
    grad_beta = delta2.sum(0) if need_beta else None  # BP3: ∂C/∂β = Σ δ
    if not (need_x or need_gamma):
        return None, grad_gamma, grad_beta
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        grad_input = _layer_norm_bwd_rows(delta2, x2, mean2, rstd2, g, need_x, grad_gamma)
    else:
        grad_input = torch.empty_like(x2) if need_x else None
        block = max(1, BLOCK_ELEMENTS // max(d, 1))
        for i in range(0, rows, block):
            rows_i = slice(i, i + block)
            _layer_norm_bwd_rows(delta2[rows_i], x2[rows_i], mean2[rows_i], rstd2[rows_i], g,
                                 need_x, grad_gamma,
                                 None if grad_input is None else grad_input[rows_i])
    return (None if grad_input is None else grad_input.view(x.shape), grad_gamma, grad_beta)


def _layer_norm_bwd_rows(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                         gamma: Tensor | None, need_x: bool, grad_gamma: Tensor | None,
                         out: Tensor | None = None) -> Tensor | None:
    """:func:`layer_norm_bwd` on rows by D: adds these rows' share of ∂C/∂γ to
    ``grad_gamma`` and returns ∂C/∂x (if ``need_x``), written into ``out`` if given,
    else into P's buffer (read for the last time by then)."""
    centred = x - mean  # x − μ, recomputed, not saved
    p = centred * delta  # P = δ ⊙ (x − μ)
    if grad_gamma is not None:
        grad_gamma.addmv_(p.t(), rstd.view(-1))  # BP4: ∂C/∂γ += Pᵀ rstd, these rows
    if not need_x:
        return None
    p_gamma = p @ gamma if gamma is not None else p.sum(1)  # P γ, one value per row
    dx_hat_x_hat_mean = rstd * p_gamma.view(-1, 1) / x.shape[1]  # mean(∂C/∂x̂ ⊙ x̂)
    out = p if out is None else out
    dx_hat = (torch.mul(delta, gamma, out=out) if gamma is not None
              else out.copy_(delta))  # ∂C/∂x̂ = δ ⊙ γ
    dx_hat.sub_(dx_hat.mean(1, keepdim=True))  # − mean(∂C/∂x̂)
    dx_hat.addcmul_(centred, rstd * -dx_hat_x_hat_mean)  # − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂)
    return dx_hat.mul_(rstd)  # ∂C/∂x


__all__ = ["BLOCK_ELEMENTS", "BatchNormFunction", "GroupNormFunction", "LayerNormFunction",
           "batch_norm_bwd",
           "layer_norm_bwd", "layer_norm_fwd", "norm_bwd", "norm_fwd", "stats",
           "update_running_stats"]

# moved out of this file (one release): the input checks
__getattr__ = moved(__name__, {"check_batch_norm": "bptorch._checks",
                               "check_layer_norm": "bptorch._checks"})


# ---------------------------------------------------------------- Triton kernels
# The same equations as norm_fwd/norm_bwd, one launch each way where the reference
# launches about ten (bptorch.kernels picks them: "triton", or "auto" on CUDA). The
# kernels are built on first use (:func:`_triton_kernels`), so importing this file does
# not import triton. Each program reads whole rows (LayerNorm) or a whole channel
# (BatchNorm) in blocks of a power of two, masked at the end; the arithmetic runs in
# float32 (float64 for float64 inputs). tests/test_kernels.py runs each through Triton's
# interpreter against the reference and torch.nn.


def _build_triton_kernels() -> dict[str, Any]:
    """Each kernel's custom op by name (run once, on first use: :func:`base.kernel_family`)."""
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    from .base import count_launch, kernel_op

    @triton.jit
    def layer_norm_fwd_kernel(x_ptr, gamma_ptr, beta_ptr, y_ptr, mean_ptr, rstd_ptr, D, eps,
                              HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
        """One row: μ = Σx/D, σ² = Σ(x − μ)²/D, rstd = 1/√(σ² + ε),
        x̂ = (x − μ)·rstd, y = γ ⊙ x̂ + β; saves μ and rstd for the backward."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(ACC)
        mean = tl.sum(x, 0) / D  # μ
        centred = tl.where(mask, x - mean, 0.0)  # x − μ (0 past the row's end)
        var = tl.sum(centred * centred, 0) / D  # σ², biased, two passes
        rstd = 1.0 / tl.sqrt(var + eps)  # rstd = 1/√(σ² + ε)
        y = centred * rstd  # x̂ = (x − μ)·rstd
        if HAS_GAMMA:
            y = y * tl.load(gamma_ptr + cols, mask=mask, other=0.0).to(ACC)  # γ ⊙ x̂
        if HAS_BETA:
            y = y + tl.load(beta_ptr + cols, mask=mask, other=0.0).to(ACC)  # + β
        tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + row, mean)  # saved for the backward, as torch saves them
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def layer_norm_bwd_kernel(delta_ptr, x_ptr, mean_ptr, rstd_ptr, gamma_ptr, dx_ptr,
                              dgamma_ptr, dbeta_ptr, n_rows, D, rows_per_program,
                              HAS_GAMMA: tl.constexpr, NEED_X: tl.constexpr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
        """Rows [pid·r, (pid+1)·r): ∂C/∂x per row, and this program's partial sums of
        ∂C/∂γ = Σ δ ⊙ x̂ and ∂C/∂β = Σ δ, one row of the (programs, D) buffers each."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        if HAS_GAMMA:
            gamma = tl.load(gamma_ptr + cols, mask=mask, other=0.0).to(ACC)
        dgamma = tl.zeros((BLOCK,), dtype=ACC)
        dbeta = tl.zeros((BLOCK,), dtype=ACC)
        start = pid.to(tl.int64) * rows_per_program  # int64: row · D may pass 2³¹
        end = tl.minimum(start + rows_per_program, n_rows)
        for row in range(start, end):
            offs = row * D + cols
            delta = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(ACC)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
            mean = tl.load(mean_ptr + row).to(ACC)
            rstd = tl.load(rstd_ptr + row).to(ACC)
            x_hat = tl.where(mask, (x - mean) * rstd, 0.0)  # x̂ = (x − μ)·rstd, recomputed
            dgamma += delta * x_hat  # y = γ ⊙ x̂ + β  →  BP4: dγ = Σ δ ⊙ x̂
            dbeta += delta  # y = γ ⊙ x̂ + β  →  BP3: dβ = Σ δ
            if NEED_X:
                if HAS_GAMMA:
                    dx_hat = delta * gamma  # y = γ ⊙ x̂ + β  →  ∂C/∂x̂ = δ ⊙ γ
                else:
                    dx_hat = delta
                # x̂ = (x − μ(x))·rstd(x)  →  the two reductions (paths through μ and σ²)
                dx_hat_mean = tl.sum(dx_hat, 0) / D  # mean(∂C/∂x̂)
                dx_hat_x_hat_mean = tl.sum(dx_hat * x_hat, 0) / D  # mean(∂C/∂x̂ ⊙ x̂)
                # ∂C/∂x = rstd·(∂C/∂x̂ − mean(∂C/∂x̂) − x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂))
                dx = (dx_hat - dx_hat_mean - x_hat * dx_hat_x_hat_mean) * rstd
                tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dgamma_ptr + pid * D + cols, dgamma, mask=mask)
        tl.store(dbeta_ptr + pid * D + cols, dbeta, mask=mask)

    def _fake_fwd(x, gamma, beta, eps):
        rows = x.shape[0]
        acc = _acc_dtype(x)
        return torch.empty_like(x), x.new_empty(rows, dtype=acc), x.new_empty(rows, dtype=acc)

    @kernel_op("layer_norm_fwd", _fake_fwd)
    def layer_norm_fwd_op(x: Tensor, gamma: Tensor | None, beta: Tensor | None,
                          eps: float) -> tuple[Tensor, Tensor, Tensor]:
        rows, d = x.shape
        acc = _acc_dtype(x)
        y = torch.empty_like(x)
        mean, rstd = x.new_empty(rows, dtype=acc), x.new_empty(rows, dtype=acc)
        count_launch("layer_norm_fwd")
        wrap_triton(layer_norm_fwd_kernel)[(rows,)](
            x, gamma if gamma is not None else x, beta if beta is not None else x, y, mean,
            rstd, d, eps, HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None,
            ACC=_TL_ACC[acc], BLOCK=triton.next_power_of_2(d))
        return y, mean, rstd

    def _fake_bwd(delta, x, mean, rstd, gamma, need_x, programs):
        d = x.shape[1]
        acc = _acc_dtype(x)
        return (torch.empty_like(x), x.new_empty(programs, d, dtype=acc),
                x.new_empty(programs, d, dtype=acc))

    @kernel_op("layer_norm_bwd", _fake_bwd)
    def layer_norm_bwd_op(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                          gamma: Tensor | None, need_x: bool,
                          programs: int) -> tuple[Tensor, Tensor, Tensor]:
        rows, d = x.shape
        acc = _acc_dtype(x)
        dx = torch.empty_like(x)
        dgamma = x.new_empty(programs, d, dtype=acc)  # per-program partial sums
        dbeta = x.new_empty(programs, d, dtype=acc)
        count_launch("layer_norm_bwd")
        wrap_triton(layer_norm_bwd_kernel)[(programs,)](
            delta, x, mean, rstd, gamma if gamma is not None else x, dx, dgamma, dbeta,
            rows, d, triton.cdiv(rows, programs), HAS_GAMMA=gamma is not None,
            NEED_X=need_x, ACC=_TL_ACC[acc], BLOCK=triton.next_power_of_2(d))
        return dx, dgamma, dbeta

    @triton.jit
    def batch_norm_fwd_kernel(x_ptr, gamma_ptr, beta_ptr, rm_ptr, rv_ptr, y_ptr, mean_ptr,
                              rstd_ptr, C, S, M, eps, TRAINING: tl.constexpr,
                              HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
        """One channel c of x (N, C, S), M = N·S values: μ_B = Σx/M and
        σ²_B = Σ(x − μ_B)²/M in training (else the running statistics), rstd = 1/√(σ² + ε),
        then y = x · (γ rstd) + (β − μ γ rstd); saves μ and rstd."""
        c = tl.program_id(0).to(tl.int64)
        k = tl.arange(0, BLOCK)
        if TRAINING:
            acc = tl.zeros((BLOCK,), dtype=ACC)
            for i in range(0, M, BLOCK):  # pass 1: Σx
                idx = i + k
                offs = (idx // S) * C * S + c * S + idx % S  # x[n, c, s], idx = n·S + s
                acc += tl.load(x_ptr + offs, mask=idx < M, other=0.0).to(ACC)
            mean = tl.sum(acc, 0) / M  # μ_B
            acc = tl.zeros((BLOCK,), dtype=ACC)
            for i in range(0, M, BLOCK):  # pass 2: Σ(x − μ_B)², two passes as the reference
                idx = i + k
                offs = (idx // S) * C * S + c * S + idx % S
                x = tl.load(x_ptr + offs, mask=idx < M, other=0.0).to(ACC)
                centred = tl.where(idx < M, x - mean, 0.0)
                acc += centred * centred
            rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / M + eps)  # rstd = 1/√(σ²_B + ε)
        else:  # eval: the running statistics, constants
            mean = tl.load(rm_ptr + c).to(ACC)
            rstd = 1.0 / tl.sqrt(tl.load(rv_ptr + c).to(ACC) + eps)
        scale = rstd  # γ · rstd
        if HAS_GAMMA:
            scale = scale * tl.load(gamma_ptr + c).to(ACC)
        shift = -mean * scale  # β − μ γ rstd
        if HAS_BETA:
            shift = shift + tl.load(beta_ptr + c).to(ACC)
        for i in range(0, M, BLOCK):  # pass 3: y = γ ⊙ x̂ + β = x · scale + shift
            idx = i + k
            offs = (idx // S) * C * S + c * S + idx % S
            x = tl.load(x_ptr + offs, mask=idx < M, other=0.0).to(ACC)
            tl.store(y_ptr + offs, (x * scale + shift).to(y_ptr.dtype.element_ty), mask=idx < M)
        tl.store(mean_ptr + c, mean)
        tl.store(rstd_ptr + c, rstd)

    @triton.jit
    def batch_norm_bwd_kernel(delta_ptr, x_ptr, mean_ptr, rstd_ptr, gamma_ptr, dx_ptr,
                              dgamma_ptr, dbeta_ptr, C, S, M, BATCH_STATS: tl.constexpr,
                              HAS_GAMMA: tl.constexpr, NEED_X: tl.constexpr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
        """One channel c: ∂C/∂β = Σ δ and ∂C/∂γ = Σ δ ⊙ x̂ (pass 1), then
        ∂C/∂x = γ rstd (δ − ∂C/∂β/M − x̂ ⊙ ∂C/∂γ/M) (pass 2; γ rstd δ for fixed statistics)."""
        c = tl.program_id(0).to(tl.int64)
        k = tl.arange(0, BLOCK)
        mean = tl.load(mean_ptr + c).to(ACC)
        rstd = tl.load(rstd_ptr + c).to(ACC)
        dgamma = tl.zeros((BLOCK,), dtype=ACC)
        dbeta = tl.zeros((BLOCK,), dtype=ACC)
        for i in range(0, M, BLOCK):
            idx = i + k
            offs = (idx // S) * C * S + c * S + idx % S
            delta = tl.load(delta_ptr + offs, mask=idx < M, other=0.0).to(ACC)
            x = tl.load(x_ptr + offs, mask=idx < M, other=0.0).to(ACC)
            x_hat = tl.where(idx < M, (x - mean) * rstd, 0.0)  # x̂ = (x − μ)·rstd, recomputed
            dgamma += delta * x_hat  # y = γ ⊙ x̂ + β  →  BP4: dγ = Σ δ ⊙ x̂
            dbeta += delta  # y = γ ⊙ x̂ + β  →  BP3: dβ = Σ δ
        dgamma_c = tl.sum(dgamma, 0)
        dbeta_c = tl.sum(dbeta, 0)
        tl.store(dgamma_ptr + c, dgamma_c)
        tl.store(dbeta_ptr + c, dbeta_c)
        if NEED_X:
            scale = rstd  # γ · rstd
            if HAS_GAMMA:
                scale = scale * tl.load(gamma_ptr + c).to(ACC)
            for i in range(0, M, BLOCK):
                idx = i + k
                offs = (idx // S) * C * S + c * S + idx % S
                delta = tl.load(delta_ptr + offs, mask=idx < M, other=0.0).to(ACC)
                if BATCH_STATS:
                    x = tl.load(x_ptr + offs, mask=idx < M, other=0.0).to(ACC)
                    x_hat = (x - mean) * rstd
                    # x̂ = (x − μ(x))·rstd(x)  →  the paths through μ and σ²: BP3's and BP4's
                    # sums over M; ∂C/∂x = γ rstd (δ − ∂C/∂β/M − x̂ ⊙ ∂C/∂γ/M)
                    dx = scale * (delta - dbeta_c / M - x_hat * (dgamma_c / M))
                else:  # fixed statistics: the affine map's backward, ∂C/∂x = γ rstd δ
                    dx = scale * delta
                tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=idx < M)

    @triton.jit
    def running_stats_kernel(rm_ptr, rv_ptr, mean_ptr, rstd_ptr, C, eps, momentum, unbias,
                             HAS_RM: tl.constexpr, HAS_RV: tl.constexpr, BLOCK: tl.constexpr):
        """r ← (1 − m) r + m s: s = μ_B for the mean, σ²_B · n/(n − 1) = (1/rstd² − ε) · unbias
        for the variance (unbiased, as torch); in float64, as the reference."""
        c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = c < C
        if HAS_RM:
            rm = tl.load(rm_ptr + c, mask=mask, other=0.0).to(tl.float64)
            mean = tl.load(mean_ptr + c, mask=mask, other=0.0).to(tl.float64)
            rm = (1 - momentum) * rm + momentum * mean
            tl.store(rm_ptr + c, rm.to(rm_ptr.dtype.element_ty), mask=mask)
        if HAS_RV:
            rv = tl.load(rv_ptr + c, mask=mask, other=0.0).to(tl.float64)
            rstd = tl.load(rstd_ptr + c, mask=mask, other=1.0).to(tl.float64)
            var = 1.0 / (rstd * rstd) - eps  # the biased σ²_B the forward used
            rv = (1 - momentum) * rv + momentum * (var * unbias)
            tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty), mask=mask)

    def _fake_bn_fwd(x, gamma, beta, running_mean, running_var, training, eps):
        acc = _acc_dtype(x)
        c = x.shape[1]
        return torch.empty_like(x), x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)

    @kernel_op("batch_norm_fwd", _fake_bn_fwd)
    def batch_norm_fwd_op(x: Tensor, gamma: Tensor | None, beta: Tensor | None,
                          running_mean: Tensor | None, running_var: Tensor | None,
                          training: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        n, c, s = x.shape
        acc = _acc_dtype(x)
        y = torch.empty_like(x)
        mean, rstd = x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)
        count_launch("batch_norm_fwd")
        wrap_triton(batch_norm_fwd_kernel)[(c,)](
            x, x if gamma is None else gamma, x if beta is None else beta,
            x if running_mean is None else running_mean,
            x if running_var is None else running_var, y, mean, rstd, c, s, n * s, eps,
            TRAINING=training, HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None,
            ACC=_TL_ACC[acc], BLOCK=min(1024, triton.next_power_of_2(n * s)))
        return y, mean, rstd

    def _fake_bn_bwd(delta, x, mean, rstd, gamma, batch_stats, need_x):
        acc = _acc_dtype(x)
        c = x.shape[1]
        return torch.empty_like(x), x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)

    @kernel_op("batch_norm_bwd", _fake_bn_bwd)
    def batch_norm_bwd_op(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                          gamma: Tensor | None, batch_stats: bool,
                          need_x: bool) -> tuple[Tensor, Tensor, Tensor]:
        n, c, s = x.shape
        acc = _acc_dtype(x)
        dx = torch.empty_like(x)
        dgamma, dbeta = x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)
        count_launch("batch_norm_bwd")
        wrap_triton(batch_norm_bwd_kernel)[(c,)](
            delta, x, mean, rstd, x if gamma is None else gamma, dx, dgamma, dbeta, c, s,
            n * s, BATCH_STATS=batch_stats, HAS_GAMMA=gamma is not None, NEED_X=need_x,
            ACC=_TL_ACC[acc], BLOCK=min(1024, triton.next_power_of_2(n * s)))
        return dx, dgamma, dbeta

    def _fake_running(running_mean, running_var, mean, rstd, eps, momentum, unbias):
        return None

    @kernel_op("running_stats", _fake_running, mutates_args=("running_mean", "running_var"))
    def running_stats_op(running_mean: Tensor | None, running_var: Tensor | None,
                         mean: Tensor, rstd: Tensor, eps: float, momentum: float,
                         unbias: float) -> None:
        c = mean.numel()
        count_launch("running_stats")
        wrap_triton(running_stats_kernel)[(triton.cdiv(c, 256),)](
            mean if running_mean is None else running_mean,
            mean if running_var is None else running_var, mean, rstd, c, eps, momentum,
            unbias, HAS_RM=running_mean is not None, HAS_RV=running_var is not None,
            BLOCK=256)

    _TL_ACC.update({torch.float32: tl.float32, torch.float64: tl.float64})
    return dict(layer_norm_fwd=layer_norm_fwd_op, layer_norm_bwd=layer_norm_bwd_op,
                batch_norm_fwd=batch_norm_fwd_op, batch_norm_bwd=batch_norm_bwd_op,
                running_stats=running_stats_op)


_triton_kernels = kernel_family(_build_triton_kernels)


# the longest LayerNorm row a kernel program holds in one block; longer rows (rare) take
# the reference
MAX_ROW = 65536
_TL_ACC: dict[torch.dtype, Any] = {}  # torch dtype -> triton's, filled with the kernels


def _acc_dtype(x: Tensor) -> torch.dtype:
    """The kernels' arithmetic dtype: float64 for float64, float32 otherwise (as torch's)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _programs(rows: int) -> int:
    """Programs of a backward with per-program partial sums: about 4 rows each, at most
    1024 (the partial sums, programs by D, are then reduced by one sum over programs)."""
    return max(1, min(1024, (rows + 3) // 4))


def layer_norm_fwd_triton(x: Tensor, normalized_shape: tuple[int, ...], gamma: Tensor | None,
                          beta: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`layer_norm_fwd` in one kernel: (y, μ, rstd), μ and rstd shaped as the
    reference's (*, 1, ..., 1)."""
    k = len(normalized_shape)
    d = math.prod(normalized_shape)
    if d > MAX_ROW:  # a row past one block: the reference
        y, mean, rstd = layer_norm_fwd(*_float32(x), tuple(range(x.dim() - k, x.dim())), eps,
                                       *_float32(gamma, beta))
        return y.to(x.dtype), mean, rstd
    x2 = x.reshape(-1, d).contiguous()
    y, mean, rstd = _triton_kernels()["layer_norm_fwd"](
        x2, None if gamma is None else gamma.reshape(d).contiguous(),
        None if beta is None else beta.reshape(d).contiguous(), eps)
    stat_shape = (*x.shape[:x.dim() - k], *([1] * k))
    return y.view(x.shape), mean.view(stat_shape), rstd.view(stat_shape)


def layer_norm_bwd_triton(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                          gamma: Tensor | None, k: int,
                          need: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """:func:`norm_bwd` for LayerNorm in one kernel, then the per-program partial sums of
    ∂C/∂γ and ∂C/∂β reduced over programs (one small sum each)."""
    d = math.prod(x.shape[x.dim() - k:])
    if d > MAX_ROW:  # a row past one block: the reference
        grads = layer_norm_bwd(*_float32(delta, x, mean, rstd, gamma),
                               tuple(range(x.dim() - k, x.dim())), need)
        return tuple(None if g is None else g.to(t.dtype)
                     for g, t in zip(grads, (x, gamma if gamma is not None else x, x)))
    x2, delta2 = x.reshape(-1, d).contiguous(), delta.reshape(-1, d).contiguous()
    programs = _programs(x2.shape[0])
    dx, dgamma, dbeta = _triton_kernels()["layer_norm_bwd"](
        delta2, x2, mean.reshape(-1).contiguous(), rstd.reshape(-1).contiguous(),
        None if gamma is None else gamma.reshape(d).contiguous(), need[0], programs)
    return (dx.view(x.shape) if need[0] else None,
            dgamma.sum(0).to(gamma.dtype) if need[1] else None,  # BP4's partial sums, reduced
            dbeta.sum(0).to(delta.dtype) if need[2] else None)  # BP3's partial sums, reduced


def batch_norm_fwd_triton(x: Tensor, gamma: Tensor | None, beta: Tensor | None,
                          running_mean: Tensor | None, running_var: Tensor | None,
                          training: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:class:`BatchNormFunction`'s forward in one kernel: (y, μ, rstd), μ and rstd (C,)."""
    x3 = x.reshape(x.shape[0], x.shape[1], -1).contiguous()  # (N, C, S)
    y, mean, rstd = _triton_kernels()["batch_norm_fwd"](
        x3, gamma, beta, running_mean, running_var, training, eps)
    return y.view(x.shape), mean, rstd


def batch_norm_bwd_triton(delta: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                          gamma: Tensor | None, batch_stats: bool,
                          need: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """:func:`batch_norm_bwd` in one kernel; μ and rstd (C,); gradients (C,) and x's shape."""
    x3 = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
    delta3 = delta.reshape(x3.shape).contiguous()
    dx, dgamma, dbeta = _triton_kernels()["batch_norm_bwd"](
        delta3, x3, mean, rstd, gamma, batch_stats, need[0])
    return (dx.view(x.shape) if need[0] else None,
            dgamma.to(gamma.dtype) if need[1] and gamma is not None else None,
            dbeta if need[2] else None)


def update_running_stats_triton(running_mean: Tensor | None, running_var: Tensor | None,
                                mean: Tensor, rstd: Tensor, eps: float, n: int,
                                momentum: float) -> None:
    """:func:`update_running_stats` in one kernel, in place."""
    _triton_kernels()["running_stats"](running_mean, running_var, mean, rstd, eps, momentum,
                                       n / (n - 1))


__all__ += ["batch_norm_bwd_triton", "batch_norm_fwd_triton", "layer_norm_bwd_triton",
            "layer_norm_fwd_triton", "update_running_stats_triton"]
