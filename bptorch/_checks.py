"""Input checks shared by the functional forms: clear errors instead of silent broadcasts
or cryptic matmul messages. Each check reads only shapes, dtypes and devices (no sync),
except the class-index range check, which must look at the values.
"""
from __future__ import annotations

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


def check_cost_inputs(output: Tensor, target: Tensor, what: str = "output") -> Tensor:
    """Validate ``(output, target)`` for a cost: class indices (N,) in range, or a float
    tensor of ``output``'s shape. Returns the target unchanged."""
    check_floating(what, output)
    if output.dim() != 2:
        raise ValueError(
            f"expected {what} of shape (N, n_outputs), got shape {_shape(output)}"
        )
    n, n_out = output.shape
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != output.device:
        raise RuntimeError(
            f"target is on {target.device} but {what} is on {output.device}; "
            "move them to the same device"
        )
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if _shape(target) != (n,):
            raise ValueError(
                f"class-index target must have shape (N,) = ({n},) for {what} of shape "
                f"{_shape(output)}, got {_shape(target)}"
            )
        # the range check reads values: skip it while compiling and under torch.func
        # transforms (vmap cannot call .item() on a batched tensor)
        if (n and not torch.compiler.is_compiling()
                and not torch._C._functorch.is_functorch_wrapped_tensor(target)):
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= n_out:
                raise ValueError(
                    f"class indices must lie in [0, {n_out - 1}] for {n_out} outputs, "
                    f"got values in [{lo}, {hi}]"
                )
        return target
    if not target.is_floating_point():
        raise TypeError(
            f"target must be class indices (an integer tensor of shape (N,)) or a float "
            f"tensor of {what}'s shape, got dtype {target.dtype}"
        )
    if target.shape != output.shape:
        raise ValueError(
            f"target shape {_shape(target)} does not match {what} shape "
            f"{_shape(output)}; costs do not broadcast. Pass class indices of shape "
            f"({n},) or a one-hot/soft target of shape {_shape(output)}"
        )
    check_same("target", target, what, output)
    return target


def one_hot(target: Tensor, n_out: int, dtype: torch.dtype) -> Tensor:
    """Class indices (N,) as one-hot rows (N, n_out) of ``dtype``; a float target as it is.

    Built by comparison with arange, not F.one_hot, which reads the values (vmap cannot).
    """
    if target.is_floating_point():
        return target
    classes = torch.arange(n_out, device=target.device)
    return (target.long().unsqueeze(-1) == classes).to(dtype)
