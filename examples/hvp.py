"""Hessian-vector products through bptorch's hand-written backward (double backward).

Each Function's backward is built from differentiable torch ops, so the gradient
∇C(θ) it returns can itself be differentiated. The Hessian-vector product is the
directional derivative of the gradient:

    H v = ∇_θ (∇_θ C(θ) · v)

computed here by two reverse passes through bptorch (``create_graph=True``), and
checked against ``torch.func``'s forward-over-reverse ``jvp(grad(C))`` on the same model built
from plain torch ops, and against the central difference (∇C(θ + εv) − ∇C(θ − εv)) / 2ε.

    python -m examples.hvp
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor

import bptorch


def _loss(net, names, params, x, y) -> Tensor:
    """C(θ) = ``net.loss(x, y)`` with the parameters ``names`` replaced by ``params``."""
    class _Loss(torch.nn.Module):  # functional_call calls forward; route it to net.loss
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, y):
            return self.net.loss(x, y)

    return torch.func.functional_call(_Loss(), {f"net.{n}": p for n, p in zip(names, params)},
                                      (x, y))


def hvp(net: bptorch.Network, x: Tensor, y: Tensor, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """H v by double backward through bptorch's Functions."""
    params = tuple(p.detach().requires_grad_() for p in net.parameters())
    grads = torch.autograd.grad(_loss(net, _names(net), params, x, y), params, create_graph=True)
    dot = sum((g * vi).sum() for g, vi in zip(grads, v))  # ∇C · v
    return torch.autograd.grad(dot, params)  # ∇(∇C · v) = H v


def reference_hvp(net: bptorch.Network, x: Tensor, y: Tensor, v) -> tuple[Tensor, ...]:
    """H v as ``torch.func.jvp(torch.func.grad(C))`` on the same net in plain torch ops."""
    out_act = [layer.activation.fn for layer in net.layers]
    n = x.shape[0]

    def loss(params):
        a = x
        for l in range(len(net.layers) - 1):
            a = out_act[l](a @ params[2 * l].T + params[2 * l + 1])
        z = a @ params[-2].T + params[-1]
        onehot = torch.nn.functional.one_hot(y, z.shape[-1]).to(z.dtype)
        if net.cost == "cross_entropy":  # logits form: Σ softplus(z) − y z
            return (torch.nn.functional.softplus(z) - onehot * z).sum() / n
        if net.cost == "log_likelihood":
            return -(torch.log_softmax(z, -1) * onehot).sum() / n
        return 0.5 * ((torch.sigmoid(z) - onehot) ** 2).sum() / n

    params = tuple(p.detach() for p in net.parameters())
    return torch.func.jvp(torch.func.grad(loss), (params,), (tuple(v),))[1]


def finite_difference_hvp(net, x, y, v, eps: float = 1e-5) -> tuple[Tensor, ...]:
    """(∇C(θ + εv) − ∇C(θ − εv)) / 2ε, with each gradient from bptorch's backward."""
    def grad_at(sign):
        params = tuple((p.detach() + sign * eps * vi).requires_grad_()
                       for p, vi in zip(net.parameters(), v))
        return torch.autograd.grad(_loss(net, _names(net), params, x, y), params)

    return tuple((gp - gm) / (2 * eps) for gp, gm in zip(grad_at(1), grad_at(-1)))


def _names(net):
    return [name for name, _ in net.named_parameters()]


def max_errors(sizes=(6, 5, 4), n: int = 7, cost: str = "cross_entropy",
               activation: str = "tanh", seed: int = 0) -> dict[str, float]:
    """Max |Hv − reference| for one random net, batch and direction v, in float64."""
    torch.manual_seed(seed)
    net = bptorch.Network(list(sizes), activation=activation, cost=cost, dtype=torch.float64)
    x = torch.randn(n, sizes[0], dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (n,))
    v = tuple(torch.randn_like(p) for p in net.parameters())
    hv = hvp(net, x, y, v)
    err = lambda ref: max(float((a - b).abs().max()) for a, b in zip(hv, ref))
    return {"vs_torch_func_hvp": err(reference_hvp(net, x, y, v)),
            "vs_finite_difference": err(finite_difference_hvp(net, x, y, v)),
            "max_abs_hv": max(float(h.abs().max()) for h in hv)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[6, 5, 4])
    p.add_argument("--cost", default="cross_entropy")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(max_errors(tuple(args.sizes), cost=args.cost, activation=args.activation,
                     seed=args.seed))


if __name__ == "__main__":
    main()
