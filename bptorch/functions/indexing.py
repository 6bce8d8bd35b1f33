"""Writing values into positions of a tensor: ``torch.put`` (out of place) and the same
write in place, which is what ``x[1:3] = v``, ``x[:, 1:] += r`` and ``x[i].zero_()``
become once :mod:`bptorch.routing` has turned them around (see there), each with its
backward written out.

A write. ``out = x.put(index, src)``: out equals x except at the positions ``index``
names (flat, in x's row-major order, as if x were 1-D), which hold src's values:

    out_k = src_m   where index_m = k,        out_k = x_k   elsewhere.

Each out_k depends on exactly one number, so the Jacobian is a selection and, given
δ = ∂C/∂out,

    ∂C/∂x   = δ with the written positions set to 0   (what x had there was overwritten),
    ∂C/∂src = δ read at the written positions          (δ.take(index), src's shape).

With ``accumulate=True`` the values are added instead (out_k = x_k + Σ_{index_m = k} src_m):
∂C/∂x = δ (x passes through unchanged in the sum) and ∂C/∂src is δ.take(index) as before.
A position written twice without accumulate is torch's undefined case; it is not taken here.

Neither gradient multiplies by data: a write only moves numbers. It is still one node of
the graph, and written out here its backward is bptorch's, where torch would record
``CopySlices`` (an in-place write into a view) or ``PutBackward0``.

In place (``inplace=True``): x itself is overwritten and returned (``ctx.mark_dirty``);
the gradients are the same. Nothing is saved but the index: neither gradient reads x or
src, so x may be overwritten freely. Both backwards are differentiable torch ops (put and
take), so double backward and gradgradcheck work. Autocast: on neither of torch's lists;
runs in the inputs' dtype.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import BPFunction

Need = tuple[bool, ...]


# ---------------------------------------------------------------- the reference pair
def put_fwd(x: Tensor, index: Tensor, src: Tensor, accumulate: bool, inplace: bool) -> Tensor:
    """out = x with src written (or, ``accumulate``, added) at the flat positions ``index``;
    ``inplace``: into x itself."""
    out = x if inplace else x.clone()
    return out.put_(index, src, accumulate)


def put_bwd(delta: Tensor, index: Tensor, src_shape: torch.Size, accumulate: bool,
            need: Need) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂x, ∂C/∂src) of out = x.put(index, src), given δ = ∂C/∂out."""
    grad_x = grad_src = None
    if need[0]:
        # out_k = x_k where nothing is written  →  ∂C/∂x = δ there, 0 at the written positions
        # (accumulate: out_k = x_k + Σ src_m  →  ∂C/∂x = δ everywhere)
        grad_x = delta if accumulate else delta.put(
            index, torch.zeros(index.shape, dtype=delta.dtype, device=delta.device))
    if need[1]:
        # out_{index_m} = src_m (or + src_m)  →  ∂C/∂src_m = δ_{index_m}
        grad_src = delta.take(index).reshape(src_shape)
    return grad_x, grad_src


class PutFunction(BPFunction):
    """out = x.put(index, src, accumulate), or written into x itself (``inplace``).

    Backward: ∂C/∂x = δ with the written positions zeroed (accumulate: δ), ∂C/∂src =
    δ.take(index) (:func:`put_bwd`). Saves only the index. Forward mode: the same write
    applied to the tangents.
    """

    @staticmethod
    def forward(input: Tensor, index: Tensor, source: Tensor, accumulate: bool = False,
                inplace: bool = False) -> Tensor:
        return put_fwd(input, index, source, accumulate, inplace)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, index, src, ctx.accumulate, ctx.inplace = inputs
        ctx.src_shape, ctx.out_shape = src.shape, x.shape
        if ctx.inplace:
            ctx.mark_dirty(x)  # x now holds out: autograd bumps its version
        ctx.save_for_backward(index)  # the only thing either gradient reads
        ctx.save_for_forward(index)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (index,) = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        grad_x, grad_src = put_bwd(grad_output, index, ctx.src_shape, ctx.accumulate, need)
        return grad_x, None, grad_src, None, None

    @staticmethod
    def jvp(ctx: Any, dx, _dindex, dsrc, _dacc, _dinplace) -> Tensor:
        (index,) = ctx.saved_tensors
        if dx is None:  # x has no tangent: the write into zeros
            dx = dsrc.new_zeros(ctx.out_shape)
        elif ctx.inplace:  # the tangent of a dirty input is written in place, as x was
            dx = dx.put_(index, dsrc, ctx.accumulate) if dsrc is not None else (
                dx if ctx.accumulate else dx.put_(index, dx.new_zeros(ctx.src_shape)))
            return dx
        if dsrc is None:  # src has no tangent: zeros are written
            dsrc = dx.new_zeros(ctx.src_shape)
        return dx.put(index, dsrc, ctx.accumulate)  # dout = dx.put(index, dsrc)


# ---------------------------------------------------------------- positions of a view
def positions(base: Tensor, view: Tensor) -> Tensor:
    """The flat (row-major) positions in ``base`` of each element of ``view``, a view of
    ``base``'s memory: a LongTensor of ``view``'s shape, the ``index`` that makes
    ``base.put_(index, src)`` the same write as ``view.copy_(src)``.

    Found by laying the numbers 0, 1, ... out in memory as ``base`` lies (its strides),
    then reading them through ``view``'s size, strides and offset.
    """
    n = base.numel()
    flat = torch.arange(n, device=base.device)
    if base.is_contiguous():
        laid = flat
    else:
        laid = torch.empty_strided(base.size(), base.stride(), dtype=torch.long,
                                   device=base.device)
        laid.copy_(flat.view(base.shape))
    return laid.as_strided(view.size(), view.stride(),
                           view.storage_offset() - base.storage_offset()).clone()


put = PutFunction.apply

__all__ = ["PutFunction", "positions", "put", "put_bwd", "put_fwd"]
