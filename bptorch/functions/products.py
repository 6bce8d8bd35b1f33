"""Products of two tensors: the matrix product (``matmul``, ``bmm``) and the elementwise
product (``mul``), each with its backward written out.

The matrix product. For C = A B, with A (m, k), B (k, n), C (m, n),
C_ij = Σ_p A_ip B_pj, so ∂C_ij/∂A_ip = B_pj and ∂C_ij/∂B_pj = A_ip. Given δ = ∂C/∂C
(the upstream gradient, grad_output):

    ∂C/∂A_ip = Σ_j δ_ij B_pj      →   dA = δ Bᵀ      (m, n)(n, k) = (m, k)
    ∂C/∂B_pj = Σ_i A_ip δ_ij      →   dB = Aᵀ δ      (k, m)(m, n) = (k, n)

This is BP2 and BP4 of a linear layer read the other way round: z = a_prev Wᵀ is
C = A B with A = a_prev, B = Wᵀ, so dA = δ W (BP2's (W)ᵀδ, batch-first) and dBᵀ = δᵀ a_prev
(BP4). ``torch.matmul``'s other shapes reduce to this one:

* 1-D A (k,) is a row (1, k), 1-D B (k,) a column (k, 1); the unit dim is dropped from C.
  Backward puts it back on δ, computes the 2-D products, and drops it from dA, dB.
* batched operands (*, m, k) and (*, k, n) multiply matrix by matrix over the leading
  (batch) dims, which broadcast. A batch dim that was broadcast (missing, or of size 1)
  was used by every matrix along it, so its gradient is the sum over it: dA and dB are
  summed back down to the operand's own shape (:func:`reduce_to`). When one operand is
  a single matrix (x @ W with x (N, T, k)), that sum is taken inside one matmul by
  folding the batch into the rows, instead of materialising a (*, k, n) gradient first.

The elementwise product. For c = x ⊙ y (broadcast), the product rule
d(x ⊙ y) = dx ⊙ y + x ⊙ dy gives

    ∂C/∂x = δ ⊙ y,   ∂C/∂y = δ ⊙ x,

each summed back to its operand's shape over the dims broadcasting added or stretched.
A Python number y takes no gradient.

Every backward is differentiable torch ops (double backward, gradgradcheck). Autocast:
``matmul`` and ``bmm`` are on torch's lower-precision list (``LOWER``); ``mul`` is on none
and runs in its inputs' promoted dtype, as torch's.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LOWER, PER_EXAMPLE, BPFunction, per_example

Need = tuple[bool, ...]


def reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """``grad`` summed down to ``shape``: over the leading dims broadcasting added, then
    (keepdim) over the dims where ``shape`` has 1 and ``grad`` more. The gradient of a
    broadcast, which copies one value to every position along those dims."""
    extra = grad.dim() - len(shape)
    if extra > 0:
        grad = grad.sum(tuple(range(extra)))  # dims that broadcasting prepended
    stretched = tuple(d for d, n in enumerate(shape) if n == 1 and grad.shape[d] != 1)
    if stretched:
        grad = grad.sum(stretched, keepdim=True)  # size-1 dims broadcasting stretched
    return grad


# ---------------------------------------------------------------- the reference pair
def matmul_fwd(a: Tensor, b: Tensor) -> Tensor:
    """C = A B with torch.matmul's shape rules (1-D, 2-D, batched, broadcast batch)."""
    return torch.matmul(a, b)


def matmul_bwd(delta: Tensor, a: Tensor, b: Tensor,
               need: Need) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂A, ∂C/∂B) of C = A B, given δ = ∂C/∂C of C's shape."""
    grad_a = grad_b = None
    # 1-D operands as matrices: A (k,) → (1, k) a row, B (k,) → (k, 1) a column;
    # δ gets the unit dims that the forward dropped from C
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    d2 = delta
    if b.dim() == 1:
        d2 = d2.unsqueeze(-1)  # (*, m) → (*, m, 1); a dot product's () → (1,)
    if a.dim() == 1:
        d2 = d2.unsqueeze(-2)  # (*, n) → (*, 1, n); a dot product's (1,) → (1, 1)
    if need[0]:
        if a2.dim() == 2 and d2.dim() > 2:
            # C = A B, A one matrix, B batched  →  dA = Σ_batch δ Bᵀ, the batch folded into
            # the inner dim: (m, batch·n) @ (batch·n, k)
            k = a2.shape[-1]
            bt = b2.expand(*d2.shape[:-2], *b2.shape[-2:]).transpose(-1, -2)  # (*, n, k)
            grad_a = d2.movedim(-2, 0).reshape(d2.shape[-2], -1) @ bt.reshape(-1, k)
        else:
            # C = A B  →  dA = δ Bᵀ, then summed over the batch dims A was broadcast along
            grad_a = reduce_to(d2 @ b2.transpose(-1, -2), a2.shape)
        if a.dim() == 1:
            grad_a = grad_a.squeeze(0)  # (1, k) → (k,)
    if need[1]:
        if b2.dim() == 2 and d2.dim() > 2:
            # C = A B, B one matrix, A batched  →  dB = Σ_batch Aᵀ δ, the batch folded into
            # the rows: (k, batch·m) @ (batch·m, n)
            k = b2.shape[-2]
            a_full = a2.expand(*d2.shape[:-2], *a2.shape[-2:])  # (*, m, k)
            grad_b = a_full.reshape(-1, k).transpose(0, 1) @ d2.reshape(-1, d2.shape[-1])
        else:
            # C = A B  →  dB = Aᵀ δ, then summed over the batch dims B was broadcast along
            grad_b = reduce_to(a2.transpose(-1, -2) @ d2, b2.shape)
        if b.dim() == 1:
            grad_b = grad_b.squeeze(-1)  # (k, 1) → (k,)
    return grad_a, grad_b


def mul_fwd(x: Tensor, y: Tensor | float) -> Tensor:
    """c = x ⊙ y, broadcast (y a tensor or a Python number)."""
    return torch.mul(x, y)


def mul_bwd(delta: Tensor, x: Tensor, y: Tensor | float,
            need: Need) -> tuple[Tensor | None, Tensor | None]:
    """(∂C/∂x, ∂C/∂y) of c = x ⊙ y, given δ = ∂C/∂c (y a number: no ∂C/∂y)."""
    grad_x = grad_y = None
    if need[0]:
        # c = x ⊙ y  →  product rule, x's term: ∂C/∂x = δ ⊙ y, summed to x's shape
        grad_x = reduce_to(delta * y, x.shape)
    if len(need) > 1 and need[1] and isinstance(y, Tensor):
        # c = x ⊙ y  →  product rule, y's term: ∂C/∂y = δ ⊙ x, summed to y's shape
        grad_y = reduce_to(delta * x, y.shape)
    return grad_x, grad_y


# ---------------------------------------------------------------- the Functions
class MatmulFunction(BPFunction):
    """C = A B, every shape torch.matmul takes.

    Backward, given grad_output = δ = ∂C/∂C: dA = δ Bᵀ and dB = Aᵀ δ (BP2 and BP4 of a
    linear layer), with 1-D operands as a row or a column and broadcast batch dims summed
    back (:func:`matmul_bwd`). Saves A and B, each the other's factor.
    Forward mode (``jvp``): dC = dA B + A dB.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, other: Tensor) -> Tensor:
        return matmul_fwd(input, other)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a, b = ctx.saved_tensors
        grads = matmul_bwd(grad_output, a, b, ctx.needs_input_grad)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and both factors to it
            grads = per_example("matmul", ctx, grads, grad_output, (a, b))
        return grads

    @staticmethod
    def jvp(ctx: Any, da, db) -> Tensor:
        a, b = ctx.saved_tensors
        terms = []
        if da is not None:
            terms.append(torch.matmul(da, b))  # dA B
        if db is not None:
            terms.append(torch.matmul(a, db))  # A dB
        return sum(terms[1:], terms[0])  # jvp is called with at least one tangent


class BmmFunction(BPFunction):
    """C_i = A_i B_i for A (b, m, k), B (b, k, n): no broadcasting, as torch.bmm.

    Backward: dA_i = δ_i B_iᵀ, dB_i = A_iᵀ δ_i, one per batch entry (nothing to sum back).
    Saves A and B. Forward mode (``jvp``): dC = dA B + A dB.
    """

    generate_vmap_rule = True
    autocast = LOWER

    @staticmethod
    def forward(input: Tensor, mat2: Tensor) -> Tensor:
        return torch.bmm(input, mat2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        a, b = ctx.saved_tensors
        delta = grad_output
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.bmm(delta, b.transpose(1, 2))  # C_i = A_i B_i → dA_i = δ_i B_iᵀ
        if ctx.needs_input_grad[1]:
            grad_b = torch.bmm(a.transpose(1, 2), delta)  # C_i = A_i B_i → dB_i = A_iᵀ δ_i
        if PER_EXAMPLE:  # a collection is on: a parameter operand is refused there
            return per_example("bmm", ctx, (grad_a, grad_b), delta, (a, b))
        return grad_a, grad_b

    @staticmethod
    def jvp(ctx: Any, da, db) -> Tensor:
        a, b = ctx.saved_tensors
        dc = torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=a.dtype, device=a.device)
        if da is not None:
            dc = dc + torch.bmm(da, b)
        if db is not None:
            dc = dc + torch.bmm(a, db)
        return dc


class MulFunction(BPFunction):
    """c = x ⊙ y, broadcast; y a tensor or a Python number.

    Backward, the product rule: ∂C/∂x = δ ⊙ y and ∂C/∂y = δ ⊙ x, each summed back to
    its operand's shape (:func:`mul_bwd`). Saves x and y (a number stays on ctx).
    Forward mode (``jvp``): dc = dx ⊙ y + x ⊙ dy.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, other: Tensor | float) -> Tensor:
        return mul_fwd(input, other)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, y = inputs
        ctx.y_number = None if isinstance(y, Tensor) else y
        saved = (x, y) if isinstance(y, Tensor) else (x, None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, y = ctx.saved_tensors
        if y is None:
            y = ctx.y_number
        grads = mul_bwd(grad_output, x, y, ctx.needs_input_grad)
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and both factors to it
            grads = per_example("mul", ctx, grads, grad_output, (x, y))
        return grads

    @staticmethod
    def jvp(ctx: Any, dx, dy) -> Tensor:
        x, y = ctx.saved_tensors
        if y is None:
            y = ctx.y_number
        dc = torch.zeros((), dtype=torch.result_type(x, y), device=x.device)
        if dx is not None:
            dc = dc + dx * y  # dx ⊙ y
        if dy is not None:
            dc = dc + x * dy  # x ⊙ dy
        return dc.expand(torch.broadcast_shapes(x.shape, getattr(y, "shape", ())))


matmul = MatmulFunction.apply
bmm = BmmFunction.apply
mul = MulFunction.apply

__all__ = ["BmmFunction", "MatmulFunction", "MulFunction", "bmm", "matmul", "matmul_bwd",
           "matmul_fwd", "mul", "mul_bwd", "mul_fwd", "reduce_to"]


# ---------------------------------------------------------------- einsum
# C[out] = Σ_{labels not in out} Π_k A_k[s_k]: every operand enters once, as a factor, so
# C is linear in each operand with the others held fixed (multilinear). Its derivative
# with respect to A_i is therefore the same sum with A_i's factor taken out:
#
#     ∂C/∂A_i[s_i] = Σ_{labels not in s_i} δ[out] Π_{k≠i} A_k[s_k]
#
# which is itself an einsum: δ and the other operands in, A_i's subscripts out (the
# subscripts of A_i and C swap places). C = A B ('ik,kj->ij') gives dA = 'ij,kj->ik'
# = δ Bᵀ and dB = 'ik,ij->kj' = Aᵀ δ, matmul's pair. Three cases need a step more:
#
# * a label only A_i has (summed out in the forward, 'ij->i'): C does not depend on
#   where along it an element sits, only through the sum, so the gradient is copied
#   along it (expanded) from the einsum over the other labels;
# * a label repeated within A_i (a diagonal, 'ii->i'): only the diagonal entries enter
#   C, so the gradient is the einsum's result on the diagonal and 0 off it, written as
#   a product with the identity, ∂C/∂A[i, i'] = g[i] 1[i = i'];
# * a dim of size 1 that broadcasting stretched (the '...' dims, or a label of size 1
#   against n): the forward copied it, so its gradient is summed back (reduce_to).


def _einsum_parse(equation: str, operands: tuple[Tensor, ...]) -> tuple[list[str], str]:
    """(each operand's subscripts, the output's) with '...' spelled out as letters the
    equation does not use, and the implicit output ('ij,jk') made explicit as torch makes
    it: the '...' dims first, then the labels that occur once, in alphabetical order."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum: the equation names {len(terms)} operands, got "
                         f"{len(operands)}")
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            if c not in equation]
    n_ell = max((t.dim() - len(s.replace("...", "")) for s, t in zip(terms, operands)
                 if "..." in s), default=0)
    ell = "".join(free[:n_ell])  # the broadcast dims, right-aligned as in broadcasting
    subs = []
    for s, t in zip(terms, operands):
        if "..." in s:
            k = t.dim() - len(s.replace("...", ""))
            s = s.replace("...", ell[n_ell - k:] if k else "")
        if len(s) != t.dim() or not s.isalpha():
            raise ValueError(f"einsum: subscripts {s!r} for an operand of shape "
                             f"{tuple(t.shape)}")
        subs.append(s)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = "".join(subs)
        out = ell + "".join(sorted(c for c in set(counts) if counts.count(c) == 1
                                   and c not in ell))
    return subs, out


def einsum_fwd(equation: str, *operands: Tensor) -> Tensor:
    """C = torch.einsum(equation, *operands)."""
    return torch.einsum(equation, *operands)


def einsum_bwd(delta: Tensor, equation: str, operands: tuple[Tensor, ...],
               need: Need) -> list[Tensor | None]:
    """∂C/∂A_i for each operand i that ``need`` asks for, given δ = ∂C/∂C."""
    subs, out = _einsum_parse(equation, operands)
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
             if c not in "".join(subs) + out]
    grads: list[Tensor | None] = []
    for i, (s_i, a_i) in enumerate(zip(subs, operands)):
        if not need[i]:
            grads.append(None)
            continue
        others = [(s, t) for k, (s, t) in enumerate(zip(subs, operands)) if k != i]
        reached = set(out).union(*(set(s) for s, _ in others))
        unique = "".join(dict.fromkeys(s_i))  # A_i's labels, each once (diagonals folded)
        kept = "".join(c for c in unique if c in reached)
        # C = Σ Π_k A_k  →  ∂C/∂A_i = einsum(δ, A_k≠i → s_i): the subscripts swapped
        g = torch.einsum(",".join([out] + [s for s, _ in others]) + "->" + kept,
                         delta, *(t for _, t in others))
        # a label only A_i has: summed out in the forward  →  its gradient copied along it
        size = dict(zip(s_i, a_i.shape))
        for c in unique:
            if c not in reached:
                g = g.unsqueeze(-1).expand(*g.shape, size[c])
                kept += c
        # a repeated label (diagonal)  →  the gradient on the diagonal, 0 off it:
        # ∂C/∂A[.., i, .., i', ..] = g[.., i, ..] 1[i = i']
        full, eyes, eye_subs = "", [], []
        for c in s_i:
            if c in full:
                fresh = spare.pop()
                eyes.append(torch.eye(size[c], dtype=g.dtype, device=g.device))
                eye_subs.append(c + fresh)
                full += fresh
            else:
                full += c
        if eyes:
            g = torch.einsum(",".join([kept] + eye_subs) + "->" + full, g, *eyes)
        elif kept != full:
            g = torch.einsum(kept + "->" + full, g)  # A_i's own label order
        # broadcast dims of size 1 (stretched in the forward)  →  summed back
        grads.append(reduce_to(g, a_i.shape))
    return grads


class EinsumFunction(BPFunction):
    """C = einsum(equation, A_1, ..., A_n), every equation torch.einsum takes ('...',
    implicit output, diagonals, broadcasting).

    Backward, the contraction being multilinear: ∂C/∂A_i = einsum(δ, A_k≠i → s_i), the
    subscripts of A_i and C swapped (:func:`einsum_bwd`, the derivation above it).
    Saves the operands, each the others' factor. Forward mode (``jvp``): dC = Σ_i
    einsum(..., dA_i, ...), the product rule over the factors.
    """

    generate_vmap_rule = True
    autocast = LOWER  # torch's einsum runs as bmm, on the lower-precision list

    @staticmethod
    def forward(equation: str, *operands: Tensor) -> Tensor:
        return einsum_fwd(equation, *operands)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.equation = inputs[0]
        ctx.save_for_backward(*inputs[1:])
        ctx.save_for_forward(*inputs[1:])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        operands = ctx.saved_tensors
        grads = (None, *einsum_bwd(grad_output, ctx.equation, operands,
                                   ctx.needs_input_grad[1:]))
        if PER_EXAMPLE:  # a collection is on (bptorch.extensions): δ and the operands to it
            grads = per_example("einsum", ctx, grads, grad_output, operands)
        return grads

    @staticmethod
    def jvp(ctx: Any, _dequation, *tangents) -> Tensor:
        operands = ctx.saved_tensors
        terms = [einsum_fwd(ctx.equation, *operands[:i], d, *operands[i + 1:])
                 for i, d in enumerate(tangents) if d is not None]
        return sum(terms[1:], terms[0])  # the product rule: one term per factor


einsum = EinsumFunction.apply
__all__ += ["EinsumFunction", "einsum", "einsum_bwd", "einsum_fwd"]
