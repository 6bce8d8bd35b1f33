"""The costs over (*, C), classes last: shapes, reductions and index/soft targets against
torch's losses under random upstream gradients; finite costs and gradients at
saturation (|z| = 17, 40, 100) for every form; the probability forms agree with torch's
BCELoss there; soft targets whose rows do not sum to 1 on both engines."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, vmap

import bptorch
import bptorch.nn as bnn
from bptorch.functions import CostFunction, get_cost

from helpers import book_sgd_step

F64 = torch.float64
N, T, C = 5, 3, 4
SHAPES = {"NC": (N,), "NTC": (N, T), "unbatched": ()}  # the leading positions (*)
FORMS = [  # (module, logits)
    (bnn.QuadraticCost, False),
    (bnn.CrossEntropyCost, False),
    (bnn.CrossEntropyCost, True),
    (bnn.LogLikelihoodCost, False),
    (bnn.LogLikelihoodCost, True),
]
FORM_IDS = ["quadratic", "ce", "ce-logits", "ll", "ll-logits"]


def _make(cls, logits, reduction="mean"):
    return cls(reduction=reduction) if cls is bnn.QuadraticCost else cls(logits, reduction)


def _torch_per_position(cls, logits, out, y):
    """C_x per position (*) by torch's own losses; y is indices (*) or float (*, C)."""
    lead, k = out.shape[:-1], out.shape[-1]
    dense = TF.one_hot(y, k).to(out.dtype) if not y.is_floating_point() else y
    if cls is bnn.QuadraticCost:
        return 0.5 * TF.mse_loss(out, dense, reduction="none").sum(-1)
    if cls is bnn.CrossEntropyCost:
        f = TF.binary_cross_entropy_with_logits if logits else TF.binary_cross_entropy
        return f(out, dense, reduction="none").sum(-1)
    # log-likelihood: cross_entropy on z, nll_loss on ln a, in torch's (M, C) layout
    flat = out.reshape(-1, k)
    target = y.reshape(-1, k) if y.is_floating_point() else y.reshape(-1).long()
    if logits:
        per = TF.cross_entropy(flat, target, reduction="none")
    elif y.is_floating_point():
        per = -(target * flat.log()).sum(-1)
    else:
        per = TF.nll_loss(flat.log(), target, reduction="none")
    return per.reshape(lead)


def _inputs(logits, lead, target_kind, dtype=F64):
    raw = torch.randn(*lead, C, dtype=dtype)
    out = raw if logits else 0.05 + 0.9 * torch.rand(*lead, C, dtype=dtype)
    if target_kind == "indices":
        y = torch.randint(0, C, lead)
    else:  # soft, in [0, 1] (BCELoss checks) but rows that do not sum to 1 (Σ_j y_j ≈ 2)
        y = torch.rand(*lead, C, dtype=dtype)
    return out.requires_grad_(), y


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("target_kind", ["indices", "soft"])
@pytest.mark.parametrize("lead", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("cls,logits", FORMS, ids=FORM_IDS)
def test_cost_matches_torch(cls, logits, lead, target_kind, reduction):
    out, y = _inputs(logits, lead, target_kind)
    soft = y.is_floating_point()
    if soft:
        y.requires_grad_()
    ours = _make(cls, logits, reduction)(out, y)
    per = _torch_per_position(cls, logits, out, y)
    ref = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    assert ours.shape == ref.shape == (lead if reduction == "none" else ())
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)  # a random upstream gradient, one per position for "none"
    wrt = (out, y) if soft else (out,)
    for a, b in zip(torch.autograd.grad(ours, wrt, g), torch.autograd.grad(ref, wrt, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_mean_is_over_every_position_as_torch_cross_entropy(dtype):
    """(N, T, C) with indices (N, T): the mean runs over N·T positions, as torch's
    cross_entropy does on its (N, C, T) layout."""
    z = torch.randn(N, T, C, dtype=F64, requires_grad=True)
    y = torch.randint(0, C, (N, T))
    ours = bnn.LogLikelihoodCost(logits=True)(z, y.to(dtype))
    ref = TF.cross_entropy(z.movedim(-1, 1), y)
    torch.testing.assert_close(ours, ref)
    g = torch.rand(()) + 0.5
    torch.testing.assert_close(torch.autograd.grad(ours, z, g)[0],
                               torch.autograd.grad(ref, z, g)[0])
    mean = bnn.CrossEntropyCost()(torch.sigmoid(z), y)
    torch.testing.assert_close(mean * N * T, bnn.CrossEntropyCost(reduction="sum")(
        torch.sigmoid(z), y))


@pytest.mark.parametrize("cls,logits", FORMS, ids=FORM_IDS)
def test_reduction_none_gradcheck_and_forward_ad(cls, logits):
    """The per-position form's backward and jvp in float64, both inputs, (N, T, C)."""
    cost = get_cost(cls.name, logits)
    out, _ = _inputs(logits, (N, T), "indices")
    y = (torch.rand(N, T, C, dtype=F64) * 1.5).requires_grad_()
    fn = lambda a, y: CostFunction.apply(a, y, cost, 0.5, "none")  # noqa: E731
    assert gradcheck(fn, (out, y), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (out, y))


@pytest.mark.parametrize("cls,logits", FORMS, ids=FORM_IDS)
def test_vmap_over_unbatched_equals_batched(cls, logits):
    """vmap(grad) over unbatched (C,) outputs with 0-dim index targets is the batched
    "sum" cost's gradient, row by row."""
    out, y = _inputs(logits, (N,), "indices")
    cost = _make(cls, logits, "sum")
    per_row = vmap(grad(lambda a, t: cost(a, t)))(out.detach(), y)
    (batched,) = torch.autograd.grad(cost(out, y), out)
    torch.testing.assert_close(per_row, batched)


# -- saturation -----------------------------------------------------------------------
SCALES = [17.0, 40.0, 100.0]
DTYPES = [torch.float32, F64]


def _saturated(s, dtype):
    """z = ±s in a pattern that puts a = σ(z) (or softmax) at 0 and at 1, both where the
    target is 1 and where it is 0; y as indices and as soft (unnormalised) rows."""
    sign = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0],
                         [1.0, 1.0, -1.0, -1.0]], dtype=dtype)
    idx = torch.tensor([1, 1, 3])
    soft = torch.tensor([[0.0, 1.0, 0.3, 0.0], [1.0, 0.0, 0.0, 0.5], [0.2, 0.0, 1.0, 1.0]],
                        dtype=dtype)
    return s * sign, idx, soft


def _all_finite(*ts):
    return all(torch.isfinite(t).all() for t in ts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("cls,logits", FORMS, ids=FORM_IDS)
def test_finite_at_saturation_every_path(cls, logits, s, dtype):
    """Cost and gradients finite (no NaN, no inf) at |z| = s: on z directly (logits), and
    on a from a torch sigmoid/softmax leaf, a sigmoid/softmax bptorch.nn.Dense and a
    separate bptorch.nn.Sigmoid/Softmax."""
    z0, idx, soft = _saturated(s, dtype)
    out_act = "softmax" if cls is bnn.LogLikelihoodCost else "sigmoid"
    separate = bnn.Softmax(dim=-1) if out_act == "softmax" else bnn.Sigmoid()
    dense = bnn.Dense(C, C, out_act, dtype=dtype)  # z = x Wᵀ + b with W = I, b = 0, x = z0
    with torch.no_grad():
        dense.weight.copy_(torch.eye(C, dtype=dtype))
        dense.bias.zero_()

    def check(c, *wrt):  # C, and its gradients in every input (the soft target's too)
        assert _all_finite(c, *torch.autograd.grad(c, wrt, torch.ones_like(c)))

    for y in (idx, soft.clone().requires_grad_()):
        ys = (y,) if y.requires_grad else ()
        for reduction in ("mean", "none"):
            cost = _make(cls, logits, reduction)
            z = z0.clone().requires_grad_()
            if logits:
                check(cost(z, y), z, *ys)
                continue
            # a itself a leaf: ∇_a C finite even where a is exactly 0 or 1
            a = (torch.softmax(z0, -1) if out_act == "softmax" else torch.sigmoid(z0))
            a.requires_grad_()
            check(cost(a, y), a, *ys)
            check(cost(separate(z), y), z, *ys)  # through a separate activation module
            check(cost(dense(z), y), z, dense.weight, dense.bias, *ys)  # through Dense


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls,logits", FORMS, ids=FORM_IDS)
def test_finite_at_saturation_in_half_precision(cls, logits, dtype, autocast):
    """float16/bfloat16 outputs: the cost runs in float32 (ε = 1e-12 is 0 in float16),
    and ∇_a C = ±1e12 comes back clamped to float16's ±65504, not ±inf (inf · σ' = NaN)."""
    z0, idx, soft = _saturated(100.0, torch.float32)
    act = bnn.Softmax(dim=-1) if cls is bnn.LogLikelihoodCost else bnn.Sigmoid()
    for y in (idx, soft if autocast else soft.to(dtype)):
        z = z0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = z.to(dtype) if logits else act(z.to(dtype))
            c = _make(cls, logits)(out, y)
        assert c.dtype == (torch.float32 if autocast else dtype)
        assert _all_finite(c, *torch.autograd.grad(c, z))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", SCALES)
def test_probability_cross_entropy_equals_bce_at_saturation(s, dtype):
    """CrossEntropyCost() is BCELoss summed over outputs, value and gradient, even where
    σ(z) is exactly 0 or 1: ln floored at −100, ∇_a = (a − y)/max(a(1 − a), 1e-12)."""
    z0, idx, soft = _saturated(s, dtype)
    for y in (TF.one_hot(idx, C).to(dtype), soft):
        a = torch.sigmoid(z0).requires_grad_()
        g = torch.rand((), dtype=dtype) + 0.5
        ours = bnn.CrossEntropyCost(reduction="sum")(a, y)
        ref = torch.nn.BCELoss(reduction="sum")(a, y)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(torch.autograd.grad(ours, a, g)[0],
                                   torch.autograd.grad(ref, a, g)[0])
        # and through the sigmoid: torch's chain, ours by the Sigmoid module
        z = z0.clone().requires_grad_()
        ours = bnn.CrossEntropyCost()(bnn.Sigmoid()(z), y)
        ref = torch.nn.BCELoss(reduction="sum")(torch.sigmoid(z), y) / z.shape[0]
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(torch.autograd.grad(ours, z, g)[0],
                                   torch.autograd.grad(ref, z, g)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_costs_floor_ln_at_minus_100(dtype):
    """A confidently wrong saturated output costs exactly 100 per wrong output."""
    a = torch.tensor([[0.0, 1.0, 1.0]], dtype=dtype)
    y = torch.tensor([0])
    torch.testing.assert_close(bnn.LogLikelihoodCost()(a, y), torch.tensor(100.0, dtype=dtype))
    torch.testing.assert_close(bnn.CrossEntropyCost()(a, y), torch.tensor(300.0, dtype=dtype))
    # the right answer, saturated, costs 0 with a zero gradient where a = y
    a = torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    c = bnn.CrossEntropyCost()(a, y)
    assert c.item() == 0.0
    assert (torch.autograd.grad(c, a)[0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_likelihood_gradient_at_zero_probability(dtype):
    """∇_a C_x = −y/max(a, 1e-12): −1e12 where a_y = 0, not −inf; then through the
    softmax δ = a ⊙ (g − Σ a g) is finite: 0 at a_y = 0 (saturated: no learning there)."""
    a = torch.tensor([[0.0, 1.0, 0.0], [0.25, 0.5, 0.25]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 1])
    (g,) = torch.autograd.grad(bnn.LogLikelihoodCost(reduction="sum")(a, y), a)
    expected = torch.tensor([[-1e12, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_separate_sigmoid_learns_slowly_logits_form_does_not(dtype):
    """Through a separate Sigmoid at |z| = 40, σ(40) rounds to 1, so σ'(z) = a(1 − a) = 0
    and δ^L = 0; σ(−40) ≈ 4e-18 does not round, but a(1 − a) < ε = 1e-12 caps ∇_a C at
    1e12 and δ^L ≈ −4e-6: slow learning, not NaN. The logits form gives δ^L = σ(z) − y."""
    z = torch.tensor([[40.0, -40.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([[0.0, 1.0]], dtype=dtype)  # confidently wrong on both outputs
    (slow,) = torch.autograd.grad(bnn.CrossEntropyCost()(bnn.Sigmoid()(z), y), z)
    (fast,) = torch.autograd.grad(bnn.CrossEntropyCost(logits=True)(z, y), z)
    assert slow[0, 0] == 0 and 0 < -slow[0, 1] < 1e-5
    torch.testing.assert_close(fast, torch.tensor([[1.0, -1.0]], dtype=dtype))


def test_double_backward_near_but_not_at_the_clamps():
    """gradgradcheck of the probability forms in float64 with a close to 0 and 1
    (1e-4 … 1 − 1e-4), where a(1 − a) ≫ 1e-12 and ln a ≫ −100."""
    a = torch.tensor([[1e-4, 0.3, 1 - 1e-4], [0.5, 2e-4, 0.9]], dtype=F64, requires_grad=True)
    y = (torch.rand(2, 3, dtype=F64) * 1.2).requires_grad_()
    for name in ("cross_entropy", "log_likelihood"):
        cost = get_cost(name)
        for reduction in ("sum", "none"):
            fn = lambda a, y: CostFunction.apply(a, y, cost, 0.5, reduction)  # noqa: E731
            assert gradcheck(fn, (a, y), eps=1e-8, atol=1e-4, rtol=1e-4)
            assert gradgradcheck(fn, (a, y), eps=1e-8, atol=1e-4, rtol=1e-4)


# -- soft targets that do not sum to 1, on both engines ------------------------------
def _net_and_soft_batch(cost, dtype=F64):
    torch.manual_seed(0)
    net = bptorch.Network([6, 5, 4], cost=cost, device="cpu", dtype=dtype)
    x = torch.randn(7, 6, dtype=dtype)
    y = torch.rand(7, 4, dtype=dtype) * 1.5  # rows sum to anything in [0, 6]
    return net, x, y


def _reference_grads(net, x, y):
    """The batch-mean cost and its parameter gradients by plain torch autograd."""
    hidden, out = net.layers
    a1 = torch.sigmoid(TF.linear(x, hidden.weight, hidden.bias))
    z = TF.linear(a1, out.weight, out.bias)
    if net.cost == "log_likelihood":
        c = -(y * torch.log_softmax(z, -1)).sum() / len(x)
    elif net.cost == "cross_entropy":
        c = TF.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(x)
    else:
        c = 0.5 * ((torch.sigmoid(z) - y) ** 2).sum() / len(x)
    return c, torch.autograd.grad(c, list(net.parameters()))


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy", "log_likelihood"])
def test_unnormalised_soft_targets_on_both_engines(cost):
    net, x, y = _net_and_soft_batch(cost)
    c_ref, g_ref = _reference_grads(net, x, y)
    # the autograd path: net.loss through the Functions
    c = net.loss(x, y)
    torch.testing.assert_close(c, c_ref)
    for g, r in zip(torch.autograd.grad(c, list(net.parameters())), g_ref):
        torch.testing.assert_close(g, r)
    # the explicit engine: backprop
    c = net.backprop(x, y)
    torch.testing.assert_close(c, c_ref.detach())
    for p, r in zip(net.parameters(), g_ref):
        torch.testing.assert_close(p.grad, r)
    # the fused SGD step equals the book's rule applied to autograd's gradients
    eta = 0.3
    fused, _, _ = _net_and_soft_batch(cost)
    fused.update_mini_batch(x, y, eta)
    for p, q, r in zip(fused.parameters(), net.parameters(), g_ref):
        torch.testing.assert_close(p, q.detach() - eta * r)
    net.zero_grad()
    net.backprop(x, y)
    book_sgd_step(net, eta, 0.0, 1)
    for p, q in zip(fused.parameters(), net.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("cost", ["cross_entropy", "log_likelihood"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_network_finite_when_saturated(cost, dtype):
    """Weights × 100: the output layer saturates; both engines stay finite."""
    net, x, y = _net_and_soft_batch(cost, dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(100)
    c = net.backprop(x, y)
    assert _all_finite(c, *(p.grad for p in net.parameters()))
    loss = net.loss(x, y)
    assert _all_finite(loss, *torch.autograd.grad(loss, list(net.parameters())))
