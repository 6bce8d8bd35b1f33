"""The four equations, one by one, on a small [5, 4, 3, 2] net built from the unfused
Functions (linear, then activation), against ∂C/∂z^l taken by torch autograd on the
same weights with native ops.

Our z^l is the output of LinearFunction; its ``.grad`` is therefore what our
ActivationFunction's backward computed (the ⊙ σ'(z) of BP1/BP2) from what the next
LinearFunction or the cost handed down. The native twin computes the same z^l with
torch.nn.functional ops and lets autograd differentiate.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import bptorch.functional as F

SIZES = [5, 4, 3, 2]
ACT = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


def run(forward_layer, act_fn, cost_fn, weights, x, y):
    zs, a = [], x
    for w, b in weights:
        z = forward_layer(a, w, b)
        z.retain_grad()
        zs.append(z)
        a = act_fn(z)
    c = cost_fn(a, y)
    c.backward()
    return zs, a, c


@pytest.fixture(params=["sigmoid", "tanh"])
def nets(request):
    """The same weights run through bptorch's Functions and through native torch ops."""
    name = request.param
    torch.manual_seed(3)
    params = [(torch.randn(m, n, dtype=torch.float64), torch.randn(m, dtype=torch.float64))
              for n, m in zip(SIZES[:-1], SIZES[1:])]
    x = torch.randn(6, SIZES[0], dtype=torch.float64)
    y = torch.rand(6, SIZES[-1], dtype=torch.float64)

    def copy():
        return [(w.clone().requires_grad_(), b.clone().requires_grad_()) for w, b in params]

    ours_w, native_w = copy(), copy()
    ours = run(F.linear, lambda z: F.apply_activation(z, name), F.quadratic_cost, ours_w, x, y)
    native = run(TF.linear, ACT[name],
                 lambda a, y: 0.5 * ((a - y) ** 2).sum() / a.shape[0], native_w, x, y)
    return name, (x, y), ours, ours_w, native, native_w


def sigma_prime(name, z):
    s = torch.sigmoid(z)
    return s * (1 - s) if name == "sigmoid" else 1 - torch.tanh(z) ** 2


def test_bp1_output_error(nets):
    """δ^L = ∇_a C ⊙ σ'(z^L), with ∇_a C = (a − y)/N for the batch-mean quadratic cost."""
    name, (x, y), (zs, a, _), _, (nzs, _, _), _ = nets
    delta_L = zs[-1].grad
    torch.testing.assert_close(delta_L, nzs[-1].grad)  # ours against autograd's ∂C/∂z^L
    grad_a_C = (a.detach() - y) / x.shape[0]
    torch.testing.assert_close(delta_L, grad_a_C * sigma_prime(name, zs[-1].detach()))


def test_bp2_backward_recursion(nets):
    """δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l), for every hidden layer."""
    name, _, (zs, _, _), ours_w, (nzs, _, _), _ = nets
    for l in range(len(zs) - 1):
        w_next = ours_w[l + 1][0].detach()
        expected = (zs[l + 1].grad @ w_next) * sigma_prime(name, zs[l].detach())
        torch.testing.assert_close(zs[l].grad, expected)
        torch.testing.assert_close(zs[l].grad, nzs[l].grad)


def test_bp3_bias_gradient(nets):
    """∂C/∂b^l = δ^l (summed over the batch's rows)."""
    _, _, (zs, _, _), ours_w, _, native_w = nets
    for (w, b), (nw, nb), z in zip(ours_w, native_w, zs):
        torch.testing.assert_close(b.grad, z.grad.sum(0))
        torch.testing.assert_close(b.grad, nb.grad)


def test_bp4_weight_gradient(nets):
    """∂C/∂W^l = δ^l (a^{l-1})ᵀ, i.e. delta.T @ a_prev with rows as examples."""
    name, (x, _), (zs, _, _), ours_w, _, native_w = nets
    a_prev = [x] + [ACT[name](z.detach()) for z in zs[:-1]]
    for (w, _), (nw, _), z, ap in zip(ours_w, native_w, zs, a_prev):
        torch.testing.assert_close(w.grad, z.grad.T @ ap)
        torch.testing.assert_close(w.grad, nw.grad)
