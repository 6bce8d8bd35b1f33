"""Input checks of the functional forms: clear errors instead of silent broadcasts or
cryptic matmul messages, one family after another (linear, costs, conv and pooling,
dropout, normalization, embedding, attention). The Functions in ``bptorch.functions``
check nothing: ``bptorch.functional`` checks, then applies them, and the ``nn`` modules
call ``functional``.

Each check reads only shapes, dtypes and devices (no sync), except the range checks of
``check_cost_inputs`` (class indices, probabilities) and ``check_embedding`` (indices),
which must look at the values.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .functions.base import Padding, Pair
from .functions.conv import conv2d_padding
from .functions.conv import Sizes, conv_padding, conv_transpose_out_size
from .functions.costs import one_hot  # noqa: F401  (network.py imports it from here)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_floating(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {t.dtype}; "
            f"convert it first, e.g. {name}.float()"
        )


def check_same(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` must share ``ref``'s dtype and device (torch.autocast excepted for dtype)."""
    if t.device != ref.device:
        raise RuntimeError(
            f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
            f"move them to the same device (e.g. {name}.to({ref_name}.device))"
        )
    if t.dtype != ref.dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(
            f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; "
            f"use the same dtype (e.g. {name}.to({ref_name}.dtype))"
        )


# ---------------------------------------------------------------- linear and costs
def check_linear(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    check_floating("weight", weight)
    check_floating("input", input)
    check_same("input", input, "weight", weight)
    if bias is not None:
        check_same("bias", bias, "weight", weight)
    if weight.dim() != 2:
        raise ValueError(
            f"expected weight of shape (out_features, in_features), got {_shape(weight)}"
        )
    if input.dim() == 0:
        raise ValueError("input must have shape (*, in_features), got a 0-dim tensor")
    out_features, in_features = weight.shape
    if input.shape[-1] != in_features:
        raise ValueError(
            f"expected input of shape (*, in_features={in_features}), "
            f"got shape {_shape(input)} (last dimension {input.shape[-1]})"
        )
    if bias is not None and _shape(bias) != (out_features,):
        raise ValueError(
            f"expected bias of shape (out_features={out_features},), got {_shape(bias)}"
        )


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _values_readable(t: Tensor) -> bool:
    """Whether a check may read ``t``'s values: not while compiling (a graph break,
    and no ``fullgraph=True``), not under torch.func transforms (vmap cannot call
    .item() on a batched tensor), not on the meta device (no values at all)."""
    return (not t.is_meta and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def check_cost_inputs(
    output: Tensor, target: Tensor, what: str = "output", probabilities: bool = False
) -> Tensor:
    """Validate ``(output, target)`` for a cost: ``output`` (*, C), classes last; ``target``
    class indices of shape (*) in [0, C), or a float tensor of ``output``'s shape.

    With ``probabilities=True`` (the costs on a^L that take logarithms) ``output`` must lie
    in [0, 1]: values outside are the mark of logits z^L passed by mistake, and a NaN or
    inf is reported as such, with the index of the first. Only the output is checked,
    never the target (soft targets are legitimate). The value checks
    cost one reduction and a sync each; they are skipped where values cannot be read
    (see ``_values_readable``). Returns the target unchanged.
    """
    check_floating(what, output)
    if output.dim() == 0:
        raise ValueError(f"expected {what} of shape (*, C), classes last, got a 0-dim tensor")
    positions, n_out = _shape(output)[:-1], output.shape[-1]
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != output.device:
        raise RuntimeError(
            f"target is on {target.device} but {what} is on {output.device}; "
            "move them to the same device"
        )
    if target.dtype in _INDEX_DTYPES:
        if _shape(target) != positions:
            raise ValueError(
                f"class-index target must have shape (*) = {positions}, {what}'s shape "
                f"without its last (class) dimension, for {what} of shape "
                f"{_shape(output)}; got {_shape(target)}"
            )
        if target.numel() and _values_readable(target):
            lo, hi = torch.aminmax(target.reshape(-1))
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= n_out:
                raise ValueError(
                    f"class indices must lie in [0, {n_out - 1}] for {n_out} outputs, "
                    f"got values in [{lo}, {hi}]"
                )
    elif not target.is_floating_point():
        raise TypeError(
            f"target must be class indices (an integer tensor of shape (*) = {positions}) "
            f"or a float tensor of {what}'s shape, got dtype {target.dtype}"
        )
    else:
        if target.shape != output.shape:
            mismatch = (f"target shape {_shape(target)} does not match {what} shape "
                        f"{_shape(output)}; costs do not broadcast. ")
            if _shape(target) == positions:  # class indices held as floats, by the shape
                raise ValueError(
                    mismatch + f"A float target of shape {positions} looks like class "
                    f"indices: pass class indices as int64 (target.long()), or one-hot/"
                    f"probability targets of {what}'s shape {_shape(output)}"
                )
            raise ValueError(
                mismatch + f"Pass class indices (int64) of shape {positions}, or one-hot/"
                f"probability targets of {what}'s shape {_shape(output)}"
            )
        check_same("target", target, what, output)
    if probabilities and output.numel() and _values_readable(output):
        lo, hi = torch.aminmax(output.detach())  # one pass for both ends
        lo, hi = lo.item(), hi.item()
        if not (math.isfinite(lo) and math.isfinite(hi)):  # aminmax passes NaN on
            bad = ~torch.isfinite(output.detach())
            first = tuple(bad.nonzero()[0].tolist())
            raise ValueError(
                f"{what} must be finite, got {output[first].item()} at index {first} "
                f"({int(bad.sum())} of {output.numel()} values are NaN or inf); this cost "
                f"takes probabilities in [0, 1]: look for an overflow in the forward pass "
                f"(e.g. a learning rate too large)"
            )
        if not (lo >= 0 and hi <= 1):
            raise ValueError(
                f"{what} must hold probabilities in [0, 1] for this cost (a^L after a "
                f"sigmoid or softmax), got values in [{lo:.4g}, {hi:.4g}]; if {what} holds "
                f"logits z^L, pass logits=True (e.g. CrossEntropyCost(logits=True), "
                f"LogLikelihoodCost(logits=True))"
            )
    return target


# ---------------------------------------------------------------- conv, pooling, dropout
def check_4d(name: str, input: Tensor, unbatched: bool = False) -> None:
    """``input`` must be a floating-point (N, C, H, W) (or, if allowed, (C, H, W)) tensor."""
    check_floating(name, input)
    if input.dim() != 4 and not (unbatched and input.dim() == 3):
        want = "(N, C, H, W) or (C, H, W)" if unbatched else "(N, C, H, W)"
        raise ValueError(
            f"expected {name} of shape {want}, got shape {_shape(input)} "
            f"({input.dim()} dims); reshape flat MNIST rows with {name}.view(-1, 1, 28, 28)"
        )


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


_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _check_conv_common(fn: str, input: Tensor, weight: Tensor, bias: Tensor | None,
                       d: int, options: dict[str, tuple], groups: int) -> None:
    """What conv{d}d and conv_transpose{d}d share: dtypes, devices, ranks, option lengths."""
    check_floating("input", input)
    check_floating("weight", weight)
    check_same("input", input, "weight", weight)
    if bias is not None:
        check_same("bias", bias, "weight", weight)
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(
            f"{fn}: expected input of shape (N, C_in, {_SPATIAL[d]}) or unbatched "
            f"(C_in, {_SPATIAL[d]}), got shape {_shape(input)} ({input.dim()} dims)")
    if weight.dim() != d + 2:
        raise ValueError(f"{fn}: expected a {d + 2}-dim weight (channels, channels, "
                         f"{_SPATIAL[d]} of the kernel), got shape {_shape(weight)}")
    for name, value in options.items():
        if len(value) != d:
            raise ValueError(f"{fn}: expected {name} with {d} value(s), one per spatial "
                             f"dim, got {value}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive integer, got {groups!r}")
    if min(options["stride"]) < 1 or min(options["dilation"]) < 1:
        raise ValueError(f"{fn}: stride and dilation must be >= 1, got "
                         f"{options['stride']}, {options['dilation']}")


def check_conv(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Sizes,
               padding: Sizes | str, dilation: Sizes, groups: int, d: int) -> None:
    """conv{d}d: input (N, C_in, *S) or (C_in, *S), weight (C_out, C_in/groups, *k)."""
    fn = f"conv{d}d"
    options = {"stride": stride, "dilation": dilation}
    if not isinstance(padding, str):
        options["padding"] = padding
    _check_conv_common(fn, input, weight, bias, d, options, groups)
    c_out, c_in_g, *k = weight.shape
    c_in = input.shape[-d - 1]
    if c_in != c_in_g * groups:
        raise ValueError(
            f"{fn}: expected input with in_channels={c_in_g * groups} channels (weight's "
            f"{c_in_g} per group × groups={groups}), got {c_in} (input shape "
            f"{_shape(input)}, weight shape {_shape(weight)})")
    if c_out % groups:
        raise ValueError(f"{fn}: out_channels={c_out} (weight shape {_shape(weight)}) must "
                         f"be divisible by groups={groups}")
    if bias is not None and _shape(bias) != (c_out,):
        raise ValueError(f"{fn}: expected bias of shape (out_channels={c_out},), got "
                         f"{_shape(bias)}")
    sym, extra = conv_padding(padding, k, stride, dilation)
    if min(sym) < 0:
        raise ValueError(f"{fn}: padding must be >= 0, got {padding}")
    size = tuple(n + 2 * p + e for n, p, e in zip(input.shape[-d:], sym, extra))
    span = tuple(dl * (kk - 1) + 1 for kk, dl in zip(k, dilation))
    if any(s > n for s, n in zip(span, size)):
        raise ValueError(
            f"{fn}: kernel size {tuple(k)} (spanning {span} with dilation {dilation}) is "
            f"larger than the padded input {size} (input shape {_shape(input)}, padding "
            f"{padding})")


def check_conv_transpose(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Sizes,
                         padding: Sizes, output_padding: Sizes, groups: int, dilation: Sizes,
                         d: int) -> None:
    """conv_transpose{d}d: input (N, C_in, *S) or (C_in, *S), weight
    (C_in, C_out/groups, *k); output_padding below stride or dilation, as torch."""
    fn = f"conv_transpose{d}d"
    if isinstance(padding, str):
        raise ValueError(f"{fn}: padding must be int(s), got {padding!r} (the transposed "
                         "convolution has no 'same'/'valid')")
    _check_conv_common(fn, input, weight, bias, d, {
        "stride": stride, "padding": padding, "output_padding": output_padding,
        "dilation": dilation}, groups)
    c_in, c_out_g, *k = weight.shape
    if input.shape[-d - 1] != c_in:
        raise ValueError(
            f"{fn}: expected input with in_channels={c_in} channels (weight's dim 0, "
            f"weight shape {_shape(weight)}), got {input.shape[-d - 1]} (input shape "
            f"{_shape(input)})")
    if c_in % groups:
        raise ValueError(f"{fn}: in_channels={c_in} (weight shape {_shape(weight)}) must "
                         f"be divisible by groups={groups}")
    if bias is not None and _shape(bias) != (c_out_g * groups,):
        raise ValueError(f"{fn}: expected bias of shape (out_channels={c_out_g * groups},), "
                         f"got {_shape(bias)}")
    if min(padding) < 0 or min(output_padding) < 0:
        raise ValueError(f"{fn}: padding and output_padding must be >= 0, got {padding}, "
                         f"{output_padding}")
    if any(op >= s and op >= dl for op, s, dl in zip(output_padding, stride, dilation)):
        raise ValueError(f"{fn}: output_padding must be smaller than either stride or "
                         f"dilation, got output_padding={output_padding}, stride={stride}, "
                         f"dilation={dilation}")
    out = conv_transpose_out_size(input.shape[-d:], k, stride, padding, output_padding,
                                  dilation)
    if min(out) < 1:
        raise ValueError(f"{fn}: the output size {out} is too small (input shape "
                         f"{_shape(input)}, kernel {tuple(k)}, stride {stride}, padding "
                         f"{padding}); use less padding")


def check_mode_pad(input: Tensor, pad: Sizes, mode: str) -> None:
    """Conv's padding_mode: ``pad`` (F.pad's order) at most the size for "circular" and
    below it for "reflect", as torch."""
    check_floating("input", input)
    if mode not in ("reflect", "replicate", "circular"):
        raise ValueError(f"padding mode must be 'reflect', 'replicate' or 'circular', got "
                         f"{mode!r}")
    if len(pad) % 2 or len(pad) // 2 > input.dim() - 1:
        raise ValueError(f"pad must hold (left, right) pairs for at most {input.dim() - 1} "
                         f"dims, got {tuple(pad)}")
    for j in range(len(pad) // 2):
        n, (left, right) = input.shape[-1 - j], pad[2 * j: 2 * j + 2]
        if min(left, right) < 0:
            raise ValueError(f"{mode} padding must be >= 0, got {tuple(pad)}")
        if mode == "reflect" and max(left, right) >= n:
            raise ValueError(f"reflect padding {(left, right)} must be smaller than the "
                             f"size {n} of dim {input.dim() - 1 - j} (input shape "
                             f"{_shape(input)})")
        if mode == "circular" and max(left, right) > n:
            raise ValueError(f"circular padding {(left, right)} must be at most the size "
                             f"{n} of dim {input.dim() - 1 - j} (input shape "
                             f"{_shape(input)})")


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


def check_dropout_nd(name: str, input: Tensor, min_dim: int) -> None:
    """A floating tensor with the (N, C) axes channel-wise dropout draws its mask over."""
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor")
    if input.dim() < min_dim:
        raise ValueError(
            f"{name} expects a tensor with at least {min_dim} dims (channel-wise dropout "
            f"draws one mask value per example and channel), got shape {_shape(input)}"
        )


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



# pooling and interpolation over d = 1, 2 or 3 spatial dims (the 2-d checks above predate them)
_SPATIAL_SHAPES = {1: "(N, C, L) or (C, L)", 2: "(N, C, H, W) or (C, H, W)",
                   3: "(N, C, D, H, W) or (C, D, H, W)"}


def check_pool_nd_input(input: Tensor, d: int) -> None:
    """A floating (N, C, *spatial) or unbatched (C, *spatial) tensor, d spatial dims."""
    check_floating("input", input)
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(f"expected input of shape {_SPATIAL_SHAPES[d]} for a {d}-d pool, "
                         f"got shape {_shape(input)} ({input.dim()} dims)")


def _check_windows(input: Tensor, d: int, kernel_size: tuple[int, ...],
                   stride: tuple[int, ...], padding: tuple[int, ...],
                   dilation: tuple[int, ...], ceil_mode: bool) -> None:
    """d of each, positive windows, padding at most half the kernel, an output of >= 1."""
    for name, v in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding),
                    ("dilation", dilation)):
        if len(v) != d:
            raise ValueError(f"{name} must be an int or a tuple of {d} ints for a {d}-d pool, "
                             f"got {v}")
    if min(kernel_size) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"kernel_size, stride and dilation must be >= 1, got "
                         f"{kernel_size}, {stride}, {dilation}")
    if min(padding) < 0 or any(p > k // 2 for p, k in zip(padding, kernel_size)):
        raise ValueError(f"pad should be at most half of kernel size, got padding {padding} "
                         f"for kernel_size {kernel_size}")
    out = tuple(pool2d_out_size(n, k, s, p, dl, ceil_mode) for n, k, s, p, dl in
                zip(input.shape[-d:], kernel_size, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(
            f"pooling window {kernel_size} (dilation {dilation}, padding {padding}) is larger "
            f"than the input {_shape(input)[-d:]}: output size {out} (input shape "
            f"{_shape(input)})"
        )


def check_max_pool(input: Tensor, d: int, kernel_size: tuple[int, ...],
                   stride: tuple[int, ...], padding: tuple[int, ...],
                   dilation: tuple[int, ...], ceil_mode: bool) -> None:
    """max_pool{d}d's input and windows."""
    check_pool_nd_input(input, d)
    _check_windows(input, d, kernel_size, stride, padding, dilation, ceil_mode)


def check_avg_pool(input: Tensor, d: int, kernel_size: tuple[int, ...],
                   stride: tuple[int, ...], padding: tuple[int, ...], ceil_mode: bool,
                   divisor_override: int | None) -> None:
    """avg_pool{d}d's input and windows."""
    check_pool_nd_input(input, d)
    _check_windows(input, d, kernel_size, stride, padding, (1,) * d, ceil_mode)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError("divisor_override must be non-zero")


def adaptive_output_size_nd(input: Tensor, output_size, d: int) -> tuple[int, ...]:
    """torch's output_size (int, d-tuple, None entries = the input's size) as a d-tuple."""
    check_pool_nd_input(input, d)
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size,) * d
    if len(output_size) != d:
        raise ValueError(f"output_size must be an int or a tuple of {d} for a {d}-d adaptive "
                         f"pool, got {output_size!r}")
    size = tuple(int(n) if o is None else int(o)
                 for o, n in zip(output_size, input.shape[-d:]))
    if min(size) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size!r}")
    return size


INTERPOLATE_MODES = {"nearest": (1, 2, 3), "nearest-exact": (1, 2, 3), "area": (1, 2, 3),
                     "linear": (1,), "bilinear": (2,), "trilinear": (3,)}


def interpolate_sizes(input: Tensor, size, scale_factor, mode: str, align_corners,
                      recompute_scale_factor, antialias: bool
                      ) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """torch's F.interpolate arguments -> (output size, the scale factors torch's kernel
    uses for the source coordinates, or None to use the sizes)."""
    check_floating("input", input)
    d = input.dim() - 2
    if d not in (1, 2, 3):
        raise ValueError(f"interpolate expects input of shape (N, C, L), (N, C, H, W) or "
                         f"(N, C, D, H, W), got shape {_shape(input)}")
    if mode not in INTERPOLATE_MODES:
        raise NotImplementedError(
            f"interpolate mode {mode!r} has no written-out backward in bptorch; it has "
            f"{sorted(INTERPOLATE_MODES)} (use torch.nn.functional.interpolate for it)")
    if d not in INTERPOLATE_MODES[mode]:
        raise NotImplementedError(f"Got {d + 2}D input, but {mode} mode needs "
                                  f"{INTERPOLATE_MODES[mode][0] + 2}D input")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True has no written-out backward "
                                  "in bptorch")
    if align_corners is not None and mode not in ("linear", "bilinear", "trilinear"):
        raise ValueError("align_corners option can only be set with the interpolating modes: "
                         "linear | bilinear | bicubic | trilinear")
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined" if size is not None
                         else "either size or scale_factor should be defined")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size.")
        out = tuple(size) if isinstance(size, (list, tuple)) else (size,) * d
        if len(out) != d:
            raise ValueError(f"size must be an int or a tuple of {d} for input of shape "
                             f"{_shape(input)}, got {size!r}")
        out = tuple(int(o) for o in out)
        scales = None
    else:
        f = tuple(scale_factor) if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * d
        if len(f) != d:
            raise ValueError(f"scale_factor must be a number or a tuple of {d} for input of "
                             f"shape {_shape(input)}, got {scale_factor!r}")
        out = tuple(int(n * s) for n, s in zip(input.shape[2:], f))  # torch's floor
        scales = None if recompute_scale_factor or mode == "area" else tuple(float(s) for s in f)
    if min(out) < 1:
        raise ValueError(f"interpolate: the output size {out} must be >= 1 along every axis "
                         f"(input shape {_shape(input)})")
    return out, scales

# ---------------------------------------------------------------- normalization
def check_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                     weight: Tensor | None, bias: Tensor | None, training: bool) -> None:
    """(N, C, *) input whose C matches every per-channel tensor; reads no values."""
    _check_per_channel(input, running_mean=running_mean, running_var=running_var,
                       weight=weight, bias=bias)
    c = input.shape[1]
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var must be given when training=False")
    # exactly one value is an error; none (an empty batch) is not: torch returns an empty
    # output and leaves the running statistics alone
    if training and input.numel() == c:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input of shape "
            f"{_shape(input)}"
        )


def _check_per_channel(input: Tensor, **tensors: Tensor | None) -> None:
    """A floating (N, C, *) input, and each given tensor (C,), on its device and dtype."""
    check_floating("input", input)
    if input.dim() < 2:
        raise ValueError(f"expected input of shape (N, C, *), got shape {_shape(input)}")
    c = input.shape[1]
    for name, t in tensors.items():
        if t is None:
            continue
        check_same(name, t, "input", input)
        if _shape(t) != (c,):
            raise ValueError(
                f"expected input with num_features={t.numel()} channels (dim 1) to match "
                f"{name} of shape {_shape(t)}, got input of shape {_shape(input)} "
                f"with {c} channels"
            )


def check_group_norm(input: Tensor, num_groups: int, weight: Tensor | None,
                     bias: Tensor | None) -> None:
    """(N, C, *) input with C divisible by num_groups, γ and β (C,); reads no values."""
    _check_per_channel(input, weight=weight, bias=bias)
    c = input.shape[1]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(
            f"expected the {c} channels of input (dim 1) to be divisible by num_groups, got "
            f"num_groups={num_groups!r} for input of shape {_shape(input)}"
        )
    # torch's check, which counts N·C/G·(spatial size) values, not those of one group
    if input.numel() // num_groups == 1:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input of shape "
            f"{_shape(input)} with num_groups={num_groups} (N·C/num_groups·spatial = 1)"
        )


def check_instance_norm(input: Tensor, running_mean: Tensor | None,
                        running_var: Tensor | None, weight: Tensor | None,
                        bias: Tensor | None, use_input_stats: bool) -> None:
    """(N, C, *) input, per-channel tensors (C,), running statistics when they are used,
    more than one spatial value when the input's own are; reads no values."""
    _check_per_channel(input, running_mean=running_mean, running_var=running_var,
                       weight=weight, bias=bias)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var must be given when "
                         "use_input_stats=False")
    if use_input_stats and input.dim() > 1 and math.prod(input.shape[2:]) == 1:
        raise ValueError(
            f"expected more than 1 spatial element per (example, channel) when the input's "
            f"own statistics are used, got input of shape {_shape(input)}"
        )


def check_layer_norm(input: Tensor, normalized_shape: tuple[int, ...],
                     weight: Tensor | None, bias: Tensor | None) -> None:
    """input (*, *normalized_shape) and γ, β of shape normalized_shape; reads no values."""
    check_floating("input", input)
    k = len(normalized_shape)
    if k == 0 or input.dim() < k or _shape(input)[input.dim() - k:] != normalized_shape:
        raise ValueError(
            f"expected input of shape (*, {', '.join(map(str, normalized_shape))}) "
            f"(normalized_shape={normalized_shape}), got shape {_shape(input)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_same(name, t, "input", input)
            if _shape(t) != normalized_shape:
                raise ValueError(
                    f"expected {name} of shape normalized_shape={normalized_shape}, "
                    f"got {_shape(t)}"
                )


# ---------------------------------------------------------------- embedding
_EMBEDDING_INDEX_DTYPES = (torch.int64, torch.int32)


def check_embedding(input: Tensor, weight: Tensor, padding_idx: int | None) -> None:
    """Integer indices in [0, V) for a (V, D) table; the range check reads the values."""
    check_floating("weight", weight)
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor of indices, got {type(input).__name__}")
    if input.dtype not in _EMBEDDING_INDEX_DTYPES:
        raise TypeError(
            f"input must hold integer indices (torch.long or torch.int), got dtype "
            f"{input.dtype}; convert it with input.long()"
        )
    if weight.dim() != 2:
        raise ValueError(
            f"expected weight of shape (num_embeddings, embedding_dim), got {_shape(weight)}"
        )
    if input.device != weight.device:
        raise RuntimeError(f"input is on {input.device} but weight is on {weight.device}")
    v = weight.shape[0]
    if padding_idx is not None and not 0 <= padding_idx < v:
        raise ValueError(f"padding_idx must lie in [0, {v}) after wrapping, got {padding_idx}")
    # reading values: skipped while compiling, under torch.func transforms and on meta
    if input.numel() and _values_readable(input):
        lo, hi = (int(v) for v in torch.aminmax(input.reshape(-1)))
        if lo < 0 or hi >= v:
            raise IndexError(
                f"embedding indices must lie in [0, {v - 1}] for num_embeddings={v}, "
                f"got values in [{lo}, {hi}]"
            )


def wrap_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """torch's rule: a negative padding_idx counts from the end; out of range is an error."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}) for "
            f"num_embeddings={num_embeddings}, got {padding_idx}"
        )
    return padding_idx % num_embeddings


def check_embedding_unsupported(max_norm: float | None, sparse: bool) -> None:
    """The arguments bptorch leaves out: max_norm renormalises rows in place during the
    forward; sparse=True returns a sparse gradient."""
    if max_norm is not None:
        raise NotImplementedError("bptorch Embedding does not implement max_norm")
    if sparse:
        raise NotImplementedError("bptorch Embedding does not implement sparse=True "
                                  "(its gradient is dense)")


# ---------------------------------------------------------------- attention
def check_attention(query: Tensor, key: Tensor, value: Tensor,
                    attn_mask: Tensor | None, is_causal: bool) -> None:
    """Q (*, L, E), K (*, S, E), V (*, S, Ev), batch dims broadcastable, mask (*, L, S)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_floating(name, t)
        if t.dim() < 2:
            raise ValueError(f"expected {name} of shape (*, seq_len, features), got a "
                             f"{t.dim()}-dim tensor of shape {_shape(t)}")
        if t is not query:
            check_same(name, t, "query", query)
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"expected query (*, L, E) and key (*, S, E) with the same E, got "
                         f"query {_shape(query)} and key {_shape(key)}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(f"expected key (*, S, E) and value (*, S, Ev) with the same S, got "
                         f"key {_shape(key)} and value {_shape(value)}")
    try:
        batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the batch dims of query {_shape(query)}, key {_shape(key)} and "
                         f"value {_shape(value)} do not broadcast (grouped-query attention "
                         "needs enable_gqa, which bptorch does not implement)") from None
    if attn_mask is not None:
        if is_causal:
            raise ValueError("pass either attn_mask or is_causal=True, not both (as torch)")
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a Tensor, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool:
            check_floating("attn_mask", attn_mask)
            check_same("attn_mask", attn_mask, "query", query)
        L, S = query.shape[-2], key.shape[-2]
        try:
            torch.broadcast_shapes(attn_mask.shape, (*batch, L, S))
            ok = attn_mask.dim() <= len(batch) + 2
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"expected attn_mask broadcastable to (*, L, S) = "
                             f"{(*batch, L, S)}, got shape {_shape(attn_mask)}")


# ---------------------------------------------------------------- recurrent cells
def check_rnn_cell(fn: str, input: Tensor, states: tuple[Tensor, ...], w_ih: Tensor,
                   w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, gates: int) -> None:
    """One step of a recurrent cell: input (N, H_in), each state (N, H), W_ih (G·H, H_in),
    W_hh (G·H, H), biases (G·H,), G = ``gates`` (1 RNN, 4 LSTM, 3 GRU)."""
    check_floating("input", input)
    check_same("input", input, "weight_ih", w_ih)
    hidden = w_hh.shape[-1]
    if w_ih.dim() != 2 or w_hh.dim() != 2 or w_ih.shape[0] != gates * hidden or \
            w_hh.shape[0] != gates * hidden:
        raise ValueError(f"{fn}: expected weight_ih ({gates}·H, H_in) and weight_hh "
                         f"({gates}·H, H), got {_shape(w_ih)} and {_shape(w_hh)}")
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and _shape(b) != (gates * hidden,):
            raise ValueError(f"{fn}: expected {name} of shape ({gates * hidden},), got "
                             f"{_shape(b)}")
    if input.dim() != 2:
        raise ValueError(f"{fn}: expected input of shape (N, H_in), got a {input.dim()}-dim "
                         f"tensor of shape {_shape(input)}")
    if input.shape[1] != w_ih.shape[1]:
        raise ValueError(f"{fn}: input has inconsistent input_size: got {input.shape[1]}, "
                         f"expected {w_ih.shape[1]} (input of shape {_shape(input)})")
    for k, h in enumerate(states):
        check_floating(f"hx[{k}]", h)
        check_same(f"hx[{k}]", h, "input", input)
        if _shape(h) != (input.shape[0], hidden):
            raise ValueError(f"{fn}: expected hidden state {k} of shape (N, H) = "
                             f"{(input.shape[0], hidden)}, got {_shape(h)}")


# ---------------------------------------------------------------- torch's losses
def check_class_loss(fn: str, input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """cross_entropy / nll_loss: input (N, C, d1, ...) or (C,), classes on dim 1 (dim 0
    unbatched); target class indices of the input's shape without dim 1 (integer dtype), or
    for cross_entropy probabilities of the input's own shape; weight (C,)."""
    check_floating("input", input)
    if not isinstance(target, Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if input.dim() == 0:
        raise ValueError(f"{fn}: expected input of shape (N, C, ...) or (C,), got a 0-d tensor")
    n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    if target.is_floating_point():
        if fn == "nll_loss":
            raise TypeError(f"nll_loss: target must hold class indices (an integer dtype), "
                            f"got dtype {target.dtype}")
        if target.shape != input.shape:
            raise ValueError(f"{fn}: a probability target must have the input's shape "
                             f"{_shape(input)}, got {_shape(target)}")
    else:
        if target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{fn}: target must hold class indices (an integer dtype) or "
                            f"probabilities (a floating dtype), got dtype {target.dtype}")
        expected = (*input.shape[:1], *input.shape[2:]) if input.dim() > 1 else ()
        if tuple(target.shape) != expected:
            raise ValueError(f"{fn}: class-index target must have shape {expected} (the "
                             f"input's {_shape(input)} without the class dim 1), got "
                             f"{_shape(target)}")
    if weight is not None and tuple(weight.shape) != (n_classes,):
        raise ValueError(f"{fn}: weight must have shape ({n_classes},) (one per class), got "
                         f"{_shape(weight)}")


def check_pointwise_loss(fn: str, input: Tensor, target: Tensor, **extra: Tensor | None) -> None:
    """A pointwise loss: floating input and target of one shape; each of ``extra``
    (weight, pos_weight) broadcastable to it."""
    check_floating("input", input)
    check_floating("target", target)
    if target.shape != input.shape:
        raise ValueError(f"{fn}: target must have the input's shape {_shape(input)}, got "
                         f"{_shape(target)}")
    for name, t in extra.items():
        if t is None:
            continue
        try:
            ok = torch.broadcast_shapes(t.shape, input.shape) == input.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{fn}: {name} must broadcast to the input's shape "
                             f"{_shape(input)}, got {_shape(t)}")


def check_reduction(reduction: str, allowed: tuple[str, ...] = ("none", "mean", "sum")) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}, got "
                         f"{reduction!r}")


def check_probabilities(name: str, t: Tensor) -> None:
    """binary_cross_entropy's input: values in [0, 1] (read only where values are readable)."""
    if t.numel() and _values_readable(t):
        lo, hi = torch.aminmax(t.detach())
        if not (lo.item() >= 0 and hi.item() <= 1):
            raise ValueError(f"binary_cross_entropy: {name} must hold probabilities in [0, 1], "
                             f"got values in [{lo.item():.4g}, {hi.item():.4g}]; for logits use "
                             "binary_cross_entropy_with_logits")


# ---------------------------------------------------------------- the other activations and
# the products (bptorch/functions/linear.py's activation section, functions/products.py)
def check_hardtanh(min_val: float, max_val: float) -> None:
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val cannot be greater than max_val, got "
                         f"min_val={min_val} > max_val={max_val}")


def check_prelu(input: Tensor, weight: Tensor) -> None:
    """weight: one slope, or one per channel (dim 1 of the input; 1-D input has one)."""
    check_floating("input", input)
    check_floating("weight", weight)
    check_same("weight", weight, "input", input)
    if weight.dim() > 1:
        raise ValueError(f"prelu: expected weight to be a scalar or 1-D tensor of slopes, got "
                         f"shape {_shape(weight)}")
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.numel() not in (1, channels):
        raise ValueError(f"prelu: weight has {weight.numel()} slopes, but the input {_shape(input)}"
                         f" has {channels} channel(s) (dim 1; 1-D input has 1); use "
                         f"num_parameters=1 or {channels}")


def _check_product_operands(fn: str, a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    for name, t in zip(names, (a, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if a.device != b.device:
        raise RuntimeError(f"{fn}: {names[0]} is on {a.device} but {names[1]} is on {b.device}; "
                           "move them to the same device")
    if a.dtype != b.dtype and not torch.is_autocast_enabled(a.device.type):
        raise TypeError(f"{fn}: {names[0]} has dtype {a.dtype} but {names[1]} has dtype "
                        f"{b.dtype}; use the same dtype (e.g. {names[1]}.to({names[0]}.dtype))")


def check_matmul(input: Tensor, other: Tensor) -> None:
    """torch.matmul's shapes: both at least 1-D, the inner dims equal, the batch dims
    broadcastable."""
    _check_product_operands("matmul", input, other, ("input", "other"))
    if input.dim() == 0 or other.dim() == 0:
        raise ValueError(f"matmul: both arguments need at least 1 dimension, got shapes "
                         f"{_shape(input)} and {_shape(other)}")
    k_in = input.shape[-1]
    k_other = other.shape[0] if other.dim() == 1 else other.shape[-2]
    if k_in != k_other:
        raise ValueError(f"matmul: input {_shape(input)} and other {_shape(other)} cannot be "
                         f"multiplied: input's last dim ({k_in}) must equal other's "
                         f"{'only' if other.dim() == 1 else 'second-to-last'} dim ({k_other})")
    try:
        torch.broadcast_shapes(input.shape[:-2], other.shape[:-2])
    except RuntimeError:
        raise ValueError(f"matmul: the batch dims of input {_shape(input)} and other "
                         f"{_shape(other)} do not broadcast: {_shape(input)[:-2]} vs "
                         f"{_shape(other)[:-2]}") from None


def check_bmm(input: Tensor, mat2: Tensor) -> None:
    """torch.bmm's shapes: (b, n, m) and (b, m, p), no broadcasting."""
    _check_product_operands("bmm", input, mat2, ("input", "mat2"))
    if input.dim() != 3 or mat2.dim() != 3:
        raise ValueError(f"bmm: expected two 3-D tensors (b, n, m) and (b, m, p), got shapes "
                         f"{_shape(input)} and {_shape(mat2)}")
    if input.shape[0] != mat2.shape[0] or input.shape[2] != mat2.shape[1]:
        raise ValueError(f"bmm: expected mat2 of shape (b={input.shape[0]}, m={input.shape[2]}, "
                         f"p) for input {_shape(input)}, got {_shape(mat2)}")


def check_mul(input: Tensor, other) -> None:
    """Elementwise: the shapes must broadcast."""
    if not isinstance(input, Tensor):
        raise TypeError(f"mul: input must be a torch.Tensor, got {type(input).__name__}")
    if isinstance(other, Tensor):
        try:
            torch.broadcast_shapes(input.shape, other.shape)
        except RuntimeError:
            raise ValueError(f"mul: the shapes {_shape(input)} and {_shape(other)} do not "
                             "broadcast") from None
    elif not isinstance(other, (int, float, bool)):
        raise TypeError(f"mul: other must be a tensor or a Python number, got "
                        f"{type(other).__name__}")


# ---------------------------------------------------------------- unfold and fold
def _check_blocks(fn: str, kernel_size: Pair, dilation: Pair, padding: Pair,
                  stride: Pair) -> None:
    """Pairs of ints, kernel, dilation and stride >= 1, padding >= 0 (torch's rules)."""
    for name, v in (("kernel_size", kernel_size), ("dilation", dilation),
                    ("padding", padding), ("stride", stride)):
        if len(v) != 2 or not all(isinstance(x, int) for x in v):
            raise ValueError(f"{fn}: {name} must be an int or a pair of ints, got {v}")
    if min(kernel_size) < 1 or min(dilation) < 1 or min(stride) < 1:
        raise ValueError(f"{fn}: kernel_size, dilation and stride must be >= 1, got "
                         f"{kernel_size}, {dilation}, {stride}")
    if min(padding) < 0:
        raise ValueError(f"{fn}: padding must be >= 0, got {padding}")


def fold_blocks(size: Pair, kernel_size: Pair, dilation: Pair, padding: Pair,
                stride: Pair) -> Pair:
    """The number of sliding blocks along each axis of a map of ``size``."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, d, p, s in
                 zip(size, kernel_size, dilation, padding, stride))


def check_unfold(input: Tensor, kernel_size: Pair, dilation: Pair, padding: Pair,
                 stride: Pair) -> None:
    """F.unfold: a floating (N, C, H, W) or (C, H, W) map with at least one block."""
    check_4d("input", input, unbatched=True)
    _check_blocks("unfold", kernel_size, dilation, padding, stride)
    blocks = fold_blocks(input.shape[-2:], kernel_size, dilation, padding, stride)
    if min(blocks) < 1:
        raise ValueError(f"unfold: the input's spatial size {_shape(input)[-2:]} holds no "
                         f"block of kernel_size={kernel_size}, dilation={dilation}, "
                         f"padding={padding}, stride={stride} (blocks: {blocks})")


def check_fold(input: Tensor, output_size: Pair, kernel_size: Pair, dilation: Pair,
               padding: Pair, stride: Pair) -> None:
    """F.fold: a floating (N, C·k_h·k_w, L) or (C·k_h·k_w, L) tensor, L the number of blocks
    of the output's size."""
    check_floating("input", input)
    if input.dim() not in (2, 3):
        raise ValueError(f"fold: expected input of shape (N, C*k_h*k_w, L) or (C*k_h*k_w, L), "
                         f"got shape {_shape(input)} ({input.dim()} dims)")
    if len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"fold: output_size must be a pair of ints >= 1, got {output_size}")
    _check_blocks("fold", kernel_size, dilation, padding, stride)
    taps = kernel_size[0] * kernel_size[1]
    if input.shape[-2] % taps:
        raise ValueError(f"fold: the input's dim {input.dim() - 2} ({input.shape[-2]}) must be "
                         f"divisible by the kernel's k_h*k_w = {taps} (C*k_h*k_w)")
    blocks = fold_blocks(output_size, kernel_size, dilation, padding, stride)
    if min(blocks) < 1 or input.shape[-1] != blocks[0] * blocks[1]:
        raise ValueError(f"fold: output_size={output_size}, kernel_size={kernel_size}, "
                         f"dilation={dilation}, padding={padding}, stride={stride} give "
                         f"{blocks[0]}x{blocks[1]} blocks, but the input's last dim (L) is "
                         f"{input.shape[-1]}")


# ---------------------------------------------------------------- vector norms and put
def check_vector_norm(fn: str, input: Tensor, dims: tuple[int, ...] | None) -> None:
    """A floating tensor, and every reduced dim in range (torch's IndexError otherwise)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise RuntimeError(f"{fn}: expected a floating point tensor as input, got {input.dtype}")
    for d in dims or ():
        if not -max(input.dim(), 1) <= d < max(input.dim(), 1):
            raise IndexError(f"{fn}: dim {d} is out of range for input of shape {_shape(input)} "
                             f"(expected a dim in [{-max(input.dim(), 1)}, "
                             f"{max(input.dim(), 1) - 1}])")


def check_put(input: Tensor, index: Tensor, source: Tensor) -> None:
    """torch.put's arguments: a LongTensor index with as many entries as source, each a
    flat position inside input, and source of input's dtype."""
    for name, t in (("input", input), ("index", index), ("source", source)):
        if not isinstance(t, Tensor):
            raise TypeError(f"put: {name} must be a torch.Tensor, got {type(t).__name__}")
    if index.dtype != torch.long:
        raise RuntimeError(f"put: expected index of dtype torch.int64, got {index.dtype}")
    if index.numel() != source.numel():
        raise RuntimeError(f"put: index has {index.numel()} entries but source has "
                           f"{source.numel()}; they must have the same number of elements")
    if source.dtype != input.dtype:
        raise RuntimeError(f"put: source has dtype {source.dtype} but input has {input.dtype}; "
                           f"use source.to({input.dtype})")
    n = input.numel()
    if index.numel() and _values_readable(index) and (
            int(index.max()) >= n or int(index.min()) < -n):
        raise IndexError(f"put: index out of range for input of {n} elements (expected "
                         f"positions in [{-n}, {n - 1}], got [{int(index.min())}, "
                         f"{int(index.max())}])")
