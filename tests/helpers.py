"""Small builders shared by the tests."""
from __future__ import annotations

import torch


def away_from_zero(*shape, margin: float = 0.1, **kw) -> torch.Tensor:
    """Random values with |x| ≥ margin: keeps ReLU's kink at 0 out of finite differences."""
    x = torch.randn(*shape, **kw)
    return torch.where(x >= 0, x + margin, x - margin)


def dense_inputs(n, n_in, n_out, dtype=torch.float64, device="cpu", margin=0.05):
    """(a_prev, W, b) whose pre-activations z = a_prev Wᵀ + b all satisfy |z| ≥ margin."""
    g = torch.Generator().manual_seed(1234)
    for _ in range(1000):
        a = torch.randn(n, n_in, generator=g, dtype=dtype)
        w = torch.randn(n_out, n_in, generator=g, dtype=dtype) / n_in**0.5
        b = torch.randn(n_out, generator=g, dtype=dtype)
        if (a @ w.T + b).abs().min() >= margin:
            return (a.to(device).requires_grad_(), w.to(device).requires_grad_(),
                    b.to(device).requires_grad_())
    raise RuntimeError("no kink-free draw found")


def probabilities(n, k, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Values in (0.1, 0.9), safely inside (0, 1) for ln a and ln(1 − a)."""
    return (0.1 + 0.8 * torch.rand(n, k, dtype=dtype)).to(device)


def soft_targets(n, k, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Rows that sum to 1."""
    return torch.softmax(torch.randn(n, k, dtype=dtype), -1).to(device)


def book_sgd_step(net, eta: float, lmbda: float, n: int) -> None:
    """The book's update from .grad, by hand: W ← (1 − ηλ/n) W − η ∂C/∂W, b ← b − η ∂C/∂b."""
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(1 - eta * lmbda / n).sub_(eta * layer.weight.grad)
            layer.bias.sub_(eta * layer.bias.grad)
