"""The convolutional layer: the linear layer applied to every patch.

Unfold the input a^{l-1} (N, C, H, W) into its k_h·k_w patches, one column per output
position p: a_col (C·k_h·k_w, P) for each example. With the kernels as rows,
W_col = W.view(C_out, C·k_h·k_w), the forward and the seed's equations read

    seed, one example, feature maps      code, per example (batch-first)
    z^l_p = W_col a_col,p + b            z_col = W_col @ a_col + b[:, None]   (C_out, P)
    ∂C/∂b = Σ_p δ_p           (BP3)      grad_bias = delta.sum((0, 2, 3))
    ∂C/∂W = Σ_p δ_p a_col,pᵀ  (BP4)      grad_weight = Σ_N delta_col @ a_col.T
    W_colᵀ δ, folded back     (BP2)      grad_input = fold(W_col.T @ delta_col)

The weights are shared across positions, so BP3 and BP4 sum over positions as well
as over examples. The reference pair below runs these lines literally (``unfold``/``fold``
and matmuls); ``Conv2d(unfold=True)`` runs it, and the tests compare every other path
with it. With groups, input channels and kernels split into ``groups`` independent
convolutions; with dilation d the kernel taps sit d pixels apart. torch's
``padding="same"`` pads (k−1)·d in all, the odd one at the bottom/right; that extra
row/column is padded explicitly.

The fast variants (after the Function) write the same two sums as convolutions, which
is what they are, and are the default:

* BP2: fold(W_colᵀ δ) is the *transposed* convolution of δ with W (δ spread back over
  the pixels each output position read, weighted by the kernel): ``conv_transpose2d``,
  with the ``output_padding`` that restores rows and columns the stride skipped.
* BP4: Σ_{n,p} δ_{n,o,p} a_{n,c,p·s + t·d} is a correlation of a^{l-1} with δ: a
  ``conv2d`` with the roles swapped (channels as the batch, examples as the channels,
  δ's maps as the kernels), the forward's dilation as its stride and its stride as
  the dilation; or, where faster on the CPU (``bp4_unfolded``, ``bp4_unfolded_cpu``),
  the unfolded form as one GEMM over the whole batch (below, "one GEMM over the batch").
* ``path="gemm"``: BP4 as that one GEMM and BP2 unfolded (W_colᵀ δ, fold), everywhere.
* under ``bptorch.kernels`` "triton" ("auto" once a GPU has timed them): BP4 and BP2 as
  implicit-GEMM Triton kernels over the whole batch (the file's end), a^{l-1} read through the
  convolution's index map instead of unfolded.
* ``fused_backward=True`` opts into ATen's ``convolution_backward`` (autograd's own
  kernel, BP2 and BP4 in one call): faster on a one-channel first layer.

All are built from differentiable ops, so double backward works.

The last section writes the same layer once for any number of spatial dims (Conv1d,
Conv3d) and its adjoint, the transposed convolution (ConvTranspose1d/2d/3d), whose forward
is the convolution's BP2 and whose BP2 is the convolution's forward; then the padding
modes ("reflect", "replicate", "circular") as a gather and its scatter-add.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import (
    conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d, fold, pad,
    unfold,
)

from .base import (
    LOWER, PER_EXAMPLE, BPFunction, Padding, Pair, built, kernel_choice, moved, per_example,
    per_example_need, use_kernel,
)

Sizes = tuple[int, ...]  # one int per spatial dim: (L,), (H, W) or (D, H, W)

aten = torch.ops.aten
Need = tuple[bool, ...]


def conv_padding(padding: Sizes | str, kernel_size: Sizes, stride: Sizes,
                 dilation: Sizes) -> tuple[Sizes, Sizes]:
    """(symmetric padding, extra end padding) per spatial dim, for ints or "valid"/"same".

    "same" pads d·(k − 1) in all, as torch: half on each side, the odd one at the end
    (bottom/right; torch's rule for even kernels); it needs stride 1.
    """
    n = len(kernel_size)
    if not isinstance(padding, str):
        return padding, (0,) * n
    if padding == "valid":
        return (0,) * n, (0,) * n
    if padding != "same":
        raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                         f"{{'valid', 'same'}}")
    if any(s != 1 for s in stride):
        raise ValueError(f"padding='same' is not supported for strided convolutions "
                         f"(got stride {stride})")
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    sym = tuple(t // 2 for t in total)
    return sym, tuple(t - 2 * p for t, p in zip(total, sym))


def conv2d_padding(padding: Padding, kernel_size: Pair, stride: Pair,
                   dilation: Pair) -> tuple[Pair, Pair]:
    """:func:`conv_padding` for the (height, width) pairs of Conv2d."""
    return conv_padding(padding, kernel_size, stride, dilation)  # type: ignore[return-value]


# ---------------------------------------------------------------- the reference pair
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


def conv2d_bias_grad(delta: Tensor) -> Tensor:
    """z_col = W_col @ a_col + b[:, None]  →  BP3: db = Σ_p δ_p, over positions and
    examples. The one BP3 of every path."""
    return delta.sum((0, 2, 3))


def conv2d_unfold_bwd(delta: Tensor, a_prev: Tensor, weight: Tensor, stride: Pair,
                      padding: Pair, dilation: Pair, groups: int,
                      need: Need) -> tuple[Tensor | None, ...]:
    """(∂C/∂a_prev, ∂C/∂W, ∂C/∂b) of :func:`conv2d_unfold_fwd`, literally, on the
    unfolded patches. a_col is recomputed from a_prev rather than saved: it is k_h·k_w
    times larger."""
    n, _, h, w = a_prev.shape
    c_out, _, kh, kw = weight.shape
    delta_col = delta.reshape(n, groups, c_out // groups, -1)  # (N, g, C_out/g, P)
    w_col = weight.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C/g·kh·kw)
    grad_input = grad_weight = grad_bias = None
    if need[0]:
        # z_col = W_col @ a_col  →  BP2's factor: W_colᵀ δ per patch, then fold (col2im)
        # sums each patch back onto its pixels
        g_col = (w_col.transpose(1, 2) @ delta_col).flatten(1, 2)  # (N, C·kh·kw, P)
        grad_input = fold(g_col, (h, w), (kh, kw), dilation, padding, stride)
    if need[1]:
        # z_col = W_col @ a_col  →  BP4: dW = Σ_{n,p} δ_p a_col,pᵀ
        a_col = unfold(a_prev, (kh, kw), dilation, padding, stride)  # (N, C·kh·kw, P)
        a_col = a_col.unflatten(1, (groups, -1))  # (N, g, K, P)
        grad_weight = (delta_col @ a_col.transpose(-2, -1)).sum(0)  # (g, C_out/g, K)
        grad_weight = grad_weight.reshape(weight.shape)
    if need[2]:
        grad_bias = conv2d_bias_grad(delta)  # BP3
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------- the Function
class Conv2dFunction(BPFunction):
    """z^l = W^l ⋆ a^{l-1} + b^l: the linear layer on every k_h × k_w patch.

    Backward, given grad_output = ∂C/∂z^l = δ^l (one value per map and position p):
    BP3 ∂C/∂b^l = Σ_p δ^l_p, BP4 ∂C/∂W^l = Σ_p δ^l_p (a_col,p)ᵀ, and (W_col)ᵀ δ^l folded
    back onto the input pixels (the first factor of BP2) passed down.

    Batch-first: input (N, C_in, H, W), weight (C_out, C_in/groups, k_h, k_w), bias
    (C_out,), output (N, C_out, H_out, W_out); BP3 and BP4 also sum over the N examples.
    ``padding`` is an int pair or "valid"/"same". ``path`` picks the backward: "conv"
    (default; BP2 as a transposed convolution, BP4 as a correlation, each unfolded where
    that is faster on the CPU), "unfold" (the reference: unfold + matmul + fold, in forward
    too), "gemm" (BP4 as one GEMM over the whole batch and BP2 unfolded, everywhere) or
    "fused" (opt-in: ATen's ``convolution_backward``). Saves the input and the weights,
    the two factors of BP4 and BP2.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair = (1, 1),
                padding: Padding = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
                path: str = "conv") -> Tensor:
        return conv2d_forward(input, weight, bias, stride, padding, dilation, groups, path)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        conv2d_setup(ctx, inputs)
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        if PER_EXAMPLE:  # a clipping collector forms BP3/BP4 itself: skipped here
            need = per_example_need("conv2d", ctx, need)
        grads = conv2d_backward(ctx, grad_output, a_prev, weight, need)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and a^{l-1} to it
            grads = per_example("conv2d", ctx, grads, grad_output, a_prev)
        return (*grads, None, None, None, None, None)


def conv2d_forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair,
                   padding: Padding, dilation: Pair, groups: int, path: str) -> Tensor:
    """ATen's convolution, or the reference (``path="unfold"``)."""
    if path != "unfold":
        return conv2d(input, weight, bias, stride, padding, dilation, groups)
    sym, (eh, ew) = conv2d_padding(padding, weight.shape[2:], stride, dilation)
    return conv2d_unfold_fwd(pad(input, (0, ew, 0, eh)), weight, bias, stride, sym,
                             dilation, groups)


def conv2d_setup(ctx: Any, inputs: tuple) -> None:
    """What every conv backward reads besides the saved tensors."""
    _input, weight, _bias, stride, padding, dilation, groups, path = inputs
    ctx.padding, ctx.extra = conv2d_padding(padding, weight.shape[2:], stride, dilation)
    ctx.stride, ctx.dilation, ctx.groups, ctx.path = stride, dilation, groups, path
    ctx.kernel_size = tuple(weight.shape[2:])  # for the per-example collectors
    # bptorch.kernels: the default path's BP2 and BP4 as the implicit-GEMM Triton kernels
    # (the end of this file), decided with the forward; under "auto" only once a GPU has
    # measured them (CONV_KERNELS_IN_AUTO)
    ctx.kernel = (path == "conv" and (CONV_KERNELS_IN_AUTO or kernel_choice() == "triton")
                  and use_kernel(_input))


def conv2d_backward(ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor,
                    need: tuple | None = None) -> tuple[Tensor | None, ...]:
    """(∂C/∂a_prev, ∂C/∂W, ∂C/∂b) on ``ctx.path``. ``weight``: the matrix BP2 passes δ
    down through (W, or a feedback rule's B: BP3 and BP4 read only its shape). ``need``:
    which of the three to form (default ``ctx.needs_input_grad``)."""
    need = (ctx.needs_input_grad if need is None else need)[:3]
    (eh, ew), (h, w) = ctx.extra, a_prev.shape[2:]
    # "same" with an even kernel: the odd bottom/right padding row is part of the input
    # the backward sees; its error is cropped off below
    a_prev = pad(a_prev, (0, ew, 0, eh)) if eh or ew else a_prev
    args = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups, need)
    if ctx.path == "unfold":
        grad_input, grad_weight, grad_bias = conv2d_unfold_bwd(delta, a_prev, weight, *args)
    else:
        if ctx.kernel and not torch.is_grad_enabled():  # bptorch.kernels (the file's end)
            fast = conv2d_triton_bwd  # double backward takes the differentiable ops
        else:
            fast = CONV2D_BACKWARDS[ctx.path]
        grad_input, grad_weight = fast(delta, a_prev, weight, *args)
        grad_bias = conv2d_bias_grad(delta) if need[2] else None  # BP3
    if grad_input is not None and (eh or ew):
        grad_input = grad_input[:, :, :h, :w]
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------- fast variants
# The default path ("conv") and the opt-in fused one. Each gives BP2's factor and BP4;
# BP3 is conv2d_bias_grad for all. tests/test_conv.py compares each with the reference.
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
    """BP4's unfolded form over the whole batch: one GEMM per group,
    dW_col = δ_col (C_out × N·P) · a_colᵀ (N·P × C·k_h·k_w), :func:`conv_weight_grad_gemm`.
    (It was an einsum over the per-example unfolds; the one GEMM on the written-out
    unfold measured 1.2–7× faster at the ResNet's shapes, benchmarks/bp4_forms.py.)
    """
    return conv_weight_grad_gemm(delta, a_prev, kernel_size, stride, padding, dilation, groups)


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


def bp4_unfolded_cpu(a_prev: Tensor, delta: Tensor, stride: Pair) -> bool:
    """Whether the default path takes BP4's one GEMM on the CPU for a kernel larger than
    1×1 too: where the forward has a stride (the correlation then runs with δ's maps
    dilated by the stride as its kernels, which oneDNN runs slowly: one thread, batch 64,
    16 → 32 maps 3×3 at 28×28, stride 2, 16 ms against 19 ms; 32 → 64 at 14×14, 15 ms
    against 19 ms), and where δ has one position per map (LeNet's conv3, 16 → 120 maps 5×5
    on 5×5: the GEMM is then the whole layer, 0.20 ms against 0.39 ms). Stride-1 3×3 and
    5×5 kernels on larger maps keep the correlation (ResNet 16 → 16 at 28×28: 84 ms against
    41 ms; LeNet's conv2: 6.3 ms against 1.8 ms): the unfold's copy, k_h·k_w times the input,
    costs more than the GEMM saves. Timings from benchmarks/bp4_forms.py on this CPU
    (loaded, interleaved medians; docs/cuda.md, "A convolution's BP4 as one GEMM")."""
    return a_prev.device.type == "cpu" and (
        any(s > 1 for s in stride) or delta.shape[2] * delta.shape[3] == 1)


def bp2_unfolded(weight: Tensor, stride: Pair) -> bool:
    """Whether the default path takes BP2's unfolded form, fold(W_colᵀ δ_col): on the CPU
    for a strided 1×1 kernel, where fold is a strided scatter of one matmul's result while
    the transposed convolution runs oneDNN's strided deconvolution (ResNet shortcut 32 → 64
    maps at 14×14, stride 2, batch 64: 1.6 ms against 6.1 ms). Elsewhere the transposed
    convolution is faster (fold's scatter-add over k_h·k_w taps costs 1.5–3×)."""
    return (weight.device.type == "cpu" and tuple(weight.shape[2:]) == (1, 1)
            and any(s > 1 for s in stride))


def conv2d_bwd(delta: Tensor, a_prev: Tensor, weight: Tensor, stride: Pair, padding: Pair,
               dilation: Pair, groups: int, need: Need) -> tuple[Tensor | None, Tensor | None]:
    """The default path: BP2's factor as a transposed convolution, BP4 as a correlation
    (or the unfolded einsum where :func:`bp4_unfolded`)."""
    grad_input = grad_weight = None
    if need[0]:
        # z = W ⋆ a_prev + b  →  BP2's factor: (W^l)ᵀ δ^l, passed down to the input pixels
        bp2 = conv_input_grad_gemm if bp2_unfolded(weight, stride) else conv2d_input_grad
        grad_input = bp2(delta, weight, a_prev.shape[2:], stride, padding, dilation, groups)
    if need[1]:
        # z = W ⋆ a_prev + b  →  BP4: dW = Σ_p δ_p a_col,pᵀ, over positions and examples
        unfolded = bp4_unfolded(a_prev, weight) or bp4_unfolded_cpu(a_prev, delta, stride)
        bp4 = conv2d_weight_grad_unfold if unfolded else conv2d_weight_grad
        grad_weight = bp4(delta, a_prev, weight.shape[2:], stride, padding, dilation, groups)
    return grad_input, grad_weight


def conv2d_gemm_bwd(delta: Tensor, a_prev: Tensor, weight: Tensor, stride: Pair,
                    padding: Pair, dilation: Pair, groups: int,
                    need: Need) -> tuple[Tensor | None, Tensor | None]:
    """``path="gemm"``: BP2's factor and BP4 both unfolded over the whole batch, whatever
    the shape (the CPU route the default path takes where :func:`bp4_unfolded_cpu` and
    :func:`bp2_unfolded` say it is faster; the form the Triton kernels compute without
    materialising the unfold)."""
    grad_input = grad_weight = None
    if need[0]:
        # z_col = W_col @ a_col  →  BP2's factor: fold(W_colᵀ δ_col)
        grad_input = conv_input_grad_gemm(delta, weight, a_prev.shape[2:], stride, padding,
                                            dilation, groups)
    if need[1]:
        # z_col = W_col @ a_col  →  BP4: dW_col = δ_col a_colᵀ, one GEMM over N·P columns
        grad_weight = conv_weight_grad_gemm(delta, a_prev, weight.shape[2:], stride, padding,
                                            dilation, groups)
    return grad_input, grad_weight


def conv2d_fused_bwd(delta: Tensor, a_prev: Tensor, weight: Tensor, stride: Pair,
                     padding: Pair, dilation: Pair, groups: int,
                     need: Need) -> tuple[Tensor | None, Tensor | None]:
    """The opt-in fused path (``fused_backward=True``): BP2's factor and BP4 in one call
    to ``aten.convolution_backward``, autograd's own kernel for torch.nn.Conv2d, which
    has its own derivative (double backward works). Faster on a one-channel first
    layer (docs/benchmarks.md, "What writing a convolution's BP2/BP4 out costs").
    """
    if not (need[0] or need[1]):
        return None, None
    grad_input, grad_weight, _ = aten.convolution_backward(
        delta, a_prev, weight, None, stride, padding, dilation, False, (0, 0), groups,
        (need[0], need[1], False),
    )  # grad_input: (W_col)ᵀ δ folded (BP2); grad_weight: BP4
    return grad_input, grad_weight


# ``path`` → the backward that gives BP2's factor and BP4 ("unfold", the reference, gives
# BP3 too and is dispatched before these)
CONV2D_BACKWARDS: dict[str, Callable[..., tuple[Tensor | None, Tensor | None]]] = {
    "conv": conv2d_bwd, "gemm": conv2d_gemm_bwd, "fused": conv2d_fused_bwd}


# ================================================================ any number of spatial dims
# Conv1d, Conv3d and the transposed convolutions ConvTranspose1d/2d/3d, written once for
# d = 1, 2 or 3 spatial dims (Conv2d keeps its own paths above; at d = 2 the tests hold
# these equal to it).
#
# The convolution. Read a^{l-1} (N, C, *S) zero-padded, at the positions of tap t
# (t_i < k_i) for output position p: q = p·s + t·dil − pad, per dim. Gathering those values
# for every tap and position gives a_col (N, C·K, P), K = Π k_i taps, P = Π out_i
# positions; with W_col = W.view(C_out, C·K) (per group) the layer is Conv2d's, any d:
#
#     z_col = W_col @ a_col + b              (the linear layer on every patch)
#     BP3   ∂C/∂b = Σ_{n,p} δ_p
#     BP4   ∂C/∂W = Σ_{n,p} δ_p a_col,pᵀ     (a correlation of a^{l-1} with δ)
#     BP2   ∂C/∂a^{l-1} = fold(W_colᵀ δ_col) (W's transposed convolution of δ)
#
# fold is the adjoint of the gather: it scatter-adds every (tap, position) entry back
# onto the pixel it was read from, so both use one index map (:func:`patch_index`).
#
# The transposed convolution (ConvTranspose, weight (C_in, C_out/g, *k)) is the adjoint
# of the convolution with the same W, taken as a map from C_out to C_in channels: its
# forward is the convolution's BP2, z = fold(W_colᵀ a_col) + b, the size (n − 1)s − 2p +
# dil(k − 1) + output_padding + 1 (output_padding puts back the end rows a stride-s
# convolution of that size would skip). Differentiate z = Tᵀ a + b, T the convolution's
# linear map:
#
#     BP2   ∂C/∂a = T δ                      the convolution's forward, of δ (no bias)
#     BP4   ∂C/∂W: ⟨δ, T_Wᵀ a⟩ = ⟨T_W δ, a⟩, so the convolution's BP4 with the roles of
#           a and δ swapped: Σ_{n,p} a_p δ_col,pᵀ, δ's patches gathered at a's positions
#     BP3   ∂C/∂b = Σ_{n,q} δ_q
#
# Each is written twice: the reference (path "unfold": the gather, the matmuls and the
# scatter-add above, literally) and the default (path "conv": torch's forward ops
# conv{d}d and conv_transpose{d}d, which compute exactly these maps: BP2 of one is the
# forward of the other, BP4 the correlation as a convolution with roles swapped, as
# Conv2d's default). No backward calls an ATen derivative kernel; all are differentiable
# ops, so double backward works.
_CONV = {1: conv1d, 2: conv2d, 3: conv3d}
_CONV_TRANSPOSE = {1: conv_transpose1d, 2: conv_transpose2d, 3: conv_transpose3d}


def conv_out_size(size: Sizes, kernel_size: Sizes, stride: Sizes, padding: Sizes,
                  dilation: Sizes) -> Sizes:
    """⌊(n + 2p − dil(k − 1) − 1)/s⌋ + 1 per dim: the convolution's output size."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def conv_transpose_out_size(size: Sizes, kernel_size: Sizes, stride: Sizes, padding: Sizes,
                            output_padding: Sizes, dilation: Sizes) -> Sizes:
    """(n − 1)s − 2p + dil(k − 1) + output_padding + 1 per dim: the transposed size."""
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, op, d in
                 zip(size, kernel_size, stride, padding, output_padding, dilation))


def pad_end(x: Tensor, extra: Sizes) -> Tensor:
    """Zero-pad the end of each spatial dim by ``extra`` ("same" with an even kernel)."""
    if not any(extra):
        return x
    return pad(x, [v for e in reversed(extra) for v in (0, e)])


# ---------------------------------------------------------------- the reference, any d
def patch_index(padded: Sizes, kernel_size: Sizes, stride: Sizes, dilation: Sizes,
                out: Sizes, device: torch.device) -> Tensor:
    """(K·P,) flat indices into the padded maps ``padded``: entry (t, p) is the pixel
    p·s + t·dil that tap t reads at output position p (taps, then positions, row-major)."""
    d = len(padded)
    idx = torch.zeros((), dtype=torch.long, device=device)
    step = 1
    for i in reversed(range(d)):  # the last dim is the fastest
        tap = torch.arange(kernel_size[i], device=device) * dilation[i]
        pos = torch.arange(out[i], device=device) * stride[i]
        at_tap, at_pos = [1] * (2 * d), [1] * (2 * d)
        at_tap[i], at_pos[d + i] = -1, -1
        idx = idx + (tap.view(at_tap) + pos.view(at_pos)) * step
        step *= padded[i]
    return idx.reshape(-1)


def conv_unfold(a_prev: Tensor, kernel_size: Sizes, stride: Sizes, padding: Sizes,
                dilation: Sizes, out: Sizes | None = None) -> Tensor:
    """a_col (N, C·K, P): the zero-padded a_prev gathered at every tap of every position
    (``out`` positions; by default the convolution's output size)."""
    n, c, *size = a_prev.shape
    if out is None:
        out = conv_out_size(size, kernel_size, stride, padding, dilation)
    a_pad = pad(a_prev, [v for p in reversed(padding) for v in (p, p)])
    idx = patch_index(a_pad.shape[2:], kernel_size, stride, dilation, out, a_prev.device)
    return a_pad.flatten(2).index_select(2, idx).reshape(n, c * math.prod(kernel_size),
                                                         math.prod(out))


def conv_fold(col: Tensor, size: Sizes, kernel_size: Sizes, stride: Sizes, padding: Sizes,
              dilation: Sizes, out: Sizes) -> Tensor:
    """The adjoint of :func:`conv_unfold`: scatter-add col (N, C·K, P) back onto the
    pixels (N, C, *size) each entry was read from; the padding's share is dropped."""
    n = col.shape[0]
    padded = tuple(m + 2 * p for m, p in zip(size, padding))
    idx = patch_index(padded, kernel_size, stride, dilation, out, col.device)
    c = col.shape[1] // math.prod(kernel_size)
    col = col.reshape(n, c, idx.numel())  # (N, C, K·P)
    g = col.new_zeros(n, c, math.prod(padded)).index_add(2, idx, col)
    g = g.unflatten(2, padded)
    return g[(..., *(slice(p, p + m) for m, p in zip(size, padding)))]


def conv_ref_fwd(a_prev: Tensor, weight: Tensor, bias: Tensor | None, stride: Sizes,
                 padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """z_col = W_col @ a_col + b per group, reshaped to (N, C_out, *out)."""
    n, c_out, k = a_prev.shape[0], weight.shape[0], weight.shape[2:]
    out = conv_out_size(a_prev.shape[2:], k, stride, padding, dilation)
    a_col = conv_unfold(a_prev, k, stride, padding, dilation, out)  # (N, C·K, P)
    a_col = a_col.unflatten(1, (groups, -1))  # (N, g, C/g·K, P)
    w_col = weight.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C/g·K)
    z_col = (w_col @ a_col).flatten(1, 2)  # (N, C_out, P)
    if bias is not None:
        z_col = z_col + bias[:, None]
    return z_col.reshape(n, c_out, *out)


def conv_ref_input_grad(delta: Tensor, weight: Tensor, size: Sizes, stride: Sizes,
                        padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """fold(W_colᵀ δ_col) onto maps of ``size``: BP2's factor (and the transposed
    convolution's forward)."""
    n, c_out = delta.shape[:2]
    positions = math.prod(delta.shape[2:])
    delta_col = delta.reshape(n, groups, c_out // groups, positions)  # (N, g, C_out/g, P)
    w_col = weight.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C/g·K)
    g_col = (w_col.transpose(1, 2) @ delta_col).flatten(1, 2)  # (N, C·K, P)
    return conv_fold(g_col, size, weight.shape[2:], stride, padding, dilation,
                     delta.shape[2:])


def conv_ref_weight_grad(delta: Tensor, a_prev: Tensor, kernel_size: Sizes, stride: Sizes,
                         padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """Σ_{n,p} δ_col,p a_col,pᵀ per group: BP4, a_prev gathered at δ's positions."""
    n, c_in, c_out = a_prev.shape[0], a_prev.shape[1], delta.shape[1]
    a_col = conv_unfold(a_prev, kernel_size, stride, padding, dilation, delta.shape[2:])
    a_col = a_col.unflatten(1, (groups, -1))  # (N, g, C/g·K, P)
    positions = math.prod(delta.shape[2:])
    delta_col = delta.reshape(n, groups, c_out // groups, positions)  # (N, g, C_out/g, P)
    grad = torch.einsum("ngop,ngkp->gok", delta_col, a_col)  # Σ_{n,p} δ a_colᵀ
    return grad.reshape(c_out, c_in // groups, *kernel_size)


def conv_bias_grad(delta: Tensor) -> Tensor:
    """z = W ⋆ a_prev + b  →  BP3: db = Σ_{n,p} δ_p, over examples and every position."""
    return delta.sum((0, *range(2, delta.dim())))


# ---------------------------------------------------------------- the default, any d
def conv_fwd(a_prev: Tensor, weight: Tensor, bias: Tensor | None, stride: Sizes,
             padding: Sizes | str, dilation: Sizes, groups: int) -> Tensor:
    """torch's conv{d}d: the same z_col = W_col @ a_col + b."""
    return _CONV[weight.dim() - 2](a_prev, weight, bias, stride, padding, dilation, groups)


def conv_input_grad(delta: Tensor, weight: Tensor, size: Sizes, stride: Sizes,
                    padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """fold(W_colᵀ δ_col) as torch's conv_transpose{d}d, onto maps of ``size``: the end
    rows the stride skipped come back as ``output_padding`` (they receive no error)."""
    output_padding = tuple(
        n + 2 * p - d * (k - 1) - 1 - (o - 1) * s for n, o, k, s, p, d in
        zip(size, delta.shape[2:], weight.shape[2:], stride, padding, dilation))
    return _CONV_TRANSPOSE[weight.dim() - 2](delta, weight, None, stride, padding,
                                             output_padding, groups, dilation)


def conv_weight_grad(delta: Tensor, a_prev: Tensor, kernel_size: Sizes, stride: Sizes,
                     padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """∂C/∂W[o, c, t] = Σ_{n,p} δ[n, o, p] a_prev[n, c, p·s + t·dil]: the correlation as a
    conv{d}d with roles swapped, as :func:`conv2d_weight_grad` (a_prev's channels the
    batch, the examples the channels, δ's maps the kernels; dil and s trade places).
    An empty batch takes the reference (the kernels would have no channels)."""
    n, c_in, *size = a_prev.shape
    if n == 0:
        return conv_ref_weight_grad(delta, a_prev, kernel_size, stride, padding, dilation,
                                    groups)
    d = len(size)
    a_t = a_prev.reshape(n, groups, c_in // groups, *size).permute(2, 1, 0, *range(3, 3 + d))
    a_t = a_t.reshape(c_in // groups, groups * n, *size)  # (C/g, g·N, *S)
    delta_t = delta.transpose(0, 1)  # (C_out, N, *out): one kernel per output map
    grad = _CONV[d](a_t, delta_t, None, dilation, padding, stride, groups)  # (C/g, C_out, ≥k)
    return grad[(slice(None), slice(None), *(slice(k) for k in kernel_size))].transpose(0, 1)


# ---------------------------------------------------------------- one GEMM over the batch, any d
# The unfolded form over the whole batch at once. Lay a^{l-1}'s patches of every example
# side by side, one column per (example n, position p): a_col (C·K, N·P), rows a channel c
# and a tap t; and δ as δ_col (C_out, N·P). Then, per group,
#
#     BP4   ∂C/∂W_col = δ_col a_colᵀ          ONE GEMM, (C_out × N·P)(N·P × C·K)
#     BP2   ∂C/∂a^{l-1} = fold(W_colᵀ δ_col)  one batched matmul, then the scatter-add
#
# not a matmul per example and a sum, and not the correlation with δ's maps as kernels.
# The unfold is written out as a strided view of the zero-padded input: entry (c, t, n, p)
# sits at c·s_C + Σ_i t_i·dil_i·s_i + n·s_N + Σ_i p_i·stride_i·s_i (s_i the i-th spatial
# stride of the padded input), no index tensor; reshaping the view to (C·K, N·P) copies it
# once, in the layout the GEMM reads (positions fastest: rows stream). The Triton kernels
# (the end of this file) read a^{l-1} through the same index map inside their tiles
# instead of copying it (implicit GEMM).
def conv_cols(a_prev: Tensor, kernel_size: Sizes, stride: Sizes, padding: Sizes,
              dilation: Sizes, out: Sizes, groups: int) -> Tensor:
    """a_col of the whole batch, (g, C/g·K, N·P): row (c, t), column (n, p) holds the
    zero-padded a_prev at pixel p·stride + t·dil of example n, channel c. ``out`` (the
    positions) must not read past the padded maps (at most the convolution's output size)."""
    n, c = a_prev.shape[:2]
    a = pad(a_prev, [v for p in reversed(padding) for v in (p, p)]) if any(padding) else a_prev
    a = a.contiguous()
    s_n, s_c, *s_x = a.stride()
    view = a.as_strided(  # (C, *k, N, *out): tap strides dil·s_i, position strides stride·s_i
        (c, *kernel_size, n, *out),
        (s_c, *(s * d for s, d in zip(s_x, dilation)), s_n,
         *(s * st for s, st in zip(s_x, stride))))
    return view.reshape(groups, c // groups * math.prod(kernel_size), n * math.prod(out))


def conv_weight_grad_gemm(delta: Tensor, a_prev: Tensor, kernel_size: Sizes, stride: Sizes,
                          padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """z_col = W_col @ a_col + b  →  BP4: ∂C/∂W_col = δ_col a_colᵀ, one GEMM per group
    over the N·P columns of the whole batch (sums over examples and positions at once)."""
    n, c_in, c_out = a_prev.shape[0], a_prev.shape[1], delta.shape[1]
    out = tuple(delta.shape[2:])
    a_col = conv_cols(a_prev, kernel_size, stride, padding, dilation, out, groups)
    delta_col = delta.reshape(n, groups, c_out // groups, math.prod(out))  # (N, g, C_out/g, P)
    delta_col = delta_col.permute(1, 2, 0, 3).reshape(groups, c_out // groups, -1)  # (g, ., N·P)
    grad = delta_col @ a_col.transpose(1, 2)  # (g, C_out/g, C/g·K): Σ_{n,p} δ a_colᵀ
    return grad.reshape(c_out, c_in // groups, *kernel_size)


def conv_input_grad_gemm(delta: Tensor, weight: Tensor, size: Sizes, stride: Sizes,
                         padding: Sizes, dilation: Sizes, groups: int) -> Tensor:
    """z_col = W_col @ a_col  →  BP2's factor: W_colᵀ δ_col for the whole batch in one
    batched matmul, folded back onto maps of ``size`` (col2im for 2-d)."""
    n, c_out = delta.shape[:2]
    w_col = weight.reshape(groups, c_out // groups, -1)  # (g, C_out/g, C/g·K)
    positions = math.prod(delta.shape[2:])
    delta_col = delta.reshape(n, groups, c_out // groups, positions)  # (N, g, C_out/g, P)
    g_col = (w_col.transpose(1, 2) @ delta_col).flatten(1, 2)  # (N, C·K, P)
    if weight.dim() == 4:
        return fold(g_col, size, weight.shape[2:], dilation, padding, stride)
    return conv_fold(g_col, size, weight.shape[2:], stride, padding, dilation,
                     delta.shape[2:])


class ConvForm(NamedTuple):
    """One way of computing the three maps every layer below is made of."""

    forward: Callable[..., Tensor]  # z = W ⋆ a + b
    input_grad: Callable[..., Tensor]  # fold(W_colᵀ δ_col)
    weight_grad: Callable[..., Tensor]  # Σ δ_col a_colᵀ


CONV_FORMS = {
    "unfold": ConvForm(conv_ref_fwd, conv_ref_input_grad, conv_ref_weight_grad),
    "conv": ConvForm(conv_fwd, conv_input_grad, conv_weight_grad),
    # torch's forward, BP2 and BP4 unfolded over the whole batch (one GEMM for BP4)
    "gemm": ConvForm(conv_fwd, conv_input_grad_gemm, conv_weight_grad_gemm),
}


# ---------------------------------------------------------------- the Functions, any d
class ConvNdFunction(BPFunction):
    """z^l = W^l ⋆ a^{l-1} + b^l over d = 1, 2 or 3 spatial dims (Conv1d, Conv3d).

    Backward, given grad_output = δ^l: BP3 Σ_p δ_p, BP4 Σ_p δ_p a_col,pᵀ, and W's
    transposed convolution of δ (fold(W_colᵀ δ), BP2's factor) passed down.

    Batch-first: input (N, C_in, *S), weight (C_out, C_in/groups, *k), bias (C_out,),
    output (N, C_out, *S_out); d is weight.dim() − 2. ``padding`` is a tuple or
    "valid"/"same". ``path``: "conv" (default: torch's conv{d}d forward, BP2 as
    conv_transpose{d}d, BP4 as a correlation), "unfold" (the reference, both ways) or
    "gemm" (torch's forward; BP4 as one GEMM over the whole batch, BP2 unfolded and folded).
    Saves the input and the weights, BP4's and BP2's other factors.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Sizes,
                padding: Sizes | str, dilation: Sizes, groups: int,
                path: str = "conv") -> Tensor:
        if path != "unfold":  # "conv", "gemm": torch's forward
            return conv_fwd(input, weight, bias, stride, padding, dilation, groups)
        sym, extra = conv_padding(padding, weight.shape[2:], stride, dilation)
        return conv_ref_fwd(pad_end(input, extra), weight, bias, stride, sym, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias, stride, padding, dilation, groups, path = inputs
        ctx.padding, ctx.extra = conv_padding(padding, weight.shape[2:], stride, dilation)
        ctx.stride, ctx.dilation, ctx.groups, ctx.path = stride, dilation, groups, path
        ctx.save_for_backward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        delta, need, form = grad_output, ctx.needs_input_grad, CONV_FORMS[ctx.path]
        size = a_prev.shape[2:]
        # "same" with an even kernel: the odd end padding is part of the input the
        # backward sees; its error is cropped off below
        a_prev = pad_end(a_prev, ctx.extra)
        opts = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups)
        grad_input = grad_weight = grad_bias = None
        if need[0]:
            # z = W ⋆ a_prev + b  →  BP2's factor: fold(W_colᵀ δ), W's transposed
            # convolution of δ
            grad_input = form.input_grad(delta, weight, a_prev.shape[2:], *opts)
            grad_input = grad_input[(..., *(slice(n) for n in size))]
        if need[1]:
            # z = W ⋆ a_prev + b  →  BP4: dW = Σ_{n,p} δ_p a_col,pᵀ
            grad_weight = form.weight_grad(delta, a_prev, weight.shape[2:], *opts)
        if need[2]:
            grad_bias = conv_bias_grad(delta)  # z = … + b  →  BP3
        grads = grad_input, grad_weight, grad_bias, None, None, None, None, None
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and a^{l-1} to it
            grads = per_example("conv", ctx, grads, delta, a_prev)
        return grads


class ConvTransposeNdFunction(BPFunction):
    """z^l = (W^l)ᵀ ⋆ a^{l-1} + b^l: the adjoint of the convolution with W, over d = 1, 2
    or 3 spatial dims (ConvTranspose1d/2d/3d); the derivation is the section comment.

    Backward, given grad_output = δ^l: BP2's factor is the convolution of δ with W (the
    convolution's forward), BP4 the convolution's BP4 with a^{l-1} and δ swapped
    (Σ_{n,p} a_p δ_col,pᵀ), BP3 Σ_q δ_q.

    Batch-first: input (N, C_in, *S), weight (C_in, C_out/groups, *k), bias (C_out,),
    output (N, C_out, *S_out), S_out = (S − 1)s − 2p + dil(k − 1) + output_padding + 1.
    ``path``: "conv" (default: torch's conv_transpose{d}d forward, BP2 as conv{d}d, BP4
    as a correlation) or "unfold" (the reference). Saves the input and the weights.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Sizes,
                padding: Sizes, output_padding: Sizes, groups: int, dilation: Sizes,
                path: str = "conv") -> Tensor:
        d = weight.dim() - 2
        if path == "conv":
            return _CONV_TRANSPOSE[d](input, weight, bias, stride, padding, output_padding,
                                      groups, dilation)
        size = conv_transpose_out_size(input.shape[2:], weight.shape[2:], stride, padding,
                                       output_padding, dilation)
        # z = fold(W_colᵀ a_col) + b: the convolution's BP2 applied to a
        z = conv_ref_input_grad(input, weight, size, stride, padding, dilation, groups)
        return z if bias is None else z + bias.view(-1, *(1,) * d)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias, stride, padding, _output_padding, groups, dilation, path = inputs
        ctx.stride, ctx.padding, ctx.dilation = stride, padding, dilation
        ctx.groups, ctx.path = groups, path
        ctx.save_for_backward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        delta, need, form = grad_output, ctx.needs_input_grad, CONV_FORMS[ctx.path]
        opts = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups)
        grad_input = grad_weight = grad_bias = None
        if need[0]:
            # z = Tᵀ a_prev + b  →  BP2's factor: T δ, the convolution of δ with W. An
            # output_padding ≥ s (allowed where dil > s) adds a position past a's end: cut
            grad_input = form.forward(delta, weight, None, *opts)
            grad_input = grad_input[(..., *(slice(n) for n in a_prev.shape[2:]))]
        if need[1]:
            # z = T_Wᵀ a_prev + b  →  BP4: the convolution's, a_prev and δ swapped
            grad_weight = form.weight_grad(a_prev, delta, weight.shape[2:], *opts)
        if need[2]:
            grad_bias = conv_bias_grad(delta)  # z = … + b  →  BP3
        grads = grad_input, grad_weight, grad_bias, *(None,) * 6
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and a^{l-1} to it
            grads = per_example("conv_transpose", ctx, grads, delta, a_prev)
        return grads


# ---------------------------------------------------------------- padding modes
# Conv{1,2,3}d(padding_mode="reflect" | "replicate" | "circular") pads a^{l-1} first, as
# torch does, then convolves with no padding. Each mode reads the input at an index map
# i ↦ src(i) per dim (reflect: mirror about the edge pixel; replicate: clamp to the edge;
# circular: wrap around), so
#     forward   a_pad = a.index_select(dim, src)           (a gather, dim by dim)
#     backward  ∂C/∂a = 0.index_add(dim, src, ∂C/∂a_pad)   (its adjoint: scatter-add)
# every padded pixel's error goes back to the pixel it copied.
def pad_index(n: int, left: int, right: int, mode: str, device: torch.device) -> Tensor:
    """src(i) for i = −left … n + right − 1 of one dim of size ``n``."""
    i = torch.arange(-left, n + right, device=device)
    if mode == "circular":
        return i.remainder(n)
    if mode == "reflect":
        return (n - 1) - ((n - 1) - i.abs()).abs()
    return i.clamp(0, n - 1)  # replicate


class ModePadFunction(BPFunction):
    """a_pad = a[src(i)] along each padded dim (``mode`` "reflect", "replicate" or
    "circular"); ``pad`` in F.pad's order: (left, right) of the last dim first.

    Backward: the scatter-add of δ onto the source pixels (the gather's transpose).
    Saves nothing but the sizes."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, pad: Sizes, mode: str) -> Tensor:
        a = input
        for j in range(len(pad) // 2):
            dim = input.dim() - 1 - j
            src = pad_index(a.shape[dim], pad[2 * j], pad[2 * j + 1], mode, a.device)
            a = a.index_select(dim, src)
        return a

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, ctx.pad, ctx.mode = inputs
        ctx.shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        delta, shape, p = grad_output, ctx.shape, ctx.pad
        for j in range(len(p) // 2):
            dim = len(shape) - 1 - j
            src = pad_index(shape[dim], p[2 * j], p[2 * j + 1], ctx.mode, delta.device)
            # a_pad = a.index_select(dim, src)  →  ∂C/∂a: scatter-add along src
            size = (*delta.shape[:dim], shape[dim], *delta.shape[dim + 1:])
            delta = delta.new_zeros(size).index_add(dim, src, delta)
        return delta, None, None


__all__ = [
    "BP4_UNFOLD_DEVICES", "CONV_FORMS", "ConvForm", "ConvNdFunction", "ConvTransposeNdFunction",
    "ModePadFunction", "conv_bias_grad", "conv_fold", "conv_fwd", "conv_input_grad",
    "conv_out_size", "conv_padding", "conv_ref_fwd", "conv_ref_input_grad",
    "conv_ref_weight_grad", "conv_transpose_out_size", "conv_unfold", "conv_weight_grad",
    "pad_end", "pad_index", "patch_index", "Conv2dFunction", "bp4_unfolded", "conv2d_bias_grad",
    "conv2d_bwd", "conv2d_fused_bwd", "conv2d_input_grad", "conv2d_padding",
    "conv2d_unfold_bwd", "conv2d_unfold_fwd", "conv2d_weight_grad",
    "conv2d_weight_grad_unfold",
    "CONV2D_BACKWARDS", "bp2_unfolded", "bp4_unfolded_cpu", "conv2d_gemm_bwd", "conv_cols",
    "conv_input_grad_gemm", "conv_weight_grad_gemm", "CONV_KERNELS_IN_AUTO",
]

# moved out of this file (one release): the pool, dropout and flatten Functions, the checks
__getattr__ = moved(__name__, {
    "MaxPool2dFunction": "bptorch.functions.pool",
    "DropoutFunction": "bptorch.functions.dropout",
    "FlattenFunction": "bptorch.functions.dropout",
    "dropout_mask": "bptorch.functions.dropout",
    "Conv2dFeedbackFunction": "bptorch.functions.feedback",
    **{name: "bptorch._checks" for name in ("check_4d", "check_conv2d", "check_dropout_p",
                                            "check_pool2d", "pool2d_out_size")},
})


# ================================================================ Triton kernels
# BP4 and BP2 of Conv2d as implicit-GEMM kernels over the whole batch (bptorch.kernels:
# "triton"; "auto" once CONV_KERNELS_IN_AUTO). They compute the one-GEMM form above,
#
#     BP4   dW_col[o, k] = Σ_l δ_col[o, l] a_col[k, l]      l = (n, p) over the batch
#     BP2   ∂C/∂a[n, c, q] = Σ_{o,t} W[o, c, t] δ[n, o, p]  over the (o, tap t) whose
#                                                            position p reads pixel q
#
# without materialising a_col: a tile of a_col is loaded straight from a^{l−1} through the
# convolution's index map (row k = (c, r, s), column l = (n, oh, ow) reads pixel
# (oh·s_h + r·d_h − p_h, ow·s_w + s·d_w − p_w) of map c of example n, zero outside), and
# BP2 gathers, for each input pixel q and (o, r, s), the δ entry at oh = (q_h + p_h −
# r·d_h)/s_h where that is a whole number inside the map. BP4's reduction runs over
# N·H_out·W_out, far more than its C_out × C·k_h·k_w output: it is split over programs
# (split-K), each writing a partial sum, reduced by one sum. Arithmetic in float32
# (float64 for float64); float32 operands go through TF32 where torch lets cuDNN's
# convolutions use it (torch.backends.cudnn.allow_tf32, on by default), as the "conv"
# path does. Built on first use; tests/test_conv_gemm.py runs both through Triton's
# interpreter against the unfolded reference.
_CONV_KERNELS: dict[str, Any] = {}
# Whether "auto" takes these kernels on CUDA as it takes the norms' and activations': not
# until a GPU has timed them against cuDNN (benchmarks/cuda.sh, stage convkernels; target
# ≤ 1.5× its weight-gradient kernel at every ResNet shape). Until then "triton" only.
CONV_KERNELS_IN_AUTO = False
_TL_DTYPE: dict[torch.dtype, Any] = {}  # torch dtype -> triton's, filled with the kernels
# the programs BP4's split aims at (a few per SM of a large GPU), and the fewest positions
# a program reduces over
BP4_PROGRAMS, BP4_MIN_SPAN = 512, 256


def _conv_triton_kernels() -> dict[str, Any]:
    """The kernels, built first if need be (in a compiled region too: :func:`base.built`)."""
    built(_build_conv_triton_kernels)
    return _CONV_KERNELS


def _build_conv_triton_kernels() -> dict[str, Any]:
    """The @triton.jit kernels and their custom ops, built once."""
    if _CONV_KERNELS:
        return _CONV_KERNELS
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    from .base import count_launch, kernel_op

    @triton.jit
    def conv2d_bp4_kernel(delta_ptr, a_ptr, dw_ptr, C_in, H, W, C_out, OH, OW, KH, KW,
                          SH, SW, PH, PW, DH, DW, C_in_g, C_out_g, L, span,
                          ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BL: tl.constexpr):
        """Tile (o, k) of group g, positions l in [split·span, (split+1)·span):
        partial[split, o, k] = Σ_l δ_col[o, l] a_col[k, l]  (BP4, one GEMM's tile)."""
        pid, split, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        K = C_in_g * KH * KW
        tiles_k = tl.cdiv(K, BN)
        o = (pid // tiles_k) * BM + tl.arange(0, BM)  # output map, within the group
        k = (pid % tiles_k) * BN + tl.arange(0, BN)  # a_col's row k = (c, r, s)
        c, rs = k // (KH * KW), k % (KH * KW)
        r, s = rs // KW, rs % KW
        o_ok, k_ok = o < C_out_g, k < K
        P = OH * OW
        acc = tl.zeros((BM, BN), dtype=ACC)
        start = split * span
        end = tl.minimum(start + span, L)
        for l0 in range(start, end, BL):
            l = l0 + tl.arange(0, BL)  # columns (n, oh, ow) of the whole batch
            l_ok = l < end
            n, p = (l // P).to(tl.int64), l % P
            oh, ow = p // OW, p % OW
            # δ_col[o, l] = δ[n, g·C_out/g + o, oh, ow]
            d_at = (n[None, :] * C_out + grp * C_out_g + o[:, None]) * P + p[None, :]
            delta = tl.load(delta_ptr + d_at, mask=o_ok[:, None] & l_ok[None, :], other=0.0)
            # a_col[k, l] = a[n, g·C/g + c, oh·s_h + r·d_h − p_h, ow·s_w + s·d_w − p_w]
            ih = oh[:, None] * SH + r[None, :] * DH - PH
            iw = ow[:, None] * SW + s[None, :] * DW - PW
            a_ok = (l_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H)
                    & (iw >= 0) & (iw < W))  # zero padding: nothing is read there
            a_at = ((n[:, None] * C_in + grp * C_in_g + c[None, :]) * H + ih) * W + iw
            a_col = tl.load(a_ptr + a_at, mask=a_ok, other=0.0)  # (BL, BN), a_colᵀ's tile
            acc += tl.dot(delta.to(DOT), a_col.to(DOT), input_precision=PRECISION,
                          out_dtype=ACC)
        out = (split * C_out + grp * C_out_g + o[:, None]) * K + k[None, :]
        tl.store(dw_ptr + out, acc, mask=o_ok[:, None] & k_ok[None, :])

    @triton.jit
    def conv2d_bp2_kernel(delta_ptr, w_ptr, dx_ptr, N, C_in, H, W, C_out, OH, OW, KH, KW,
                          SH, SW, PH, PW, DH, DW, C_in_g, C_out_g,
                          ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """Pixels m = (n, ih, iw) by input maps c of group g:
        ∂C/∂a[n, c, ih, iw] = Σ_{(o,r,s)} δ[n, o, oh, ow] W[o, c, r, s] over the taps with
        oh·s_h = ih + p_h − r·d_h and ow·s_w = iw + p_w − s·d_w inside δ's maps (BP2's
        factor: W_colᵀ δ_col folded, the fold done by the gather)."""
        pid_m, pid_c, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        m = pid_m * BM + tl.arange(0, BM)
        m_ok = m < N * H * W
        n, q = (m // (H * W)).to(tl.int64), m % (H * W)
        ih, iw = q // W, q % W
        c = pid_c * BN + tl.arange(0, BN)  # input map, within the group
        c_ok = c < C_in_g
        R = C_out_g * KH * KW
        acc = tl.zeros((BM, BN), dtype=ACC)
        for k0 in range(0, R, BK):
            k = k0 + tl.arange(0, BK)  # (o, r, s): an output map and a tap
            k_ok = k < R
            o, rs = k // (KH * KW), k % (KH * KW)
            r, s = rs // KW, rs % KW
            th = ih[:, None] + PH - r[None, :] * DH  # = oh·s_h, if a position reads it
            tw = iw[:, None] + PW - s[None, :] * DW
            oh, ow = th // SH, tw // SW
            hit = ((th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0)
                   & (oh < OH) & (ow < OW) & m_ok[:, None] & k_ok[None, :])
            d_at = ((n[:, None] * C_out + grp * C_out_g + o[None, :]) * OH + oh) * OW + ow
            delta = tl.load(delta_ptr + d_at, mask=hit, other=0.0)  # (BM, BK)
            w_at = ((grp * C_out_g + o[:, None]) * C_in_g + c[None, :]) * (KH * KW) \
                + rs[:, None]  # W[o, c, r, s]
            w = tl.load(w_ptr + w_at, mask=k_ok[:, None] & c_ok[None, :], other=0.0)
            acc += tl.dot(delta.to(DOT), w.to(DOT), input_precision=PRECISION, out_dtype=ACC)
        out = ((n[:, None] * C_in + grp * C_in_g + c[None, :]) * H + ih[:, None]) * W \
            + iw[:, None]
        tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])

    def _fake_bp4(delta, a, kh, kw, sh, sw, ph, pw, dh, dw, groups, tf32):
        return a.new_empty(delta.shape[1], a.shape[1] // groups, kh, kw, dtype=_acc_dtype(a))

    @kernel_op("conv2d_bp4", _fake_bp4)
    def conv2d_bp4_op(delta: Tensor, a: Tensor, kh: int, kw: int, sh: int, sw: int, ph: int,
                      pw: int, dh: int, dw: int, groups: int, tf32: bool) -> Tensor:
        n, c_in, h, w = a.shape
        c_out, oh, ow = delta.shape[1:]
        c_in_g, c_out_g = c_in // groups, c_out // groups
        k, positions = c_in_g * kh * kw, n * oh * ow
        bm, bn, bl = _block(c_out_g, 64), _block(k, 64), 32
        tiles = triton.cdiv(c_out_g, bm) * triton.cdiv(k, bn)
        # split-K: enough programs to fill the GPU, each reducing ≥ BP4_MIN_SPAN positions
        splits = max(1, min(triton.cdiv(positions, BP4_MIN_SPAN),
                            triton.cdiv(BP4_PROGRAMS, tiles * groups)))
        span = triton.cdiv(triton.cdiv(positions, splits), bl) * bl
        splits = max(1, triton.cdiv(positions, span))
        acc = _acc_dtype(a)
        partial = a.new_empty(splits, c_out, k, dtype=acc)
        count_launch("conv2d_bp4")
        wrap_triton(conv2d_bp4_kernel)[(tiles, splits, groups)](
            delta, a, partial, c_in, h, w, c_out, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
            c_in_g, c_out_g, positions, span, ACC=_TL_DTYPE[acc], DOT=_dot_dtype(a),
            PRECISION="tf32" if tf32 else "ieee", BM=bm, BN=bn, BL=bl)
        return partial.sum(0).view(c_out, c_in_g, kh, kw)  # the split's partial sums

    def _fake_bp2(delta, weight, h, w, sh, sw, ph, pw, dh, dw, groups, tf32):
        return delta.new_empty(delta.shape[0], weight.shape[1] * groups, h, w)

    @kernel_op("conv2d_bp2", _fake_bp2)
    def conv2d_bp2_op(delta: Tensor, weight: Tensor, h: int, w: int, sh: int, sw: int,
                      ph: int, pw: int, dh: int, dw: int, groups: int, tf32: bool) -> Tensor:
        n, c_out, oh, ow = delta.shape
        c_in_g, kh, kw = weight.shape[1:]
        dx = delta.new_empty(n, c_in_g * groups, h, w)
        bm, bn, bk = 64, _block(c_in_g, 64), 32
        grid = (triton.cdiv(n * h * w, bm), triton.cdiv(c_in_g, bn), groups)
        count_launch("conv2d_bp2")
        wrap_triton(conv2d_bp2_kernel)[grid](
            delta, weight, dx, n, c_in_g * groups, h, w, c_out, oh, ow, kh, kw, sh, sw, ph,
            pw, dh, dw, c_in_g, c_out // groups, ACC=_TL_DTYPE[_acc_dtype(delta)],
            DOT=_dot_dtype(delta), PRECISION="tf32" if tf32 else "ieee", BM=bm, BN=bn, BK=bk)
        return dx

    _TL_DTYPE.update({torch.float32: tl.float32, torch.float64: tl.float64,
                      torch.float16: tl.float16, torch.bfloat16: tl.bfloat16})
    _CONV_KERNELS.update(conv2d_bp4=conv2d_bp4_op, conv2d_bp2=conv2d_bp2_op)
    return _CONV_KERNELS


def _acc_dtype(x: Tensor) -> torch.dtype:
    """The kernels' arithmetic dtype: float64 for float64, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dot_dtype(x: Tensor) -> Any:
    """The dtype tl.dot multiplies in: the operands' own, except bfloat16 under Triton's
    interpreter, whose dot on bfloat16 is wrong (Triton 3.8: 1e10 off on a 16×16 product);
    there the tiles go up to float32, which is exact for bfloat16 products."""
    if x.dtype == torch.bfloat16 and not x.is_cuda:
        return _TL_DTYPE[torch.float32]
    return _TL_DTYPE[x.dtype]


def _block(size: int, most: int) -> int:
    """A tile side for ``size`` rows: a power of two from 16 (tl.dot's least) to ``most``."""
    return max(16, min(most, 1 << max(0, size - 1).bit_length()))


def _tf32(x: Tensor) -> bool:
    """Whether float32 operands may go through TF32, as cuDNN's convolutions would."""
    return x.is_cuda and x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def conv2d_triton_bwd(delta: Tensor, a_prev: Tensor, weight: Tensor, stride: Pair,
                      padding: Pair, dilation: Pair, groups: int,
                      need: Need) -> tuple[Tensor | None, Tensor | None]:
    """:func:`conv2d_gemm_bwd` as the two implicit-GEMM kernels: (BP2's factor, BP4)."""
    kernels = _conv_triton_kernels()
    delta = delta.contiguous()
    geometry = (*stride, *padding, *dilation, groups, _tf32(delta))
    grad_input = grad_weight = None
    if need[0]:
        # z_col = W_col @ a_col  →  BP2's factor: fold(W_colᵀ δ_col), as one gather-GEMM
        grad_input = kernels["conv2d_bp2"](delta, weight.contiguous(), *a_prev.shape[2:],
                                           *geometry)
    if need[1]:
        # z_col = W_col @ a_col  →  BP4: dW_col = δ_col a_colᵀ, a_col read in place
        grad_weight = kernels["conv2d_bp4"](delta, a_prev.contiguous(), *weight.shape[2:],
                                            *geometry).to(weight.dtype)
    return grad_input, grad_weight


__all__ += ["conv2d_triton_bwd"]
