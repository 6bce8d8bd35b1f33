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
as over examples. ``unfold=True`` runs these lines literally (``unfold``/``fold`` and
matmuls), the reference the tests compare with. The default path writes the same two
sums as convolutions, which is what they are:

* BP2: fold(W_colᵀ δ) is the *transposed* convolution of δ with W (δ spread back over
  the pixels each output position read, weighted by the kernel): ``conv_transpose2d``,
  with the ``output_padding`` that restores rows and columns the stride skipped.
* BP4: Σ_{n,p} δ_{n,o,p} a_{n,c,p·s + t·d} is a correlation of a^{l-1} with δ: a
  ``conv2d`` with the roles swapped (channels as the batch, examples as the channels,
  δ's maps as the kernels), the forward's dilation as its stride and its stride as
  the dilation.

Both are built from differentiable ops, so double backward works. ``fused_backward=True``
opts into ATen's ``convolution_backward`` instead (autograd's own kernel, both sums in
one call): faster on a one-channel first layer, see the README. With groups, input
channels and kernels split into ``groups`` independent convolutions; with dilation
d the kernel taps sit d pixels apart. torch's ``padding="same"`` pads (k−1)·d in all,
the odd one at the bottom/right; that extra row/column is padded explicitly.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import conv2d, conv_transpose2d, fold, max_pool2d, pad, unfold

from .._checks import _shape, check_floating, check_same
from .base import BPFunction
from .layers import _autocast_backward, _autocast_dtype, _cast, _record_autocast

aten = torch.ops.aten
Pair = tuple[int, int]
Padding = Pair | str


# ---------------------------------------------------------------- input checks
def check_4d(name: str, input: Tensor, unbatched: bool = False) -> None:
    """``input`` must be a floating-point (N, C, H, W) (or, if allowed, (C, H, W)) tensor."""
    check_floating(name, input)
    if input.dim() != 4 and not (unbatched and input.dim() == 3):
        want = "(N, C, H, W) or (C, H, W)" if unbatched else "(N, C, H, W)"
        raise ValueError(
            f"expected {name} of shape {want}, got shape {_shape(input)} "
            f"({input.dim()} dims); reshape flat MNIST rows with {name}.view(-1, 1, 28, 28)"
        )


def conv2d_padding(padding: Padding, kernel_size: Pair, stride: Pair,
                   dilation: Pair) -> tuple[Pair, Pair]:
    """(symmetric padding, extra bottom/right padding) for an int pair or "valid"/"same".

    "same" pads d·(k − 1) in all, as torch: half on each side, the odd one at the
    bottom/right (torch's rule for even kernels); it needs stride 1.
    """
    if not isinstance(padding, str):
        return padding, (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                         f"{{'valid', 'same'}}")
    if stride != (1, 1):
        raise ValueError(f"padding='same' is not supported for strided convolutions "
                         f"(got stride {stride})")
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    sym = (total[0] // 2, total[1] // 2)
    return sym, (total[0] - 2 * sym[0], total[1] - 2 * sym[1])


def check_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair,
                 padding: Padding, dilation: Pair = (1, 1), groups: int = 1) -> None:
    """Shapes, dtypes and devices for z = conv(a_prev, W) + b; reads no values.

    ``input`` may be (N, C_in, H, W) or unbatched (C_in, H, W), as torch.
    """
    check_4d("input", input, unbatched=True)
    check_same("input", input, "weight", weight)
    if weight.dim() != 4:
        raise ValueError(f"expected weight of shape (C_out, C_in / groups, k_h, k_w), "
                         f"got {_shape(weight)}")
    c_out, c_in_g, kh, kw = weight.shape
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be >= 1, got {stride}, {dilation}")
    c_in = input.shape[-3]
    if c_in != c_in_g * groups:
        raise ValueError(
            f"expected input with in_channels={c_in_g * groups} channels "
            f"(weight's {c_in_g} per group × groups={groups}), got {c_in} "
            f"(input shape {_shape(input)}, weight shape {_shape(weight)})"
        )
    if c_out % groups:
        raise ValueError(f"out_channels={c_out} (weight shape {_shape(weight)}) must be "
                         f"divisible by groups={groups}")
    if bias is not None and _shape(bias) != (c_out,):
        raise ValueError(f"expected bias of shape (out_channels={c_out},), got {_shape(bias)}")
    (ph, pw), (eh, ew) = conv2d_padding(padding, (kh, kw), stride, dilation)
    if min(ph, pw) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    h, w = input.shape[-2] + 2 * ph + eh, input.shape[-1] + 2 * pw + ew
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    if span[0] > h or span[1] > w:
        raise ValueError(
            f"kernel size ({kh}, {kw}) (spanning {span} with dilation {dilation}) is larger "
            f"than the padded input ({h}, {w}) (input shape {_shape(input)}, padding {padding})"
        )


def pool2d_out_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size: ⌊(n + 2p − d(k − 1) − 1)/s⌋ + 1, rounded up with
    ``ceil_mode`` unless the last window would start in the right padding."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def check_pool2d(input: Tensor, kernel_size: Pair, stride: Pair, padding: Pair = (0, 0),
                 dilation: Pair = (1, 1), ceil_mode: bool = False) -> None:
    check_4d("input", input, unbatched=True)
    if min(kernel_size) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"kernel_size, stride and dilation must be >= 1, got "
                         f"{kernel_size}, {stride}, {dilation}")
    if min(padding) < 0 or padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"pad should be at most half of kernel size, got padding {padding} "
                         f"for kernel_size {kernel_size}")
    out = tuple(pool2d_out_size(input.shape[i - 2], kernel_size[i], stride[i], padding[i],
                                dilation[i], ceil_mode) for i in (0, 1))
    if min(out) < 1:
        raise ValueError(
            f"pooling window {kernel_size} (dilation {dilation}, padding {padding}) is larger "
            f"than the input maps {_shape(input)[-2:]}: output size {out} "
            f"(input shape {_shape(input)})"
        )


def check_dropout_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must lie in [0, 1], got {p}")
    return p


# ---------------------------------------------------------------- conv2d
def conv2d_unfold_fwd(a_prev: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair,
                      padding: Pair, dilation: Pair, groups: int) -> Tensor:
    """z_col = W_col @ a_col + b: the linear layer on the unfolded patches, per group."""
    n, _, h, w = a_prev.shape
    c_out, _, kh, kw = weight.shape
    a_col = unfold(a_prev, (kh, kw), dilation, padding, stride)  # (N, C·kh·kw, P)
    a_col = a_col.unflatten(1, (groups, -1))  # (N, g, C/g·kh·kw, P)
    w_col = weight.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C/g·kh·kw)
    z_col = (w_col @ a_col).flatten(1, 2)  # (N, C_out, P)
    if bias is not None:
        z_col = z_col + bias[:, None]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return z_col.reshape(n, c_out, oh, ow)


def conv2d_unfold_bwd(ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor,
                      stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """BP3, BP4 and the W_colᵀ δ factor of BP2, literally, on the unfolded patches.

    a_col is recomputed from a_prev rather than saved: it is k_h·k_w times larger.
    """
    n, _, h, w = a_prev.shape
    c_out, _, kh, kw = weight.shape
    delta_col = delta.reshape(n, groups, c_out // groups, -1)  # (N, g, C_out/g, P)
    w_col = weight.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C/g·kh·kw)
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        # W_colᵀ δ per patch, then fold (col2im) sums each patch back onto its pixels (BP2)
        g_col = (w_col.transpose(1, 2) @ delta_col).flatten(1, 2)  # (N, C·kh·kw, P)
        grad_input = fold(g_col, (h, w), (kh, kw), dilation, padding, stride)
    if ctx.needs_input_grad[1]:
        # BP4: ∂C/∂W = Σ_p δ_p a_col,pᵀ, summed over positions and examples
        grad_weight = conv2d_weight_grad_unfold(delta, a_prev, (kh, kw), stride, padding,
                                                dilation, groups)
    if ctx.needs_input_grad[2]:
        grad_bias = delta.sum((0, 2, 3))  # BP3: ∂C/∂b = Σ_p δ_p, over positions and examples
    return grad_input, grad_weight, grad_bias


def conv2d_input_grad(delta: Tensor, weight: Tensor, input_hw: Pair, stride: Pair,
                      padding: Pair, dilation: Pair, groups: int) -> Tensor:
    """(W_col)ᵀ δ folded back onto the pixels: the transposed convolution of δ with W.

    A stride-s convolution skips the last (H + 2p − d(k − 1) − 1) mod s rows; the
    transposed one gives them back as ``output_padding`` (they receive no error).
    """
    out_hw = delta.shape[2:]
    output_padding = tuple(
        n + 2 * p - d * (k - 1) - 1 - (o - 1) * s
        for n, o, k, s, p, d in zip(input_hw, out_hw, weight.shape[2:], stride, padding, dilation)
    )
    return conv_transpose2d(delta, weight, None, stride, padding, output_padding, groups,
                            dilation)


def conv2d_weight_grad_unfold(delta: Tensor, a_prev: Tensor, kernel_size: Pair, stride: Pair,
                              padding: Pair, dilation: Pair, groups: int) -> Tensor:
    """∂C/∂W = Σ_{n,p} δ_{n,p} a_col,n,pᵀ (BP4) literally: one matmul per group over the
    unfolded patches, summing over examples and positions at once. A 1×1 kernel's patches
    are single pixels, so a_col is then the (padded) input read at the stride, no unfold.
    """
    n, c_in, c_out = a_prev.shape[0], a_prev.shape[1], delta.shape[1]
    if tuple(kernel_size) == (1, 1):
        (ph, pw), (sh, sw) = padding, stride
        a_col = pad(a_prev, (pw, pw, ph, ph))[:, :, ::sh, ::sw]  # (N, C, H_out, W_out)
    else:
        a_col = unfold(a_prev, kernel_size, dilation, padding, stride)  # (N, C·kh·kw, P)
    positions = delta.shape[2] * delta.shape[3]
    a_col = a_col.reshape(n, groups, a_col.shape[1] // groups, positions)  # (N, g, K, P)
    delta_col = delta.reshape(n, groups, c_out // groups, positions)  # (N, g, C_out/g, P)
    grad = torch.einsum("ngop,ngkp->gok", delta_col, a_col)  # Σ_{n,p} δ a_colᵀ, per group
    return grad.reshape(c_out, c_in // groups, *kernel_size)


def conv2d_weight_grad(delta: Tensor, a_prev: Tensor, kernel_size: Pair, stride: Pair,
                       padding: Pair, dilation: Pair, groups: int) -> Tensor:
    """∂C/∂W[o, c, t] = Σ_{n,p} δ[n, o, p] a_prev[n, c, p·s + t·d]: a correlation of a_prev
    with δ. Swap roles so conv2d computes it: a_prev's channels become the batch, the
    examples become the channels (summed over), δ's maps become the kernels; the taps t
    are now the output positions, d apart (stride d), and δ's positions sit s apart
    (dilation s). Rows past k_h (the part of the image the stride skipped) are dropped.
    """
    n, c_in, h, w = a_prev.shape
    # (C/g, g·N, H, W): group j's channels of every example form group j's input channels
    a_t = a_prev.reshape(n, groups, c_in // groups, h, w).permute(2, 1, 0, 3, 4)
    a_t = a_t.reshape(c_in // groups, groups * n, h, w)
    delta_t = delta.transpose(0, 1)  # (C_out, N, H_out, W_out): one kernel per output map
    grad = conv2d(a_t, delta_t, None, dilation, padding, stride, groups)  # (C/g, C_out, ≥kh, ≥kw)
    return grad[:, :, : kernel_size[0], : kernel_size[1]].transpose(0, 1)


def conv2d_bwd(ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor,
               stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """BP2's factor, BP4 and BP3 as a transposed convolution, a correlation and a sum."""
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        # (W^l)ᵀ δ^l, passed down to the input pixels (BP2)
        grad_input = conv2d_input_grad(delta, weight, a_prev.shape[2:], stride, padding,
                                       dilation, groups)
    if ctx.needs_input_grad[1]:
        # BP4: ∂C/∂W = Σ_p δ_p a_col,pᵀ, summed over positions and examples: a correlation,
        # or the unfolded matmul where that is faster (bp4_unfolded)
        bp4 = (conv2d_weight_grad_unfold if bp4_unfolded(a_prev, weight)
               else conv2d_weight_grad)
        grad_weight = bp4(delta, a_prev, weight.shape[2:], stride, padding, dilation, groups)
    if ctx.needs_input_grad[2]:
        grad_bias = delta.sum((0, 2, 3))  # BP3: ∂C/∂b = Σ_p δ_p, over positions and examples
    return grad_input, grad_weight, grad_bias


def conv2d_fused_bwd(ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor,
                     stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """The opt-in fused path (``fused_backward=True``): BP2's factor and BP4 in one call
    to ``aten.convolution_backward``, autograd's own kernel for torch.nn.Conv2d, which
    has its own derivative (double backward works). Faster on a one-channel first
    layer (see the README's measurements); the tests compare it with the written-out path.
    """
    need_in, need_w, need_b = ctx.needs_input_grad[:3]
    grad_input = grad_weight = grad_bias = None
    if need_in or need_w:
        grad_input, grad_weight, _ = aten.convolution_backward(
            delta, a_prev, weight, None, stride, padding, dilation, False, (0, 0), groups,
            (need_in, need_w, False),
        )  # grad_input: (W_col)ᵀ δ folded (BP2); grad_weight: BP4
    if need_b:
        grad_bias = delta.sum((0, 2, 3))  # BP3: ∂C/∂b = Σ_p δ_p, over positions and examples
    return grad_input, grad_weight, grad_bias


# Device types on which the default path computes BP4 as the unfolded matmul rather than
# the correlation, for every kernel. None by default: on an H200 (benchmarks/bp4_forms.py,
# batch 128) the unfolded form won only at the two stride-1 3×3 convolutions on 28×28 maps
# (1 and 16 channels), and the ResNet step was 4.03× native with it against 3.69× with
# the correlation.
BP4_UNFOLD_DEVICES: set[str] = set()


def bp4_unfolded(a_prev: Tensor, weight: Tensor) -> bool:
    """Whether the default path takes BP4's unfolded form: on the device types in
    ``BP4_UNFOLD_DEVICES``; for 1×1 kernels on the CPU, where the "unfolded" input is the
    input itself read at the stride and the correlation's kernel, a whole δ map dilated by
    the stride, is slow in oneDNN (one thread, a ResNet shortcut, 16 → 32 maps at 28×28,
    stride 2, batch 128: 5.7 ms against 2.3 ms, ATen's convolution_backward 2.2 ms;
    benchmarks/RESULTS.md); and for an empty batch, where the correlation's kernels would
    have no channels."""
    device = a_prev.device.type
    return (device in BP4_UNFOLD_DEVICES or a_prev.shape[0] == 0
            or (device == "cpu" and tuple(weight.shape[2:]) == (1, 1)))


_BACKWARDS = {"conv": conv2d_bwd, "unfold": conv2d_unfold_bwd, "fused": conv2d_fused_bwd}


class Conv2dFunction(BPFunction):
    """z^l = W^l ⋆ a^{l-1} + b^l: the linear layer on every k_h × k_w patch.

    Backward, given grad_output = ∂C/∂z^l = δ^l (one value per map and position p):
    BP3 ∂C/∂b^l = Σ_p δ^l_p, BP4 ∂C/∂W^l = Σ_p δ^l_p (a_col,p)ᵀ, and (W_col)ᵀ δ^l folded
    back onto the input pixels (the first factor of BP2) passed down.

    Batch-first: input (N, C_in, H, W), weight (C_out, C_in/groups, k_h, k_w), bias
    (C_out,), output (N, C_out, H_out, W_out); BP3 and BP4 also sum over the N examples.
    ``padding`` is an int pair or "valid"/"same". ``path`` picks the backward: "conv"
    (default; BP2 as a transposed convolution, BP4 as a correlation), "unfold" (the
    reference: unfold + matmul + fold, in forward too) or "fused" (opt-in: ATen's
    ``convolution_backward``). Saves the input and the weights, the two factors of BP4
    and BP2.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair = (1, 1),
                padding: Padding = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
                path: str = "conv") -> Tensor:
        # under torch.autocast the convolution runs in the autocast dtype, as torch's does
        input, weight, bias = _cast(_autocast_dtype(input), input, weight, bias)
        if path != "unfold":
            return conv2d(input, weight, bias, stride, padding, dilation, groups)
        sym, (eh, ew) = conv2d_padding(padding, weight.shape[2:], stride, dilation)
        return conv2d_unfold_fwd(pad(input, (0, ew, 0, eh)), weight, bias, stride, sym,
                                 dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias, stride, padding, dilation, groups, path = inputs
        ctx.padding, ctx.extra = conv2d_padding(padding, weight.shape[2:], stride, dilation)
        ctx.stride, ctx.dilation, ctx.groups = stride, dilation, groups
        ctx.backward_path = _BACKWARDS[path]
        _record_autocast(ctx, input, weight, bias)
        ctx.save_for_backward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        bwd = ctx.backward_path
        (eh, ew), (h, w) = ctx.extra, a_prev.shape[2:]

        def gradients(ctx, delta, a_prev, weight):
            # "same" with an even kernel: the odd bottom/right padding row is part of the
            # input the backward sees; its error is cropped off below
            a_prev = pad(a_prev, (0, ew, 0, eh)) if eh or ew else a_prev
            grads = bwd(ctx, delta, a_prev, weight, ctx.stride, ctx.padding, ctx.dilation,
                        ctx.groups)
            if grads[0] is not None and (eh or ew):
                grads = (grads[0][:, :, :h, :w], *grads[1:])
            return grads

        grads = _autocast_backward(ctx, gradients, grad_output, a_prev, weight)
        return (*grads, None, None, None, None, None)


class Conv2dFeedbackFunction(Conv2dFunction):
    """z^l = W^l ⋆ a^{l-1} + b^l, passing down B's transposed convolution with δ^l instead
    of W's (a feedback rule's stand-in for W, ``bptorch.feedback``).

    ``feedback_weight`` is B (W's shape, no gradient). BP3 and BP4 are
    :class:`Conv2dFunction`'s: they read W's shape only, never its values, so the
    backward is Conv2dFunction's with B saved in W's place (on every ``path``).
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair,
                padding: Padding, dilation: Pair, groups: int, path: str,
                feedback_weight: Tensor) -> Tensor:
        return Conv2dFunction.forward(input, weight, bias, stride, padding, dilation, groups,
                                      path)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        Conv2dFunction.setup_context(ctx, inputs[:-1], output)
        ctx.save_for_backward(inputs[0], inputs[-1])  # a^{l-1}, and B where W was

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        return (*Conv2dFunction.backward(ctx, grad_output), None)


# ---------------------------------------------------------------- max-pool
class MaxPool2dFunction(BPFunction):
    """a_j = max_{i ∈ window j} z_i.

    Backward: ∂a_j/∂z_i is 1 for the input that won window j and 0 for the others, so
    ∂C/∂z_i = Σ_{j : i won j} ∂C/∂a_j: δ is routed to the winners, summed where
    overlapping windows share a winner. On ties torch's kernel picks one winner; that
    one gets δ. Padding never wins (torch pads with −∞).

    Batch-first: (N, C, H, W) -> (N, C, H_out, W_out). Saves the flat per-map argmax
    indices (int64, the size of the output), not the input. Returns (output, indices).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, kernel_size: Pair, stride: Pair, padding: Pair = (0, 0),
                dilation: Pair = (1, 1), ceil_mode: bool = False) -> tuple[Tensor, Tensor]:
        return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                          return_indices=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        input = inputs[0]
        _a, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.input_shape = input.shape
        ctx.save_for_backward(indices)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None):
        (indices,) = ctx.saved_tensors
        delta = grad_output
        n, c, h, w = ctx.input_shape
        # Route each window's δ to the pixel that won it (indices are flat per map, h·w);
        # scatter_add, not scatter: a pixel that wins several overlapping windows
        # receives the sum of their δs. Differentiable in δ (its derivative is a gather).
        # Half-precision δs are summed in float32 and rounded once, as torch's kernel does.
        acc = delta.float() if delta.dtype in (torch.float16, torch.bfloat16) else delta
        grad_input = acc.new_zeros(n, c, h * w).scatter_add(2, indices.flatten(2), acc.flatten(2))
        return grad_input.view(n, c, h, w).to(delta.dtype), None, None, None, None, None


# ---------------------------------------------------------------- dropout
class DropoutFunction(BPFunction):
    """a = z ⊙ m, with m_i = 1/(1 − p) for kept units and 0 for dropped ones.

    Backward: ∂C/∂z = ∂C/∂a ⊙ m, the same mask (a dropped unit passes no error down).
    The mask is an input, drawn by the caller with torch's RNG, so the Function is
    deterministic and ``torch.manual_seed`` controls the draw. ``inplace=True``
    overwrites z with a (``mark_dirty``); the mask then gets no gradient, since z is gone.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, mask: Tensor, inplace: bool = False) -> Tensor:
        return input.mul_(mask) if inplace else input * mask

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, mask, inplace = inputs
        if inplace:
            if ctx.needs_input_grad[1]:
                raise RuntimeError("in-place dropout overwrites the input, so the mask "
                                   "cannot get a gradient; use inplace=False")
            ctx.mark_dirty(input)
        keep_input = ctx.needs_input_grad[1] and not inplace
        ctx.save_for_backward(input if keep_input else None, mask)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        input, mask = ctx.saved_tensors
        grad_input = grad_mask = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output * mask  # δ ⊙ m
        if ctx.needs_input_grad[1]:
            grad_mask = grad_output * input
        return grad_input, grad_mask, None


def dropout_mask(input: Tensor, p: float) -> Tensor:
    """m = Bernoulli(1 − p) / (1 − p), drawn as torch's CPU dropout draws it; for p = 1
    all zeros, drawing nothing (as torch, which multiplies by zero)."""
    if p == 1.0:
        return torch.zeros_like(input)
    return torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)


# ---------------------------------------------------------------- flatten
class FlattenFunction(BPFunction):
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
    "Conv2dFeedbackFunction", "Conv2dFunction", "DropoutFunction", "FlattenFunction",
    "MaxPool2dFunction",
    "check_4d", "check_conv2d", "check_dropout_p", "check_pool2d", "conv2d_padding",
    "dropout_mask", "pool2d_out_size",
]
