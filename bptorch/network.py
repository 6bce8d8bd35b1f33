"""Network: the book's feedforward net, with the seed's algorithm as an explicit engine.

``net(x)`` runs the autograd path through :class:`bptorch.nn.Dense` layers, so the
net drops into any training loop. ``net.backprop(x, y)`` runs the seed's four steps
directly, with no autograd tape:

1. forward propagation: z^l = W^l a^{l-1} + b^l, a^l = σ(z^l), keeping both;
2. the output error (BP1): δ^L = ∇_a C ⊙ σ'(z^L);
3. the backward recursion (BP2): δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l);
4. the gradients (BP3, BP4): ∂C/∂b^l = δ^l, ∂C/∂W^l = δ^l (a^{l-1})ᵀ.

Rows are examples: ``z = a_prev @ W.T + b``, ``dC/dW = delta.T @ a_prev / N``,
``dC/db = delta.mean(0)`` for the batch-mean cost. ``update_mini_batch`` is the
same pass with the book's SGD update fused in, which is the fast engine.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from . import diagnostics
from ._checks import check_cost_inputs, check_linear
from .functional import _cost, linear
from .functions.costs import get_cost
from .nn.linear import Dense

INITS = ("large", "scaled")


class Network(nn.Module):
    """A fully connected net of :class:`Dense` layers, trained by the seed's algorithm.

    Args:
        sizes: neurons per layer, input first, e.g. ``[784, 30, 10]``.
        activation: σ of the hidden layers (any name in ``bptorch.ACTIVATIONS``).
        cost: "quadratic", "cross_entropy" or "log_likelihood". The output layer is
            sigmoid, or softmax for "log_likelihood".
        init: "large", N(0, 1) weights and biases (the book's chapter 1), or
            "scaled", N(0, 1/n_in) weights and N(0, 1) biases (chapter 3).

    Attributes:
        layers: ``nn.ModuleList`` of ``Dense``; state_dict keys ``layers.{l}.weight``/``bias``.
        deltas: after ``backprop``, the per-example δ^l of each layer, (N, n_l) each.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "sigmoid",
        cost: str = "quadratic",
        init: str = "scaled",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list at least two positive layer sizes, got {sizes}")
        get_cost(cost)  # fail early, listing the valid names
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
        self.sizes, self.activation, self.cost, self.init = list(sizes), activation, cost, init
        out_act = "softmax" if cost == "log_likelihood" else "sigmoid"
        acts = [activation] * (len(sizes) - 2) + [out_act]
        self.layers = nn.ModuleList(
            Dense(n_in, n_out, act, device=device, dtype=dtype)
            for n_in, n_out, act in zip(self.sizes[:-1], self.sizes[1:], acts)
        )
        for name, layer in self.named_modules():  # diagnostics report these names
            layer._diag_name = name
        self.deltas: list[Tensor] = []
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw W and b as ``init`` says."""
        for layer in self.layers:
            std = 1.0 if self.init == "large" else 1 / math.sqrt(layer.in_features)
            layer.weight.normal_(0.0, std)
            layer.bias.normal_(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, cost={self.cost!r}, init={self.init!r}"

    # -- the autograd path ------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """a^L for input x of shape (N, sizes[0]), through the Dense Functions."""
        for layer in self.layers:
            x = layer(x)
        return x

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The batch-mean cost C(a^L, y) on the autograd path, for ``loss.backward()``.

        Cross-entropy and log-likelihood take z^L through their logits form, whose
        backward is BP1 in closed form (δ^L = a − y), finite even when saturated.
        """
        if self.cost == "quadratic":
            return _cost("quadratic", self(x), y, False, "mean")
        for layer in self.layers[:-1]:
            x = layer(x)
        last = self.layers[-1]
        z = linear(x, last.weight, last.bias)
        return _cost(self.cost, z, y, True, "mean")

    @torch.no_grad()
    def evaluate(self, x: Tensor, labels: Tensor) -> int:
        """How many rows of x the net classifies as ``labels`` (argmax of a^L)."""
        return int((self(x).argmax(-1) == labels).sum())

    # -- the explicit engine ----------------------------------------------------
    @torch.no_grad()
    def backprop(self, x: Tensor, y: Tensor) -> Tensor:
        """Run the seed's algorithm on a batch and add ∂C/∂W, ∂C/∂b to each ``.grad``.

        Like ``loss.backward()``, it accumulates into ``.grad`` (call
        ``optimizer.zero_grad()`` between steps), so any ``torch.optim`` optimizer
        can take the step. ``y`` is class indices (N,) or a target of a^L's shape.
        Returns the batch-mean cost C; afterwards ``self.deltas`` holds δ^l.
        """
        y = self._check(x, y)
        zs, activations = self._feedforward(x)
        self.deltas = self._backward(zs, activations, y, update=None)
        return self._cost_value(zs[-1], activations[-1], y)

    @torch.no_grad()
    def update_mini_batch(
        self, x: Tensor, y: Tensor, eta: float, lmbda: float = 0.0, n: int = 1
    ) -> None:
        """One step of the book's SGD, fused into the backward pass:

            W ← (1 − ηλ/n) W − (η/m) Σ_x ∂C_x/∂W,    b ← b − (η/m) Σ_x ∂C_x/∂b

        for a mini-batch of m rows out of n training examples (L2 decays W, not b).
        Each layer is updated as soon as its δ has been passed down, with no .grad
        buffers and no optimizer: the fastest engine.
        """
        y = self._check(x, y)
        zs, activations = self._feedforward(x, keep_z=False)
        self.deltas = self._backward(zs, activations, y, update=(eta, 1 - eta * lmbda / n))

    def _check(self, x: Tensor, y: Tensor) -> Tensor:
        first = self.layers[0]
        check_linear(x, first.weight, first.bias)
        return check_cost_inputs(x.new_empty(x.shape[0], self.sizes[-1]), y, "a^L")

    def _feedforward(self, x: Tensor, keep_z: bool = True) -> tuple[list, list]:
        """Step 1: z^l = a^{l-1} Wᵀ + b and a^l = σ(z^l), layer by layer."""
        zs, activations = [], [x]
        for layer in self.layers:
            z = torch.addmm(layer.bias, activations[-1], layer.weight.t())
            act = layer.activation
            if keep_z:
                activations.append(act.fn(z))
            else:  # σ in place, saving an allocation per layer: z is not needed again
                activations.append(_IN_PLACE.get(act.name, act.fn)(z))
            zs.append(z if keep_z else None)
        return zs, activations

    def _output_error(self, z_L: Tensor | None, a_L: Tensor, y: Tensor) -> Tensor:
        """Step 2, BP1: δ^L = ∇_a C ⊙ σ'(z^L), per example."""
        out = self.layers[-1].activation
        if self.cost == "quadratic":
            return out.delta(get_cost("quadratic").grad(a_L, y), a_L)  # (a − y) ⊙ σ'(z^L)
        # cross-entropy after sigmoid, log-likelihood after softmax: σ' cancels and
        # δ^L = a − y (the logits form's closed-form gradient, costs.py).
        return a_L - y if self.cost == "cross_entropy" else a_L * y.sum(-1, keepdim=True) - y

    def _backward(self, zs, activations, y, update) -> list[Tensor]:
        """Steps 2–4: BP1, then BP2 down the layers, with BP3 and BP4 at each."""
        L = len(self.layers)
        m = activations[0].shape[0]
        deltas: list[Tensor] = [None] * L  # type: ignore[list-item]
        delta = self._output_error(zs[-1], activations[-1], y)  # BP1
        for l in range(L - 1, -1, -1):
            layer, a_prev = self.layers[l], activations[l]
            deltas[l] = delta
            if diagnostics.active():
                diagnostics.record_delta(layer._diag_name, layer.activation, delta,
                                         activations[l + 1], scale=1 / m)
            if l > 0:  # BP2, with W^l read before the update below changes it
                below = self.layers[l - 1].activation
                delta_below = below.delta(delta @ layer.weight, a_prev)
            if update is None:
                _accumulate(layer.weight, torch.mm(delta.t(), a_prev).div_(m))  # BP4
                _accumulate(layer.bias, delta.mean(0))  # BP3
            else:
                eta, decay = update
                # BP4 and the update in one GEMM: W ← decay·W − (η/m) δᵀ a_prev
                layer.weight.addmm_(delta.t(), a_prev, beta=decay, alpha=-eta / m)
                layer.bias.add_(delta.sum(0), alpha=-eta / m)  # BP3
            if l > 0:
                delta = delta_below
        return deltas

    def _cost_value(self, z_L: Tensor, a_L: Tensor, y: Tensor) -> Tensor:
        cost = get_cost(self.cost, logits=self.cost != "quadratic")
        return cost.fn(a_L if self.cost == "quadratic" else z_L, y) / a_L.shape[0]


_IN_PLACE = {"sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "relu": torch.relu_}


def _accumulate(p: Tensor, grad: Tensor) -> None:
    if p.grad is None:
        p.grad = grad
    else:
        p.grad.add_(grad)
