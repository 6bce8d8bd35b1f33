"""matmul, bmm and the elementwise product (bptorch/functions/products.py) against torch:
every torch.matmul shape case (1-D, 2-D, batched, broadcast batch dims), drawn by
hypothesis, forward and gradients in float64 under a random upstream gradient; gradcheck,
gradgradcheck and forward mode; create_graph and torch.func.grad; autocast in bfloat16;
the errors; and a broken backward that the checks must reject."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as F
from bptorch.functions.products import MatmulFunction, matmul_bwd, reduce_to

F64 = torch.float64


def grads_of(fn, inputs, g):
    """fn(*inputs) and its gradients w.r.t. every floating input under upstream ``g``."""
    leaves = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) and
              t.is_floating_point() else t for t in inputs]
    out = fn(*leaves)
    wrt = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    return out, torch.autograd.grad(out, wrt, g)


def assert_same_as_torch(ours, theirs, inputs):
    ref = theirs(*inputs)
    g = torch.randn(ref.shape, dtype=ref.dtype)
    out_o, grads_o = grads_of(ours, inputs, g)
    out_t, grads_t = grads_of(theirs, inputs, g)
    torch.testing.assert_close(out_o, out_t)
    for a, b in zip(grads_o, grads_t):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- matmul's shapes
@st.composite
def matmul_shapes(draw):
    """Two shapes torch.matmul multiplies: any of 1-D/2-D/batched on each side, batch dims
    that broadcast (missing on one side, or of size 1)."""
    m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
    batch = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))

    def side(inner):  # a 1-D vector, a matrix, or a batch with some dims dropped or set to 1
        kind = draw(st.sampled_from(["1d", "2d", "batched"]))
        if kind == "1d":
            return (k,)
        if kind == "2d" or not batch:
            return inner
        dims = [1 if draw(st.booleans()) else b for b in batch]
        return (*dims[draw(st.integers(0, len(dims) - 1)):], *inner)

    return side((m, k)), side((k, n))


@settings(max_examples=40, deadline=None)
@given(shapes=matmul_shapes())
def test_matmul_every_shape_case_equals_torch(shapes):
    a_shape, b_shape = shapes
    a, b = torch.randn(a_shape, dtype=F64), torch.randn(b_shape, dtype=F64)
    assert_same_as_torch(F.matmul, torch.matmul, (a, b))


# the named cases: each path of matmul_bwd (1-D on either side, the two folds, broadcast
# batch dims summed back on either side)
MATMUL_CASES = {
    "dot": ((5,), (5,)),
    "mm": ((3, 5), (5, 4)),
    "vec-mat": ((5,), (5, 4)),
    "mat-vec": ((3, 5), (5,)),
    "vec-batched": ((5,), (2, 5, 4)),
    "batched-vec": ((2, 3, 5), (5,)),
    "batched-mat (fold dB)": ((2, 3, 5), (5, 4)),
    "mat-batched (fold dA)": ((2, 3), (2, 2, 3, 2)),
    "broadcast-1": ((2, 1, 3, 5), (4, 5, 2)),
    "broadcast-both": ((1, 3, 2, 3), (2, 1, 3, 2)),
    "bmm-like": ((3, 2, 5), (3, 5, 4)),
}


@pytest.mark.parametrize("case", list(MATMUL_CASES))
def test_matmul_gradcheck_gradgradcheck_forward_ad(case):
    a_shape, b_shape = MATMUL_CASES[case]
    a = torch.randn(a_shape, dtype=F64, requires_grad=True)
    b = torch.randn(b_shape, dtype=F64, requires_grad=True)
    assert gradcheck(F.matmul, (a, b), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(F.matmul, (a, b))


@pytest.mark.parametrize("case", list(MATMUL_CASES))
def test_matmul_one_operand_without_grad(case):
    """needs_input_grad: only the gradient asked for is computed, and it is right."""
    a_shape, b_shape = MATMUL_CASES[case]
    a = torch.randn(a_shape, dtype=F64, requires_grad=True)
    b = torch.randn(b_shape, dtype=F64)
    out = F.matmul(a, b)
    g = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, a, g)
    (ref,) = torch.autograd.grad(torch.matmul(a, b), a, g)
    torch.testing.assert_close(ours, ref)
    assert matmul_bwd(g, a.detach(), b, (False, True))[0] is None


@pytest.mark.parametrize("case", list(MATMUL_CASES))
def test_matmul_create_graph_and_func_grad_equal_torch(case):
    a_shape, b_shape = MATMUL_CASES[case]
    a, b = torch.randn(a_shape, dtype=F64), torch.randn(b_shape, dtype=F64)
    g = torch.randn(torch.matmul(a, b).shape, dtype=F64)
    results = []
    for fn in (F.matmul, torch.matmul):
        ai, bi = a.clone().requires_grad_(), b.clone().requires_grad_()
        gi = g.clone().requires_grad_()
        first = torch.autograd.grad(fn(ai, bi), (ai, bi), gi, create_graph=True)
        s = (first[0] * torch.cos(ai)).sum() + (first[1] ** 2).sum()
        second = torch.autograd.grad(s, (ai, bi, gi), allow_unused=True, materialize_grads=True)
        fg = torch.func.grad(lambda x, y: (fn(x, y) * g).sum(), argnums=(0, 1))(a, b)
        results.append((first, second, fg))
    for x, y in zip(*results):
        for p, q in zip(x, y):
            torch.testing.assert_close(p, q)


def test_matmul_vmap_per_example_gradients():
    """torch.func.vmap over the Function (generate_vmap_rule) equals a loop."""
    w = torch.randn(5, 3, dtype=F64)
    xs = torch.randn(6, 4, 5, dtype=F64)
    per = torch.func.vmap(torch.func.grad(lambda w, x: F.matmul(x, w).tanh().sum()),
                          in_dims=(None, 0))(w, xs)
    for i in range(6):
        (ref,) = torch.autograd.grad(torch.matmul(xs[i], w.requires_grad_()).tanh().sum(), w)
        torch.testing.assert_close(per[i], ref)


@pytest.mark.parametrize("low_input", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["mm", "batched-mat (fold dB)", "broadcast-both", "vec-mat"])
def test_matmul_autocast_bfloat16(case, low_input):
    """matmul is on torch's lower-precision list: bf16 output; gradients in each operand's
    own dtype, close to torch's at bf16's scale."""
    a_shape, b_shape = MATMUL_CASES[case]
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    if low_input:
        a = a.bfloat16()
    res = []
    for fn in (F.matmul, torch.matmul):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(2)
            ref = torch.matmul(a, b)
            res.append(grads_of(fn, (a, b), torch.randn(ref.shape).to(ref.dtype)))
    (o1, g1), (o2, g2) = res
    assert o1.dtype == o2.dtype == torch.bfloat16
    torch.testing.assert_close(o1.float(), o2.float(), rtol=0, atol=0)  # the same bf16 matmul
    for x, y in zip(g1, g2):
        assert x.dtype == y.dtype
        assert float((x.float() - y.float()).abs().max()) <= 2e-2 * max(
            float(y.float().abs().max()), 1.0)


def test_matmul_integer_operands_as_torch():
    a, b = torch.randint(-5, 5, (2, 3, 4)), torch.randint(-5, 5, (4, 2))
    assert torch.equal(F.matmul(a, b), torch.matmul(a, b))


def test_matmul_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        F.matmul(torch.randn(()), torch.randn(3))
    with pytest.raises(ValueError, match=r"last dim \(3\) must equal other's second-to-last "
                                         r"dim \(4\)"):
        F.matmul(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="only dim"):
        F.matmul(torch.randn(2, 3), torch.randn(4))
    with pytest.raises(ValueError, match="do not broadcast"):
        F.matmul(torch.randn(2, 3, 4), torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="same dtype"):
        F.matmul(torch.randn(2, 3), torch.randn(3, 4, dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.matmul([[1.0]], torch.randn(1, 1))


def test_reduce_to_sums_the_broadcast_dims():
    g = torch.arange(24.0).reshape(2, 3, 4)
    torch.testing.assert_close(reduce_to(g, torch.Size([3, 4])), g.sum(0))
    torch.testing.assert_close(reduce_to(g, torch.Size([3, 1])), g.sum((0, 2)).unsqueeze(-1))
    torch.testing.assert_close(reduce_to(g, torch.Size([1, 1, 4])), g.sum((0, 1), keepdim=True))
    assert reduce_to(g, g.shape) is g


def test_a_broken_matmul_backward_is_rejected():
    """dB without the sum over A's batch (one matrix's Aᵀδ kept): gradcheck must say no."""

    class Broken(MatmulFunction):
        @staticmethod
        def backward(ctx, grad_output):
            a, b = ctx.saved_tensors
            return grad_output @ b.transpose(-1, -2), a[0].transpose(-1, -2) @ grad_output[0]

    a = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    b = torch.randn(4, 5, dtype=F64, requires_grad=True)
    assert gradcheck(MatmulFunction.apply, (a, b))
    assert not gradcheck(Broken.apply, (a, b), raise_exception=False)


# ---------------------------------------------------------------- bmm
def test_bmm_equals_torch_gradcheck_forward_ad():
    a = torch.randn(3, 2, 5, dtype=F64, requires_grad=True)
    b = torch.randn(3, 5, 4, dtype=F64, requires_grad=True)
    assert_same_as_torch(F.bmm, torch.bmm, (a.detach(), b.detach()))
    assert gradcheck(F.bmm, (a, b), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(F.bmm, (a, b))
    g = torch.randn(3, 2, 4, dtype=F64)
    for argnums in (0, 1):
        ours = torch.func.grad(lambda x, y: (F.bmm(x, y) * g).sum(), argnums)(a, b)
        ref = torch.func.grad(lambda x, y: (torch.bmm(x, y) * g).sum(), argnums)(a, b)
        torch.testing.assert_close(ours, ref)


def test_bmm_create_graph_and_autocast():
    a, b = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 4, 5, dtype=F64)
    g = torch.randn(2, 3, 5, dtype=F64)
    results = []
    for fn in (F.bmm, torch.bmm):
        ai, bi = a.clone().requires_grad_(), b.clone().requires_grad_()
        first = torch.autograd.grad(fn(ai, bi), (ai, bi), g, create_graph=True)
        results.append(torch.autograd.grad((first[0] * ai).sum() + first[1].sum(), (ai, bi)))
    for p, q in zip(*results):
        torch.testing.assert_close(p, q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, y = a.float().requires_grad_(), b.float().requires_grad_()
        out, ref = F.bmm(x, y), torch.bmm(x, y)
    assert out.dtype == ref.dtype == torch.bfloat16
    gx, gy = torch.autograd.grad(out.float().sum(), (x, y))
    rx, ry = torch.autograd.grad(ref.float().sum(), (x, y))
    assert gx.dtype == rx.dtype == torch.float32
    torch.testing.assert_close(gx, rx, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gy, ry, rtol=2e-2, atol=2e-2)


def test_bmm_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="3-D"):
        F.bmm(torch.randn(2, 3), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"mat2 of shape \(b=2, m=3, p\)"):
        F.bmm(torch.randn(2, 2, 3), torch.randn(3, 3, 4))
    with pytest.raises(ValueError, match=r"mat2 of shape \(b=2, m=3, p\)"):
        F.bmm(torch.randn(2, 2, 3), torch.randn(2, 4, 4))


# ---------------------------------------------------------------- the elementwise product
@st.composite
def broadcast_pair(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))
    other = [1 if draw(st.booleans()) else n for n in shape]
    other = other[draw(st.integers(0, len(other))):]  # drop some leading dims
    return (tuple(shape), tuple(other)) if draw(st.booleans()) else (tuple(other), tuple(shape))


@settings(max_examples=60, deadline=None)
@given(shapes=broadcast_pair())
def test_mul_broadcast_equals_torch(shapes):
    x, y = torch.randn(shapes[0], dtype=F64), torch.randn(shapes[1], dtype=F64)
    assert_same_as_torch(F.mul, torch.mul, (x, y))


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)),
                                    ((2, 1, 4), (3, 1)), ((), (3, 2))])
def test_mul_gradcheck_gradgradcheck_forward_ad(shapes):
    x = torch.randn(shapes[0], dtype=F64, requires_grad=True)
    y = torch.randn(shapes[1], dtype=F64, requires_grad=True)
    assert gradcheck(F.mul, (x, y), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(F.mul, (x, y))


@pytest.mark.parametrize("scalar", [2.5, -3, True])
def test_mul_by_a_python_number_either_side(scalar):
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    g = torch.randn(3, 4, dtype=F64)
    for out in (F.mul(x, scalar), F.mul(scalar, x)):
        torch.testing.assert_close(out, x * scalar)
        torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], g * scalar)
    assert gradcheck(lambda x: F.mul(x, scalar), (x,), check_forward_ad=True)
    assert gradgradcheck(lambda x: F.mul(x, scalar), (x,))


def test_mul_mixed_dtypes_promote_and_give_each_its_own_dtype():
    x = torch.randn(3, 4, requires_grad=True)  # float32
    y = torch.randn(4, dtype=F64, requires_grad=True)
    g = torch.randn(3, 4, dtype=F64)
    out = F.mul(x, y)
    assert out.dtype == torch.mul(x, y).dtype == F64
    gx, gy = torch.autograd.grad(out, (x, y), g)
    rx, ry = torch.autograd.grad(torch.mul(x, y), (x, y), g)
    assert (gx.dtype, gy.dtype) == (rx.dtype, ry.dtype) == (torch.float32, F64)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)
    ints = torch.arange(6).reshape(2, 3)
    assert torch.equal(F.mul(ints, 3), ints * 3) and F.mul(ints, 3).dtype == torch.int64


def test_mul_create_graph_func_grad_and_autocast():
    x, y = torch.randn(2, 3, 4, dtype=F64), torch.randn(3, 1, dtype=F64)
    g = torch.randn(2, 3, 4, dtype=F64)
    results = []
    for fn in (F.mul, torch.mul):
        xi, yi, gi = (t.clone().requires_grad_() for t in (x, y, g))
        first = torch.autograd.grad(fn(xi, yi), (xi, yi), gi, create_graph=True)
        s = (first[0] * xi.sin()).sum() + (first[1] ** 2).sum()
        second = torch.autograd.grad(s, (xi, yi, gi))
        fg = torch.func.grad(lambda a, b: (fn(a, b) * g).sum(), argnums=(0, 1))(x, y)
        results.append((*first, *second, *fg))
    for p, q in zip(*results):
        torch.testing.assert_close(p, q)
    a, b = torch.randn(3, 4), torch.randn(3, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.mul(a, b).dtype == torch.mul(a, b).dtype == torch.float32  # on no list
        assert F.mul(b, 2.0).dtype == torch.bfloat16


def test_mul_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="do not broadcast"):
        F.mul(torch.randn(2, 3), torch.randn(4))
    with pytest.raises(TypeError, match="Python number"):
        F.mul(torch.randn(2), "2")
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.mul(2.0, 3.0)
