"""gradcheck and gradgradcheck in float64 for every Function, at non-square shapes,
away from kinks; and a deliberately broken backward that the checks must reject."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from bptorch.activations import ACTIVATIONS, get_activation
from bptorch.functions import (
    ActivationFunction, CostFunction, DenseFunction, LinearFunction, get_cost,
)
from bptorch.functions.linear import linear_bwd

from helpers import away_from_zero, dense_inputs, probabilities, soft_targets

F64 = torch.float64


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(7,), (2, 3)], ids=["2d", "3d"])
def test_linear_gradcheck(device, bias, lead):
    a = torch.randn(*lead, 5, dtype=F64, device=device, requires_grad=True)
    w = torch.randn(3, 5, dtype=F64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=F64, device=device, requires_grad=True) if bias else None
    assert gradcheck(LinearFunction.apply, (a, w, b))
    assert gradgradcheck(LinearFunction.apply, (a, w, b))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradcheck(device, name):
    z = away_from_zero(6, 4, dtype=F64, device=device).requires_grad_()
    act = get_activation(name)
    fn = lambda z: ActivationFunction.apply(z, act, None)  # noqa: E731
    assert gradcheck(fn, (z,))
    assert gradgradcheck(fn, (z,))


def test_leaky_relu_custom_slope_and_softmax_dim_gradcheck(device):
    z = away_from_zero(3, 4, 5, dtype=F64, device=device).requires_grad_()
    for act in (get_activation("leaky_relu", negative_slope=0.2),
                get_activation("softmax", dim=1)):
        fn = lambda z: ActivationFunction.apply(z, act, None)  # noqa: E731
        assert gradcheck(fn, (z,))
        assert gradgradcheck(fn, (z,))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_gradcheck(device, name):
    a, w, b = dense_inputs(7, 5, 3, device=device)
    act = get_activation(name)
    fn = lambda a, w, b: DenseFunction.apply(a, w, b, act, None)  # noqa: E731
    assert gradcheck(fn, (a, w, b))
    assert gradgradcheck(fn, (a, w, b))


def test_dense_no_bias_batched_input_gradcheck(device):
    a = torch.randn(2, 3, 5, dtype=F64, device=device, requires_grad=True)
    w = torch.randn(4, 5, dtype=F64, device=device, requires_grad=True)
    act = get_activation("tanh")
    fn = lambda a, w: DenseFunction.apply(a, w, None, act, None)  # noqa: E731
    assert gradcheck(fn, (a, w))
    assert gradgradcheck(fn, (a, w))


COST_CASES = [
    ("quadratic", False),
    ("cross_entropy", False),
    ("log_likelihood", False),
    ("cross_entropy", True),
    ("log_likelihood", True),
]


@pytest.mark.parametrize("name,logits", COST_CASES)
def test_cost_gradcheck(device, name, logits):
    """Gradients in both the output and the (soft) target."""
    n, k = 6, 4
    out = (torch.randn(n, k, dtype=F64) if logits else probabilities(n, k)).to(device)
    out.requires_grad_()
    y = soft_targets(n, k, device=device).requires_grad_()
    cost = get_cost(name, logits)
    fn = lambda a, y: CostFunction.apply(a, y, cost, 1.0 / n)  # noqa: E731
    assert gradcheck(fn, (out, y))
    assert gradgradcheck(fn, (out, y))


def test_logits_costs_are_finite_when_saturated():
    """|z| = 40 in float32: σ(z) rounds to exactly 0 or 1, yet C and δ^L stay finite."""
    z = torch.tensor([[40.0, -40.0, 40.0], [-40.0, 40.0, -40.0]], requires_grad=True)
    y = torch.tensor([1, 0])
    for name in ("cross_entropy", "log_likelihood"):
        cost = get_cost(name, logits=True)
        onehot = torch.nn.functional.one_hot(y, 3).float()
        c = CostFunction.apply(z, onehot, cost, 0.5)
        (g,) = torch.autograd.grad(c, z)
        assert torch.isfinite(c) and torch.isfinite(g).all()
        assert c.item() > 10  # the wrong classes are confidently on: a large cost
        assert g.abs().max() > 0.1  # and δ^L = a − y is far from 0: no slow learning


class BrokenDense(DenseFunction):
    """Forgets σ'(z) in BP2 (δ = grad_output): the classic hand-written mistake."""

    @staticmethod
    def backward(ctx, grad_output):
        a_prev, weight, _bias, _a = ctx.saved_tensors
        return (*linear_bwd(grad_output, a_prev, weight, ctx.needs_input_grad), None, None)


class TransposedBP4(DenseFunction):
    """Writes BP4 as a_prevᵀ δ summed the wrong way: right shape only when square."""

    @staticmethod
    def backward(ctx, grad_output):
        a_prev, weight, _bias, a = ctx.saved_tensors
        delta = ctx.activation.delta(grad_output, a)
        gi, gw, gb = linear_bwd(delta, a_prev, weight, ctx.needs_input_grad)
        return gi, (delta.T @ a_prev).flip(0), gb, None, None


@pytest.mark.parametrize("broken", [BrokenDense, TransposedBP4])
def test_gradcheck_rejects_broken_backward(broken):
    a, w, b = dense_inputs(7, 5, 3)
    act = get_activation("sigmoid")
    fn = lambda a, w, b: broken.apply(a, w, b, act, None)  # noqa: E731
    assert not gradcheck(fn, (a, w, b), raise_exception=False)
    ok = lambda a, w, b: DenseFunction.apply(a, w, b, act, None)  # noqa: E731
    assert gradcheck(ok, (a, w, b))  # the same inputs pass with the real backward
