"""Input checks shared by the functional forms: clear errors instead of silent broadcasts
or cryptic matmul messages. Each check reads only shapes, dtypes and devices (no sync),
except the range checks of ``check_cost_inputs`` (class indices, probabilities), which
must look at the values.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


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


def one_hot(target: Tensor, n_out: int, dtype: torch.dtype) -> Tensor:
    """Class indices (*) as one-hot rows (*, n_out) of ``dtype``; a float target as it is.

    Built by comparison with arange, not F.one_hot, which reads the values (vmap cannot).
    """
    if target.is_floating_point():
        return target
    classes = torch.arange(n_out, device=target.device)
    return (target.long().unsqueeze(-1) == classes).to(dtype)
