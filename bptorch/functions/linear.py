"""The linear layer, the activation and the fused dense layer: the seed's four equations.
PReLU, an activation with a learned slope (BP1/BP2's σ' and the slope's own BP4), closes
the activation section.

Rows are examples (batch-first), so the seed's column vectors become rows:

    seed (one example, columns)          code (N examples, rows)
    z^l = W^l a^{l-1} + b^l              z = a_prev @ W.T + b
    a^l = σ(z^l)                         a = σ(z)
    δ^l = ∇_a C ⊙ σ'(z^l)   (BP1/BP2)    delta = grad_output * sp
    (W^{l+1})ᵀ δ^{l+1}      (BP2)        grad_input = delta @ W
    ∂C/∂b^l = δ^l           (BP3)        grad_bias = delta.sum(0)
    ∂C/∂W^l = δ^l (a^{l-1})ᵀ (BP4)       grad_weight = delta.T @ a_prev

BP3 and BP4 sum over the rows: the cost of a batch is a sum (or mean) of per-example
costs, and its gradient the same sum of per-example gradients. Inputs of shape
(*, in_features) are flattened to rows for BP3 and BP4.

The backward lines are written with differentiable torch ops, so double backward works.
Under ``torch.autocast`` the matmuls run in the autocast dtype, as ``torch.nn.Linear``'s
do (``functions.base``); an activation runs in its input's dtype (softmax in float32 on
CUDA, as torch's).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..activations import Activation
from .base import (DELTA_HOOKS, FLOAT32, LOW_PRECISION, LOWER, PER_EXAMPLE, BPFunction,
                   count_launch, kernel_family, kernel_op, per_example, per_example_need,
                   report_delta, use_kernel)

Need = tuple[bool, ...]


# ---------------------------------------------------------------- the reference pair
def linear_fwd(a_prev: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """z = a_prev @ W.T + b, (*, n_in) -> (*, n_out)."""
    return torch.nn.functional.linear(a_prev, weight, bias)


def linear_bwd(delta: Tensor, a_prev: Tensor, weight: Tensor,
               need: Need) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(∂C/∂a_prev, ∂C/∂W, ∂C/∂b) of z = a_prev Wᵀ + b, given δ = ∂C/∂z.

    ``weight`` is the matrix BP2 passes δ down through: W for backprop, a feedback rule's
    B otherwise (BP3 and BP4 never read it).
    """
    need_input, need_weight, need_bias = need[:3]
    grad_input = grad_weight = grad_bias = None
    if need_input:
        # z = a_prev @ W.T + b  →  BP2's first factor: (W^l)ᵀ δ^l, passed down to layer l−1
        grad_input = delta @ weight
    if need_weight or need_bias:
        delta2d = delta.reshape(-1, delta.shape[-1])  # (*, n_out) -> (N, n_out)
        if need_weight:
            # z = a_prev @ W.T + b  →  BP4: dW = delta.T @ a_prev, summed over rows
            grad_weight = delta2d.t() @ a_prev.reshape(-1, a_prev.shape[-1])
        if need_bias:
            # z = a_prev @ W.T + b  →  BP3: db = delta.sum(0), summed over rows
            grad_bias = delta2d.sum(0)
    return grad_input, grad_weight, grad_bias


def dense_fwd(a_prev: Tensor, weight: Tensor, bias: Tensor | None,
              activation: Activation) -> Tensor:
    """a = σ(a_prev @ W.T + b)."""
    z = linear_fwd(a_prev, weight, bias)
    if activation.name in FLOAT32_ON_CUDA and z.is_cuda and z.dtype in LOW_PRECISION:
        z = z.float()  # softmax, softplus in float32 on CUDA, as torch's autocast puts them
    return activation.fn(z)


def sigma_from(activation: Activation, a_prev: Tensor, weight: Tensor, bias: Tensor | None,
               a: Tensor | None) -> Tensor | None:
    """The tensor σ'(z^l) is computed from: a^l as saved, z^l recomputed from a^{l-1}
    (gelu, silu, negative-slope leaky_relu: cheaper than keeping z), or none (identity)."""
    if activation.saves == "z":
        return linear_fwd(a_prev, weight, bias)
    return a if activation.saves == "a" else None


def dense_bwd(grad_output: Tensor, a_prev: Tensor, weight: Tensor, saved: Tensor | None,
              activation: Activation, need: Need, kernel: bool = False) -> tuple[Tensor, tuple]:
    """(δ^l, (∂C/∂a_prev, ∂C/∂W, ∂C/∂b)) of a = σ(a_prev Wᵀ + b), given ∂C/∂a^l and the
    tensor σ' comes from (:func:`sigma_from`). ``weight`` as in :func:`linear_bwd`."""
    # a = σ(z)  →  BP1/BP2: δ^l = ∂C/∂a^l ⊙ σ'(z^l)  (``kernel``: the Triton kernel, file's end)
    delta = activation_delta(activation, grad_output, saved, kernel)
    # (softmax in float32 on CUDA under autocast: δ back to the matmuls' dtype)
    return delta, linear_bwd(delta.to(a_prev.dtype), a_prev, weight, need)


def linear_jvp(a_prev: Tensor, weight: Tensor, da_prev, dweight, dbias) -> Tensor:
    """Forward mode of z = a_prev Wᵀ + b: dz = da_prev Wᵀ + a_prev dWᵀ + db."""
    dz = torch.zeros((), dtype=a_prev.dtype, device=a_prev.device)
    if da_prev is not None:
        dz = dz + da_prev @ weight.t()
    if dweight is not None:
        dz = dz + a_prev @ dweight.t()
    if dbias is not None:
        dz = dz + dbias
    return dz.expand(*a_prev.shape[:-1], weight.shape[0])


# the σ on torch's CUDA autocast float32 list (on CPU every σ runs in its input's dtype)
FLOAT32_ON_CUDA = ("softmax", "softplus")


# ---------------------------------------------------------------- the Functions
def _not_a_view(z: Tensor) -> Tensor:
    """``z`` as a tensor of its own. For (*, n_in) input with more than one leading dim,
    torch's linear computes on the rows and returns a view of that (N, n_out) result; a
    view coming out of a custom Function may not be modified in place (a following
    ``ReLU(inplace=True)`` fails), so the same storage is handed out as a tensor that is
    no view, as torch's matmul does with its own temporaries (no copy). Decided by the
    rank, not by ``z._is_view()``, which torch.compile cannot trace."""
    return torch.ops.aten._unsafe_view(z, z.shape) if z.dim() != 2 else z


class LinearFunction(BPFunction):
    """z^l = W^l a^{l-1} + b^l.

    Backward, given grad_output = ∂C/∂z^l = δ^l:
    BP3 ∂C/∂b^l = δ^l, BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ, and (W^l)ᵀ δ^l, the first
    factor of BP2, passed down (:func:`linear_bwd`).

    Batch-first: ``z = a_prev @ W.T + b``; ``grad_weight = delta.T @ a_prev``,
    ``grad_bias = delta.sum(0)``, ``grad_input = delta @ W``. Saves a_prev and W, the
    two factors of BP4 and BP2. Forward mode (``jvp``): dz = da_prev Wᵀ + a_prev dWᵀ + db.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _not_a_view(linear_fwd(input, weight, bias))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _bias = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        if PER_EXAMPLE:  # a clipping collector forms BP3/BP4 itself: skipped here
            need = per_example_need("linear", ctx, need)
        grads = linear_bwd(grad_output, a_prev, weight, need)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and a^{l-1} to it
            grads = per_example("linear", ctx, grads, grad_output, a_prev)
        return grads

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias) -> Tensor:
        a_prev, weight = ctx.saved_tensors
        return linear_jvp(a_prev, weight, da_prev, dweight, dbias)


class ActivationFunction(BPFunction):
    """a^l = σ(z^l).

    Backward: ∂C/∂z^l = ∂C/∂a^l ⊙ σ'(z^l), the ``⊙ σ'(z)`` factor of BP1 and BP2.
    σ' comes from what the activation saves (sigmoid and tanh keep a, since
    σ'(z) = a(1 − a) and 1 − a²; GELU and SiLU keep z). Softmax, whose Jacobian is
    not diagonal, gives δ = a ⊙ (grad_output − Σ_k grad_output_k a_k).

    Batch-first: elementwise, so the same formulas on (N, n) tensors.

    ``inplace=True`` overwrites z with a and returns it (``ctx.mark_dirty``), as
    torch's ``relu_``. Where σ' needs z, ``z_before`` is a copy of z taken before the
    overwrite (what torch's ``silu_`` keeps too); ``bptorch.functional.activation``
    makes it.

    Forward mode (``jvp``): da = σ'(z) ⊙ dz. The Jacobian of σ is symmetric (diagonal,
    or diag(a) − a aᵀ for softmax), so this is ``activation.delta`` applied to dz.
    """

    generate_vmap_rule = True

    @classmethod
    def autocast_policy(cls, device_type: str, args: tuple) -> str | None:
        # torch's lists: softmax and softplus are float32 ops on CUDA; every other σ runs
        # as it is
        return FLOAT32 if device_type == "cuda" and args[1].name in FLOAT32_ON_CUDA else None

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
        ctx.kernel = use_kernel(output)  # bptorch.kernels: the forward's choice, for backward
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def jvp(ctx: Any, dz: Tensor, _dactivation, _dname, _dinplace, _dz_before) -> Tensor:
        (saved,) = ctx.saved_tensors
        if saved is None and ctx.activation.saves == "z":  # z was overwritten, not kept
            raise RuntimeError(no_z_message(ctx.activation.name))
        da = ctx.activation.delta(dz, saved)  # da = σ'(z) ⊙ dz
        return dz.copy_(da) if ctx.inplace else da  # an in-place op updates its tangent

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        (saved,) = ctx.saved_tensors
        act = ctx.activation
        if saved is None and act.saves == "z":  # z was overwritten and not kept
            raise RuntimeError(no_z_message(act.name))
        # a = σ(z)  →  BP1/BP2's factor: ∂C/∂z = ∂C/∂a ⊙ σ'(z)
        delta = activation_delta(act, grad_output, saved, ctx.kernel)
        if DELTA_HOOKS:
            report_delta(ctx.name, act, delta, saved)
        return delta, None, None, None, None


# ---------------------------------------------------------------- PReLU
# a = max(z, 0) + α_c min(z, 0): leaky_relu whose slope α is a parameter, one per channel
# c (dim 1 of (N, C, *) input) or one shared by all. Two derivatives, one per factor:
#
#   ∂a/∂z = 1 where z > 0, α_c elsewhere (α_c at the kink z = 0, as torch)
#       → BP1/BP2's factor: ∂C/∂z = ∂C/∂a ⊙ σ'(z)
#   ∂a/∂α_c = min(z, 0)
#       → the BP4 of the slope: ∂C/∂α_c = Σ_{n, spatial} δ ⊙ min(z, 0), δ = ∂C/∂a here,
#         summed over every element α_c multiplies (the batch, the spatial positions), as
#         BP4 sums δ (a^{l−1})ᵀ over the examples of a batch.
def prelu_alpha(z: Tensor, weight: Tensor) -> Tensor:
    """α broadcast against z: (C,) as (C, 1, ..., 1) on dim 1, one slope as a 0-dim."""
    if weight.numel() == 1:
        return weight.reshape(())
    return weight.reshape(weight.numel(), *(1,) * (z.dim() - 2))


def prelu_fwd(z: Tensor, weight: Tensor) -> Tensor:
    """a = z where z > 0, α_c z elsewhere."""
    return torch.where(z > 0, z, prelu_alpha(z, weight) * z)


def prelu_bwd(grad_output: Tensor, z: Tensor, weight: Tensor,
              need: Need) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂z, ∂C/∂α) of a = max(z, 0) + α_c min(z, 0), given ∂C/∂a."""
    grad_input = grad_weight = None
    if need[0]:
        # a = max(z, 0) + α min(z, 0)  →  BP2's factor: ∂C/∂z = ∂C/∂a ⊙ (1 or α)
        grad_input = torch.where(z > 0, grad_output, prelu_alpha(z, weight) * grad_output)
    if need[1]:
        # a = max(z, 0) + α min(z, 0)  →  BP4 of α: ∂C/∂α_c = Σ ∂C/∂a ⊙ min(z, 0)
        per_element = grad_output * z.clamp(max=0)
        if weight.numel() == 1:
            grad_weight = per_element.sum().reshape(weight.shape)
        else:  # every dim but the channel dim 1
            grad_weight = per_element.sum([d for d in range(z.dim()) if d != 1])
    return grad_input, grad_weight


class PReLUFunction(BPFunction):
    """a = max(z, 0) + α_c min(z, 0), α a learned (C,) or (1,) slope.

    Backward, given grad_output = ∂C/∂a: ∂C/∂z = ∂C/∂a ⊙ σ'(z), σ' = 1 or α_c (BP1/BP2's
    factor), and the slope's own BP4, ∂C/∂α_c = Σ ∂C/∂a ⊙ min(z, 0) over the batch and the
    positions of channel c (:func:`prelu_bwd`). Saves z and α, the two factors of both.
    Forward mode (``jvp``): da = dz where z > 0, α dz + dα z elsewhere.

    Under autocast the op is on torch's lower-precision list (CPU and CUDA), as ``prelu``.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, weight: Tensor) -> Tensor:
        return prelu_fwd(input, weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        z, weight = ctx.saved_tensors
        grads = prelu_bwd(grad_output, z, weight, ctx.needs_input_grad)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ = ∂C/∂a and z to it
            grads = per_example("prelu", ctx, grads, grad_output, z)
        return grads

    @staticmethod
    def jvp(ctx: Any, dz, dweight) -> Tensor:
        z, weight = ctx.saved_tensors
        da = torch.zeros_like(z)
        if dz is not None:
            da = da + torch.where(z > 0, dz, prelu_alpha(z, weight) * dz)
        if dweight is not None:
            da = da + torch.where(z > 0, 0.0, prelu_alpha(z, dweight) * z)
        return da


# torch's own words for leaky_relu_ with a negative slope, whose backward it refuses:
# a no longer says where z > 0 and torch keeps no copy of z. bptorch refuses alike.
NO_Z_MESSAGE = (
    "In-place leakyReLu backward calculation is triggered with a negative slope which is "
    "not supported. This is caused by calling in-place forward function with a negative "
    "slope, please call out-of-place version instead. File an issue at "
    "https://github.com/pytorch/pytorch if you do require supporting in-place leakRelu "
    "backward calculation with negative slope"
)
# elu_ with α < 0: the same situation, torch's words for it
NO_Z_MESSAGE_ELU = (
    "In-place elu backward calculation is triggered with a negative slope which is not "
    "supported. This is caused by calling in-place forward function with a negative slope, "
    "please call out-of-place version instead."
)
# the in-place σ whose negative parameter makes them save z, and keep none when in place
KEEPS_NO_Z_IN_PLACE = ("leaky_relu", "elu")


def no_z_message(name: str) -> str:
    """torch's error for the backward of an in-place σ that kept no copy of z."""
    return NO_Z_MESSAGE_ELU if name == "elu" else NO_Z_MESSAGE


def dense_saved(activation: Activation, input: Tensor, weight: Tensor, bias: Tensor | None,
                output: Tensor) -> tuple:
    """What a dense layer keeps for backward: a_prev, W, and b where z is recomputed
    (σ' needs z), else a (σ' from a) or nothing (identity, σ' = 1)."""
    if activation.saves == "z":  # recompute z in backward rather than keep it
        return input, weight, bias, None
    return input, weight, None, output if activation.saves == "a" else None


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
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        activation: Activation,
        name: str | None = None,
    ) -> Tensor:
        return _not_a_view(dense_fwd(input, weight, bias, activation))  # identity σ: z itself

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, bias, activation, name = inputs
        ctx.activation, ctx.name = activation, name
        ctx.kernel = use_kernel(output)  # bptorch.kernels: the forward's choice, for backward
        saved = dense_saved(activation, input, weight, bias, output)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def jvp(ctx: Any, da_prev, dweight, dbias, _dactivation, _dname) -> Tensor:
        a_prev, weight, bias, a = ctx.saved_tensors
        dz = linear_jvp(a_prev, weight, da_prev, dweight, dbias)
        return ctx.activation.delta(dz, sigma_from(ctx.activation, a_prev, weight, bias, a))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a_prev, weight, bias, a = ctx.saved_tensors
        saved = sigma_from(ctx.activation, a_prev, weight, bias, a)
        need = ctx.needs_input_grad
        if PER_EXAMPLE:  # a clipping collector forms BP3/BP4 itself: skipped here
            need = per_example_need("linear", ctx, need)
        delta, grads = dense_bwd(grad_output, a_prev, weight, saved, ctx.activation,
                                 need, ctx.kernel)
        if DELTA_HOOKS:
            report_delta(ctx.name, ctx.activation, delta, saved, a_prev=a_prev)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and a^{l-1} to it
            grads = per_example("linear", ctx, grads, delta, a_prev)
        return (*grads, None, None)


linear = LinearFunction.apply
dense = DenseFunction.apply
prelu = PReLUFunction.apply

__all__ = ["ActivationFunction", "DenseFunction", "LinearFunction", "NO_Z_MESSAGE", "dense",
           "dense_bwd", "dense_fwd", "dense_saved", "linear", "linear_bwd", "linear_fwd",
           "linear_jvp", "sigma_from"]
__all__ += ["FLOAT32_ON_CUDA", "KEEPS_NO_Z_IN_PLACE", "PReLUFunction", "no_z_message", "prelu",
            "prelu_alpha", "prelu_bwd", "prelu_fwd"]


# ---------------------------------------------------------------- Triton kernel
# δ = ∂C/∂a ⊙ σ'(z) in one launch, for the elementwise σ whose σ' is a formula of the saved
# a or z (sigmoid, tanh, relu, leaky_relu, gelu, silu): the same products as each
# Activation's ``delta``. Softmax (not elementwise), identity (δ = ∂C/∂a) and a user's own σ
# take ``delta`` under any choice, and so does double backward (create_graph), whose
# torch ops are differentiable. Built on first use: importing this file imports no triton.
# tests/test_kernels.py runs it through Triton's interpreter against ``delta`` and torch.
_SIGMA_CODE = {("sigmoid", None): 0, ("tanh", None): 1, ("relu", None): 2,
               ("leaky_relu", None): 3, ("gelu", "none"): 4, ("gelu", "tanh"): 5,
               ("silu", None): 6}


def _build_triton_kernels() -> dict[str, Any]:
    """Each kernel's custom op by name (run once, on first use: :func:`base.kernel_family`)."""
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    @triton.jit
    def activation_delta_kernel(g_ptr, saved_ptr, delta_ptr, n, SIGMA: tl.constexpr,
                                SLOPE: tl.constexpr, ACC: tl.constexpr,
                                BLOCK: tl.constexpr):
        """δ = ∂C/∂a ⊙ σ'(z), σ' from the saved a (sigmoid, tanh, relu) or z (the rest)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)  # ∂C/∂a
        s = tl.load(saved_ptr + offs, mask=mask, other=0.0).to(ACC)  # a or z
        if SIGMA == 0:  # sigmoid: σ'(z) = a(1 − a)
            sp = s * (1.0 - s)
        elif SIGMA == 1:  # tanh: σ'(z) = 1 − a²
            sp = 1.0 - s * s
        elif SIGMA == 2:  # relu: σ'(z) = 1 where a > 0, else 0 (the subgradient 0 at z = 0)
            sp = tl.where(s > 0, 1.0, 0.0)
        elif SIGMA == 3:  # leaky_relu: σ'(z) = 1 where z > 0 (a > 0 alike), else the slope
            sp = tl.where(s > 0, 1.0, tl.full(s.shape, SLOPE, ACC))  # (exact in float64)
        elif SIGMA == 4:  # gelu: σ'(z) = Φ(z) + z φ(z)
            cdf = 0.5 * (1.0 + tl.math.erf(s * 0.7071067811865476))  # Φ(z)
            pdf = tl.exp(-0.5 * s * s) * 0.3989422804014327  # φ(z) = e^{−z²/2}/√(2π)
            sp = cdf + s * pdf
        elif SIGMA == 5:  # gelu, tanh form: u = √(2/π)(z + c z³), t = tanh u,
            # σ'(z) = (1 + t)/2 + z (1 − t²) √(2/π) (1 + 3c z²)/2
            u = 0.7978845608028654 * (s + 0.044715 * s * s * s)
            e = tl.exp(-2.0 * tl.abs(u))  # tanh u = sign(u)(1 − e^{−2|u|})/(1 + e^{−2|u|}),
            t = tl.where(u >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)  # which cannot overflow
            sp = (0.5 * (1.0 + t) + 0.5 * s * (1.0 - t * t) * 0.7978845608028654
                  * (1.0 + 3.0 * 0.044715 * s * s))
        else:  # silu: σ'(z) = s(z)(1 + z(1 − s(z))), s the sigmoid
            sig = 1.0 / (1.0 + tl.exp(-s))
            sp = sig * (1.0 + s * (1.0 - sig))
        delta = g * sp  # a = σ(z)  →  BP1/BP2: δ = ∂C/∂a ⊙ σ'(z)
        tl.store(delta_ptr + offs, delta.to(delta_ptr.dtype.element_ty), mask=mask)

    def _fake(grad_output, saved, sigma, slope):
        return torch.empty_like(grad_output)

    @kernel_op("activation_delta", _fake)
    def activation_delta_op(grad_output: Tensor, saved: Tensor, sigma: int,
                            slope: float) -> Tensor:
        delta = torch.empty_like(grad_output)
        n = grad_output.numel()
        acc = tl.float64 if grad_output.dtype == torch.float64 else tl.float32
        count_launch("activation_delta")
        wrap_triton(activation_delta_kernel)[(triton.cdiv(n, 1024),)](
            grad_output, saved, delta, n, SIGMA=sigma, SLOPE=slope, ACC=acc, BLOCK=1024)
        return delta

    return {"activation_delta": activation_delta_op}


_triton_kernels = kernel_family(_build_triton_kernels)


def activation_delta(activation: Activation, grad_output: Tensor, saved: Tensor | None,
                     kernel: bool) -> Tensor:
    """δ = ∂C/∂a ⊙ σ'(z): the Triton kernel where ``kernel`` (the forward's choice) and a
    kernel covers σ and no graph of the backward is taped, else ``activation.delta``."""
    sigma = _SIGMA_CODE.get((activation.name, activation.approximate))
    if (not kernel or sigma is None or saved is None or torch.is_grad_enabled()
            or saved.shape != grad_output.shape):
        return activation.delta(grad_output, saved)
    slope = activation.negative_slope if activation.negative_slope is not None else 0.0
    return _triton_kernels()["activation_delta"](
        grad_output.contiguous(), saved.contiguous(), sigma, slope)


__all__ += ["activation_delta"]
