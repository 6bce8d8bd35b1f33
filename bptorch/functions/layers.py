"""The layer Functions: linear, activation and the fused dense layer.

Each is a ``torch.autograd.Function`` in the ``forward`` + ``setup_context`` form
(the form that composes with ``torch.func``) whose ``backward`` is one of the
seed's equations, written with differentiable torch ops so that double backward
works. Rows are examples (batch-first), so the seed's column vectors become rows:

    seed (one example, columns)          code (N examples, rows)
    z^l = W^l a^{l-1} + b^l              z = a_prev @ W.T + b
    δ^l = ∇_a C ⊙ σ'(z^l)   (BP1/BP2)    delta = grad_output * sp
    (W^{l+1})ᵀ δ^{l+1}      (BP2)        grad_input = delta @ W
    ∂C/∂b^l = δ^l           (BP3)        grad_bias = delta.sum(0)
    ∂C/∂W^l = δ^l (a^{l-1})ᵀ (BP4)       grad_weight = delta.T @ a_prev

BP3 and BP4 sum over the rows: the cost of a batch is a sum (or mean) of
per-example costs, and its gradient the same sum of per-example gradients.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad

from .. import diagnostics
from .base import BPFunction
from .._checks import check_floating
from ..activations import Activation


# -- mixed precision ------------------------------------------------------------
# torch.amp.custom_fwd/custom_bwd expect the combined forward(ctx, ...) form, so the
# Functions handle torch.autocast themselves: forward runs the matmul in the autocast
# dtype (as torch.nn.Linear does under autocast); setup_context records that dtype;
# backward recasts the saved float32 a_prev and W, runs BP2–BP4 in it, and returns
# each gradient in its input's own dtype (float32 parameters get float32 grads).
def _autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The dtype torch.autocast gives matmuls on t's device, or None when it is off.

    As torch's own autocast, float64 inputs are left alone, and so are devices that
    have no autocast at all (``meta``: asking torch about them raises).
    """
    device_type = t.device.type
    if t.dtype == torch.float64:
        return None
    has = _HAS_AUTOCAST.get(device_type)
    if has is None:
        has = _HAS_AUTOCAST[device_type] = torch.amp.is_autocast_available(device_type)
    if has and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


# device type -> whether torch has autocast for it, asked once per type (a dict read
# after that; functools.cache would also work in eager, but Dynamo breaks the graph on it).
# CPU and CUDA are known: Dynamo before torch 2.12 cannot trace the question itself.
_HAS_AUTOCAST: dict[str, bool] = {"cpu": True, "cuda": True}


def _cast(dtype: torch.dtype | None, *tensors: Tensor | None) -> tuple:
    if dtype is None:
        return tensors
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _autocast_backward(ctx: Any, backward, delta: Tensor, *saved: Tensor) -> tuple:
    """``backward(ctx, delta, *saved)`` in ``ctx.autocast_dtype``, with the gradients
    cast back to each input's own dtype (float32 parameters get float32 grads)."""
    dtype = ctx.autocast_dtype
    if dtype is None:
        return backward(ctx, delta, *saved)
    grads = backward(ctx, *_cast(dtype, delta, *saved))
    return tuple(None if g is None else g.to(d) for g, d in zip(grads, ctx.input_dtypes))


def _record_autocast(ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    ctx.autocast_dtype = _autocast_dtype(input)
    ctx.input_dtypes = (input.dtype, weight.dtype, None if bias is None else bias.dtype)


def _linear_jvp(a_prev: Tensor, weight: Tensor, da_prev, dweight, dbias) -> Tensor:
    """Forward mode of z = a_prev Wᵀ + b: dz = da_prev Wᵀ + a_prev dWᵀ + db."""
    dz = torch.zeros((), dtype=a_prev.dtype, device=a_prev.device)
    if da_prev is not None:
        dz = dz + da_prev @ weight.t()
    if dweight is not None:
        dz = dz + a_prev @ dweight.t()
    if dbias is not None:
        dz = dz + dbias
    return dz.expand(*a_prev.shape[:-1], weight.shape[0])


def _linear_backward(
    ctx: Any, delta: Tensor, a_prev: Tensor, weight: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """BP3, BP4 and the (W)ᵀδ factor of BP2 for z = a_prev Wᵀ + b, given δ = ∂C/∂z."""
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = delta @ weight  # (W^l)ᵀ δ^l, passed down to layer l−1 (BP2)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        delta2d = delta.reshape(-1, delta.shape[-1])  # (*, n_out) -> (N, n_out)
        if ctx.needs_input_grad[1]:
            a_prev2d = a_prev.reshape(-1, a_prev.shape[-1])
            grad_weight = delta2d.t() @ a_prev2d  # BP4: ∂C/∂W = δ (a^{l-1})ᵀ, summed over rows
        if ctx.needs_input_grad[2]:
            grad_bias = delta2d.sum(0)  # BP3: ∂C/∂b = δ, summed over rows
    return grad_input, grad_weight, grad_bias


class LinearFunction(BPFunction):
    """z^l = W^l a^{l-1} + b^l.

    Backward, given grad_output = ∂C/∂z^l = δ^l:
    BP3 ∂C/∂b^l = δ^l, BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ, and (W^l)ᵀ δ^l, the first
    factor of BP2, passed down.

    Batch-first: ``z = a_prev @ W.T + b``; ``grad_weight = delta.T @ a_prev``,
    ``grad_bias = delta.sum(0)``, ``grad_input = delta @ W``. Inputs of shape
    (*, in_features) are flattened to rows for BP3 and BP4.

    Forward mode (``jvp``): dz = da_prev Wᵀ + a_prev dWᵀ + db.
    Under ``torch.autocast`` the matmuls run in the autocast dtype; the gradients
    come back in each input's dtype.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        input, weight, bias = _cast(_autocast_dtype(input), input, weight, bias)
        return torch.nn.functional.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias = inputs
        _record_autocast(ctx, input, weight, bias)
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        return _autocast_backward(ctx, _linear_backward, grad_output, a_prev, weight)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias) -> Tensor:
        a_prev, weight = ctx.saved_tensors
        return _linear_jvp(a_prev, weight, da_prev, dweight, dbias)


class ActivationFunction(BPFunction):
    """a^l = σ(z^l).

    Backward: ∂C/∂z^l = ∂C/∂a^l ⊙ σ'(z^l), the ``⊙ σ'(z)`` factor of BP1 and BP2.
    σ' comes from what the activation saves (sigmoid and tanh keep a, since
    σ'(z) = a(1 − a) and 1 − a²; GELU and SiLU keep z). Softmax, whose Jacobian is
    not diagonal, gives δ = a ⊙ (grad_output − Σ_k grad_output_k a_k).

    Batch-first: elementwise, so the same formulas on (N, n) tensors.

    ``inplace=True`` overwrites z with a and returns it (``ctx.mark_dirty``), as
    torch's ``relu_``. Where σ' needs z, ``z_before`` is a copy of z taken before the
    overwrite (what torch's ``silu_`` keeps too); :func:`activation` makes it.

    Forward mode (``jvp``): da = σ'(z) ⊙ dz. The Jacobian of σ is symmetric (diagonal,
    or diag(a) − a aᵀ for softmax), so this is ``activation.delta`` applied to dz.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        z: Tensor,
        activation: Activation,
        name: str | None = None,
        inplace: bool = False,
        z_before: Tensor | None = None,
    ) -> Tensor:
        if inplace:
            return activation.fn_(z)
        a = activation.fn(z)
        # identity gives back z itself; a Function that returns its input must return
        # views from jvp too, which vmap(jvp) cannot do: copy (Identity only)
        return a.clone() if a is z else a

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        z, activation, name, inplace, z_before = inputs
        ctx.activation, ctx.name, ctx.inplace = activation, name, inplace
        if inplace:
            ctx.mark_dirty(z)  # z now holds a: autograd bumps its version
            z = z_before  # the z that was overwritten, or None
        saved = {"a": output, "z": z}.get(activation.saves)
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def jvp(ctx: Any, dz: Tensor, _dactivation, _dname, _dinplace, _dz_before) -> Tensor:
        (saved,) = ctx.saved_tensors
        if saved is None and ctx.activation.saves == "z":  # z was overwritten, not kept
            raise RuntimeError(_NO_Z_MESSAGE)
        da = ctx.activation.delta(dz, saved)  # da = σ'(z) ⊙ dz
        return dz.copy_(da) if ctx.inplace else da  # an in-place op updates its tangent

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (saved,) = ctx.saved_tensors
        act = ctx.activation
        if saved is None and act.saves == "z":  # z was overwritten and not kept
            raise RuntimeError(_NO_Z_MESSAGE)
        delta = act.delta(grad_output, saved)  # ∂C/∂z = ∂C/∂a ⊙ σ'(z)
        if diagnostics.active():
            diagnostics.record_delta(ctx.name, act, delta, saved)
        return delta, None, None, None, None


# torch's own words for leaky_relu_ with a negative slope, whose backward it refuses:
# a no longer says where z > 0 and torch keeps no copy of z. bptorch refuses alike.
_NO_Z_MESSAGE = (
    "In-place leakyReLu backward calculation is triggered with a negative slope which is "
    "not supported. This is caused by calling in-place forward function with a negative "
    "slope, please call out-of-place version instead. File an issue at "
    "https://github.com/pytorch/pytorch if you do require supporting in-place leakRelu "
    "backward calculation with negative slope"
)


def activation(
    input: Tensor, act: Activation, name: str | None = None, inplace: bool = False
) -> Tensor:
    """a = σ(z) through :class:`ActivationFunction`, checking the input first.

    ``inplace=True`` behaves as torch's in-place activations: z is overwritten and
    returned, and a leaf that requires grad is refused with torch's error. Where σ'
    needs z (SiLU), a copy of z is kept for backward, as torch's ``silu_`` does;
    leaky_relu with a negative slope keeps none, and its backward raises as torch's.
    """
    check_floating("input", input)
    if not inplace:
        return ActivationFunction.apply(input, act, name, False, None)
    if act.fn_ is None:
        raise ValueError(f"activation {act.name!r} has no in-place form")
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    if needs_grad and input.is_leaf:
        raise RuntimeError(
            "a leaf Variable that requires grad is being used in an in-place operation."
        )
    if not needs_grad and forward_ad.unpack_dual(input).tangent is None:
        return act.fn_(input)  # nothing to differentiate: the plain in-place op
    z_before = None
    if act.saves == "z" and act.name != "leaky_relu":
        z_before = input.detach().clone()  # σ' needs the z about to be overwritten
    return ActivationFunction.apply(input, act, name, True, z_before)


def _sigma_from(act: Activation, a_prev: Tensor, weight: Tensor, bias: Tensor | None,
                a: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
    """The tensor σ'(z^l) is computed from: a^l as saved, z^l recomputed from a^{l-1}
    (gelu, silu, negative-slope leaky_relu: cheaper than keeping z), or none (identity)."""
    if act.saves == "z":
        return torch.nn.functional.linear(*_cast(dtype, a_prev, weight, bias))
    return a if act.saves == "a" else None


def _dense_jvp(ctx: Any, a_prev: Tensor, weight: Tensor, bias: Tensor | None,
               a: Tensor | None, da_prev, dweight, dbias) -> Tensor:
    """Forward mode of a = σ(a_prev Wᵀ + b): dz as the linear layer's, then da = σ'(z) ⊙ dz."""
    dz = _linear_jvp(a_prev, weight, da_prev, dweight, dbias)
    return ctx.activation.delta(dz, _sigma_from(ctx.activation, a_prev, weight, bias, a))


def _dense_backward(ctx: Any, grad_output: Tensor, a_prev: Tensor, weight: Tensor,
                    bias: Tensor | None, a: Tensor | None, w_down: Tensor) -> tuple:
    """δ^l once, then BP3, BP4 and the factor passed down, w_downᵀ δ^l: W^l for backprop,
    a feedback rule's B otherwise (``_linear_backward`` reads W only there)."""
    act = ctx.activation
    saved = _sigma_from(act, a_prev, weight, bias, a, ctx.autocast_dtype)
    delta = act.delta(grad_output, saved)  # BP1/BP2: δ^l = ∂C/∂a^l ⊙ σ'(z^l)
    if diagnostics.active():
        diagnostics.record_delta(ctx.name, act, delta, saved, a_prev=a_prev)
    return _autocast_backward(ctx, _linear_backward, delta, a_prev, w_down)


class DenseFunction(BPFunction):
    """a^l = σ(W^l a^{l-1} + b^l), the fused linear + activation layer.

    Backward, given grad_output = ∂C/∂a^l:

    * δ^l = ∂C/∂a^l ⊙ σ'(z^l), computed once. When layer l+1 handed down
      (W^{l+1})ᵀ δ^{l+1}, this is BP2; when a cost handed down ∇_a C, it is BP1;
    * BP3 ∂C/∂b^l = δ^l and BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ;
    * (W^l)ᵀ δ^l, passed down to layer l−1.

    Batch-first: ``z = a_prev @ W.T + b``, ``a = σ(z)``; ``delta = grad_output * sp``,
    ``grad_weight = delta.T @ a_prev``, ``grad_bias = delta.sum(0)``,
    ``grad_input = delta @ W``. Saves a_prev, W and what σ' needs (a for sigmoid),
    the same bytes as ``nn.Linear`` followed by ``nn.Sigmoid``.

    Forward mode (``jvp``): dz = da_prev Wᵀ + a_prev dWᵀ + db, then da = σ'(z) ⊙ dz.
    Under ``torch.autocast`` the matmuls run in the autocast dtype; the gradients
    come back in each input's dtype.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        activation: Activation,
        name: str | None = None,
    ) -> Tensor:
        input, weight, bias = _cast(_autocast_dtype(input), input, weight, bias)
        z = torch.nn.functional.linear(input, weight, bias)
        return activation.fn(z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias, activation, name = inputs
        ctx.activation, ctx.name = activation, name
        _record_autocast(ctx, input, weight, _bias)
        if activation.saves == "z":  # recompute z in backward rather than keep it
            saved = (input, weight, _bias, None)
        else:  # a, or nothing at all for the identity (σ' = 1)
            saved = (input, weight, None, output if activation.saves == "a" else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias, _dactivation, _dname) -> Tensor:
        a_prev, weight, bias, a = ctx.saved_tensors
        return _dense_jvp(ctx, a_prev, weight, bias, a, da_prev, dweight, dbias)  # σ'(z) ⊙ dz

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight, bias, a = ctx.saved_tensors
        # δ^l = ∂C/∂a^l ⊙ σ'(z^l) (BP1/BP2), then BP3, BP4 and (W^l)ᵀ δ^l passed down
        return (*_dense_backward(ctx, grad_output, a_prev, weight, bias, a, weight), None, None)


# -- feedback rules: B in place of W in BP2's factor ------------------------------------
# Subclasses, not an optional argument of the two above: backprop's Functions keep their
# inputs, saved tensors and cost exactly as they were (bptorch.feedback builds B).
class LinearFeedbackFunction(LinearFunction):
    """z^l = W^l a^{l-1} + b^l, passing down Bᵀ δ^l instead of (W^l)ᵀ δ^l.

    ``feedback_weight`` is B (W's shape, no gradient): a feedback rule's stand-in for W
    (``bptorch.feedback``). Backward: BP3 ∂C/∂b^l = δ^l and BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ
    as :class:`LinearFunction`; batch-first ``grad_input = delta @ B``. Forward and
    forward mode (``jvp``) are the layer's own: the rule changes only what is passed down.
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None,
                feedback_weight: Tensor) -> Tensor:
        input, weight, bias = _cast(_autocast_dtype(input), input, weight, bias)
        return torch.nn.functional.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias, feedback_weight = inputs
        _record_autocast(ctx, input, weight, bias)
        ctx.save_for_backward(input, weight, feedback_weight)
        ctx.save_for_forward(input, weight, feedback_weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, _weight, feedback_weight = ctx.saved_tensors
        # _linear_backward reads W only in BP2's factor (BP4 needs none): hand it B
        grads = _autocast_backward(ctx, _linear_backward, grad_output, a_prev, feedback_weight)
        return (*grads, None)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias, _dfeedback) -> Tensor:
        a_prev, weight, _ = ctx.saved_tensors
        return _linear_jvp(a_prev, weight, da_prev, dweight, dbias)


class DenseFeedbackFunction(DenseFunction):
    """a^l = σ(W^l a^{l-1} + b^l), passing down Bᵀ δ^l instead of (W^l)ᵀ δ^l.

    As :class:`DenseFunction` (δ^l = ∂C/∂a^l ⊙ σ'(z^l), BP3, BP4), with the extra input
    ``feedback_weight`` = B (W's shape, no gradient): batch-first ``grad_input = delta @ B``.
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, activation: Activation,
                name: str | None, feedback_weight: Tensor) -> Tensor:
        return DenseFunction.forward(input, weight, bias, activation, name)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias, activation, name, feedback_weight = inputs
        ctx.activation, ctx.name = activation, name
        _record_autocast(ctx, input, weight, bias)
        if activation.saves == "z":  # what DenseFunction keeps, and B
            saved = (input, weight, bias, None, feedback_weight)
        else:
            saved = (input, weight, None, output if activation.saves == "a" else None,
                     feedback_weight)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias, _dactivation, _dname, _dfeedback) -> Tensor:
        """The layer's own forward derivative, as DenseFunction's: B plays no part."""
        a_prev, weight, bias, a, _ = ctx.saved_tensors
        return _dense_jvp(ctx, a_prev, weight, bias, a, da_prev, dweight, dbias)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight, bias, a, feedback_weight = ctx.saved_tensors
        # as DenseFunction's, with Bᵀ δ^l passed down instead of (W^l)ᵀ δ^l
        grads = _dense_backward(ctx, grad_output, a_prev, weight, bias, a, feedback_weight)
        return (*grads, None, None, None)


linear = LinearFunction.apply
dense = DenseFunction.apply
