"""The book's algorithm as published: a per-example NumPy loop, the speed baseline.

Written here from the seed's equations (not copied from the book's code), in its
layout: column vectors, one example at a time, and the gradients of a mini-batch
summed into ``nabla_b``/``nabla_w`` before the update

    W ← (1 − ηλ/n) W − (η/m) Σ_x ∂C_x/∂W,    b ← b − (η/m) Σ_x ∂C_x/∂b.

For one example x (a column):
    z^l = W^l a^{l-1} + b^l,  a^l = σ(z^l)                    (forward)
    δ^L = ∇_a C ⊙ σ'(z^L)                                    (BP1)
    δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)                     (BP2)
    ∂C/∂b^l = δ^l,  ∂C/∂W^l = δ^l (a^{l-1})ᵀ                  (BP3, BP4)
Sigmoid everywhere; the quadratic cost has ∇_a C = a − y, and the cross-entropy
cost's σ'(z^L) cancels: δ^L = a − y.
"""
from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class ReferenceNetwork:
    """Weights ``weights[l]`` of shape (n_l, n_{l-1}), biases (n_l, 1), float64."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray],
                 cost: str = "quadratic") -> None:
        self.weights = [np.array(w, dtype=np.float64) for w in weights]
        self.biases = [np.array(b, dtype=np.float64).reshape(-1, 1) for b in biases]
        self.cost = cost

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
        """∂C_x/∂b^l and ∂C_x/∂W^l for one example (x, y columns)."""
        activations, zs = [x], []
        for w, b in zip(self.weights, self.biases):
            zs.append(w @ activations[-1] + b)
            activations.append(sigmoid(zs[-1]))
        a_L = activations[-1]
        if self.cost == "quadratic":
            delta = (a_L - y) * a_L * (1 - a_L)  # BP1: σ'(z) = a(1 − a)
        else:
            delta = a_L - y  # BP1 for cross-entropy: σ'(z^L) cancels
        L = len(self.weights)
        nabla_b, nabla_w = [None] * L, [None] * L
        for l in range(L - 1, -1, -1):
            nabla_b[l] = delta  # BP3
            nabla_w[l] = delta @ activations[l].T  # BP4
            if l > 0:
                a = activations[l]
                delta = (self.weights[l].T @ delta) * a * (1 - a)  # BP2
        return nabla_b, nabla_w

    def update_mini_batch(self, xs: np.ndarray, ys: np.ndarray, eta: float,
                          lmbda: float = 0.0, n: int = 1) -> None:
        """One SGD step on a mini-batch: xs (m, n_0), ys (m, n_L), one example per row."""
        nabla_b = [np.zeros_like(b) for b in self.biases]
        nabla_w = [np.zeros_like(w) for w in self.weights]
        for x, y in zip(xs, ys):  # the per-example loop of the book
            db, dw = self.backprop(x.reshape(-1, 1), y.reshape(-1, 1))
            nabla_b = [nb + d for nb, d in zip(nabla_b, db)]
            nabla_w = [nw + d for nw, d in zip(nabla_w, dw)]
        m = len(xs)
        decay = 1 - eta * lmbda / n
        self.weights = [decay * w - (eta / m) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / m) * nb for b, nb in zip(self.biases, nabla_b)]

    def gradients(self, xs: np.ndarray, ys: np.ndarray) -> tuple[list, list]:
        """The batch-mean ∂C/∂b^l (as rows (n_l,)) and ∂C/∂W^l, for testing."""
        nabla_b = [np.zeros_like(b) for b in self.biases]
        nabla_w = [np.zeros_like(w) for w in self.weights]
        for x, y in zip(xs, ys):
            db, dw = self.backprop(x.reshape(-1, 1), y.reshape(-1, 1))
            nabla_b = [nb + d for nb, d in zip(nabla_b, db)]
            nabla_w = [nw + d for nw, d in zip(nabla_w, dw)]
        m = len(xs)
        return [nb.ravel() / m for nb in nabla_b], [nw / m for nw in nabla_w]
