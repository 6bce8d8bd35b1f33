"""The costs' weights as differentiable inputs (issue 21: never a silent constant).

torch computes ∂C/∂weight for mse_loss, l1_loss and a probability-target cross_entropy,
and refuses it for the class-index losses and BCE's weight and pos_weight. bptorch
computes it for every one: equal to torch's where torch has it, gradcheck'd (and
gradgradcheck'd) where torch refuses, never a gradient that silently stops at the weight.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as B

REDUCTIONS = ["mean", "sum", "none"]


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(5, 3, generator=g, dtype=torch.float64)
    w = (torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    wc = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    y = torch.tensor([0, 1, 2, 1, 0])
    up = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return x, t, w, wc, y, up


def _grads(loss, inputs, up, reduction):
    upstream = up if loss.dim() == 2 else (up[:, 0] if loss.dim() == 1 else up[0, 0])
    return torch.autograd.grad(loss, inputs, upstream)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fn", ["mse_loss", "l1_loss"])
def test_pointwise_weight_gradient_equals_torch(fn, reduction):
    x, t, w, _, _, up = _data()
    ours = _grads(getattr(B, fn)(x, t, weight=w, reduction=reduction), (x, w), up, reduction)
    theirs = _grads(getattr(F, fn)(x, t, weight=w, reduction=reduction), (x, w), up,
                    reduction)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_class_weight_gradient_equals_torch(reduction):
    x, t, _, wc, _, up = _data(1)
    q = t.softmax(1)
    ours = _grads(B.cross_entropy(x, q, weight=wc, reduction=reduction), (x, wc), up,
                  reduction)
    theirs = _grads(F.cross_entropy(x, q, weight=wc, reduction=reduction), (x, wc), up,
                    reduction)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_class_index_weight_gradient_gradcheck(reduction, smoothing):
    """torch refuses ∂C/∂weight here; ours is checked against finite differences, the
    "mean" denominator Σ w_{y_n} included (a gradient that stopped at it failed before)."""
    x, _, _, wc, y, _ = _data(2)
    y = y.clone()
    y[3] = -100  # an ignored target: out of both the sum and the denominator
    assert gradcheck(lambda z, w: B.cross_entropy(z, y, weight=w, reduction=reduction,
                                                  label_smoothing=smoothing), (x, wc))
    assert gradgradcheck(lambda z, w: B.cross_entropy(z, y, weight=w, reduction=reduction,
                                                      label_smoothing=smoothing), (x, wc))
    assert gradcheck(lambda z, w: B.nll_loss(z, y, weight=w, reduction=reduction), (x, wc))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_weight_and_pos_weight_gradcheck(reduction):
    x, t, w, wc, _, _ = _data(3)
    p = (torch.rand(5, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert gradcheck(lambda a, v: B.binary_cross_entropy(a, t, weight=v, reduction=reduction),
                     (p, w))
    f = lambda z, v, pw: B.binary_cross_entropy_with_logits(  # noqa: E731
        z, t, weight=v, pos_weight=pw, reduction=reduction)
    assert gradcheck(f, (x, w, wc))
    assert gradgradcheck(f, (x, w, wc))


def test_weight_gradient_reaches_a_module_parameter():
    """A learned class weight (a Parameter) in a training step gets a nonzero gradient."""
    x, t, w, _, _, _ = _data(4)
    weight = torch.nn.Parameter(torch.ones(5, 3, dtype=torch.float64))
    B.mse_loss(x, t, weight=weight).backward()
    expected = torch.autograd.grad(F.mse_loss(x, t, weight=weight), weight)[0]
    torch.testing.assert_close(weight.grad, expected)
    assert weight.grad.abs().sum() > 0
