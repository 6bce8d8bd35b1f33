"""Each activation's fused ``delta`` (the fast path) against the book's formula
``grad_output * prime(saved)`` (the readable path), and σ' against autograd."""
from __future__ import annotations

import pytest
import torch

from bptorch.activations import ACTIVATIONS, get_activation, leaky_relu, softmax

from helpers import away_from_zero


def saved_tensor(act, z, a):
    return {"a": a, "z": z, None: None}[act.saves]


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "softmax"])
def test_fused_delta_equals_book_formula(device, name):
    act = get_activation(name)
    z = away_from_zero(7, 5, dtype=torch.float64, device=device)
    a = act.fn(z)
    g = torch.randn_like(z)
    saved = saved_tensor(act, z, a)
    torch.testing.assert_close(act.delta(g, saved), g * act.prime(saved if saved is not None else z))


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "softmax"])
def test_prime_is_the_derivative(name):
    """σ'(z) from the saved tensor equals dσ/dz taken by autograd on torch's σ."""
    act = get_activation(name)
    z = away_from_zero(6, 4, dtype=torch.float64).requires_grad_()
    ref = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.01),
           "identity": lambda t: t * 1}[name]
    (dz,) = torch.autograd.grad(ref(z).sum(), z)
    zd = z.detach()
    saved = saved_tensor(act, zd, act.fn(zd))
    torch.testing.assert_close(act.prime(saved if saved is not None else zd), dz)
    assert float(dz.max()) <= act.prime_max + 1e-12


def test_softmax_delta_is_the_jacobian_product(device):
    """δ = a ⊙ (g − Σ_k g_k a_k), i.e. Jᵀg with J_jk = a_j(1[j=k] − a_k)."""
    act = softmax(dim=-1)
    z = torch.randn(4, 6, dtype=torch.float64, device=device)
    a, g = act.fn(z), torch.randn(4, 6, dtype=torch.float64, device=device)
    book = a * (g - (g * a).sum(-1, keepdim=True))
    torch.testing.assert_close(act.delta(g, a), book)
    jac = torch.func.vmap(torch.func.jacrev(lambda r: torch.softmax(r, -1)))(z)
    torch.testing.assert_close(act.delta(g, a), torch.einsum("nj,njk->nk", g, jac))


def test_leaky_relu_slope_is_used():
    act = leaky_relu(0.25)
    z = torch.tensor([[-2.0, 3.0]])
    g = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(act.delta(g, act.fn(z)), torch.tensor([[0.25, 1.0]]))
