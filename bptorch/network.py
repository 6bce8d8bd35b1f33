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
from . import feedback as _feedback
from . import functional as F
from ._checks import check_cost_inputs, check_linear, one_hot
from .functions.costs import get_cost
from .nn import Dense

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
        feedback: keyword-only. "backprop" (default); a per-layer rule of
            ``bptorch.feedback`` ("fa", "usf", "brsf", "frsf") given to every layer, its
            random B drawn from the weights' init distribution; or "dfa": each hidden layer
            l gets δ^l = (δ^L B^l) ⊙ σ'(z^l) from its own fixed B^l, in the explicit engine
            (``backprop``, ``update_mini_batch``; on the autograd path use
            ``bptorch.feedback.DFA``). The output layer learns as in backprop under every rule.

    Attributes:
        layers: ``nn.ModuleList`` of ``Dense``; state_dict keys ``layers.{l}.weight``/``bias``.
        deltas: after ``backprop``, the per-example δ^l of each layer, (N, n_l) each.
        feedback_weight_{l}: with "dfa", buffer B^l of hidden layer l, (n_L, n_l), drawn as
            the init of a weight from layer l to the output (N(0, 1/n_l) for "scaled").
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "sigmoid",
        cost: str = "quadratic",
        init: str = "scaled",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        feedback: str = "backprop",
    ) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list at least two positive layer sizes, got {sizes}")
        get_cost(cost)  # fail early, listing the valid names
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
        self.feedback = _feedback.check_rule(feedback, _feedback.NETWORK_RULES)
        self.sizes, self.activation, self.cost, self.init = list(sizes), activation, cost, init
        out_act = "softmax" if cost == "log_likelihood" else "sigmoid"
        acts = [activation] * (len(sizes) - 2) + [out_act]
        layer_rule = "backprop" if feedback == "dfa" else feedback
        self.layers = nn.ModuleList(
            Dense(n_in, n_out, act, device=device, dtype=dtype, feedback=layer_rule)
            for n_in, n_out, act in zip(self.sizes[:-1], self.sizes[1:], acts)
        )
        if feedback == "dfa":
            for l, n_l in enumerate(self.sizes[1:-1]):
                self.register_buffer(f"feedback_weight_{l}", torch.empty(
                    self.sizes[-1], n_l, device=device, dtype=dtype))
            self._dfa_generator = torch.Generator().manual_seed(
                int(torch.empty((), dtype=torch.int64).random_()))
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
            _feedback.reset(layer, layer.weight, std)  # B (fa), |R| (frsf): W's distribution
        if self.feedback == "dfa":  # B^l: the init of a weight from layer l to the output
            for l, n_l in enumerate(self.sizes[1:-1]):
                b = getattr(self, f"feedback_weight_{l}")
                std = 1.0 if self.init == "large" else 1 / math.sqrt(n_l)
                b.copy_(torch.randn(b.shape, generator=self._dfa_generator, dtype=b.dtype) * std)

    def extra_repr(self) -> str:
        extra = "" if self.feedback == "backprop" else f", feedback={self.feedback!r}"
        return f"sizes={self.sizes}, cost={self.cost!r}, init={self.init!r}" + extra

    # -- the autograd path ------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """a^L for input x of shape (N, sizes[0]), through the Dense Functions."""
        if self.feedback == "dfa" and torch.is_grad_enabled():
            raise NotImplementedError(
                "Network(feedback='dfa') runs DFA in its explicit engine (backprop, "
                "update_mini_batch) only; for loss.backward() wrap the model in "
                "bptorch.feedback.DFA, or evaluate under torch.no_grad()")
        for layer in self.layers:
            x = layer(x)
        return x

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The batch-mean cost C(a^L, y) on the autograd path, for ``loss.backward()``.

        Cross-entropy and log-likelihood take z^L through their logits form, whose
        backward is BP1 in closed form (δ^L = a − y), finite even when saturated.
        (The output layer then runs as a plain ``linear``, so ``bptorch.diagnostics``
        sees only the hidden layers on this path; ``backprop`` reports them all.)
        """
        if self.cost == "quadratic":
            return F.quadratic_cost(self(x), y)
        if self.feedback == "dfa":
            self(x)  # raises: DFA is the explicit engine's
        for layer in self.layers[:-1]:
            x = layer(x)
        # z^L through the public linear with the output layer's feedback B (its
        # bp2_weight, the one dispatch); the Dense's own forward would apply σ on top
        out = self.layers[-1]
        z = F.linear(x, out.weight, out.bias, feedback_weight=out.bp2_weight())
        return _LOGITS_COSTS[self.cost](z, y, logits=True)

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
        plan = self._plan()
        y = self._check(x, y, plan[0])
        activations, z_L, sp_from = self._feedforward(x, plan, keep_z_L=self.cost != "quadratic")
        delta, cost = self._output_error(z_L, activations[-1], y, plan[-1][3], True)  # BP1
        # a plain attribute: __dict__ directly skips nn.Module.__setattr__ (µs a step)
        self.__dict__["deltas"] = self._backward(delta, activations, sp_from, plan, update=None,
                                                 feedback=self._feedback_plan(plan))
        return cost

    @torch.no_grad()
    def update_mini_batch(
        self, x: Tensor, y: Tensor, eta: float, lmbda: float = 0.0, n: int | None = None,
        l1: float = 0.0,
    ) -> None:
        """One step of the book's SGD, fused into the backward pass:

            W ← (1 − ηλ/n) W − (ηλ₁/n) sgn(W) − (η/m) Σ_x ∂C_x/∂W,
            b ← b − (η/m) Σ_x ∂C_x/∂b

        for a mini-batch of m rows out of n training examples. ``lmbda`` is the L2 λ
        and ``l1`` the L1 λ₁ of chapter 3 (the book calls both λ); neither touches b.
        sgn(W) is of W before the step, with sgn(0) = 0 (``torch.sign``), the
        subgradient of |w| at its kink. Each layer is updated as soon as its δ has been
        passed down, with no .grad buffers and no optimizer: the fastest engine. ``n``
        is required when λ or λ₁ ≠ 0.
        """
        if n is None:
            if lmbda or l1:
                raise ValueError("update_mini_batch with lmbda or l1 != 0 needs n, the "
                                 "training-set size, for the terms ηλ/n and ηλ₁/n")
            n = 1
        plan = self._plan()
        y = self._check(x, y, plan[0])
        activations, _, sp_from = self._feedforward(x, plan)
        delta, _ = self._output_error(None, activations[-1], y, plan[-1][3])  # BP1
        self.__dict__["deltas"] = self._backward(delta, activations, sp_from, plan,
                                                 (eta, 1 - eta * lmbda / n, eta * l1 / n),
                                                 self._feedback_plan(plan))

    def _plan(self) -> list[tuple]:
        """(layer, W, b, σ) of each layer, read once per step: a Module attribute lookup
        (``layer.weight``) goes through ``nn.Module.__getattr__``, about a µs each, a sizeable
        part of a small net's step; the dicts it reads are read here directly."""
        plan = []
        for layer in self._modules["layers"]._modules.values():
            params = layer._parameters
            plan.append((layer, params["weight"], params["bias"], layer.activation))
        return plan

    def _feedback_plan(self, plan: list[tuple]) -> tuple[str, list] | None:
        """None for backprop; ("dfa", [B^l of each hidden layer]); or ("rule", [B of each
        layer]), each B read (usf, frsf) or drawn (brsf) from W^l before any update."""
        if self.feedback == "backprop":  # one read: the default path pays nothing more
            return None
        if self.feedback == "dfa":
            return "dfa", [getattr(self, f"feedback_weight_{l}") for l in range(len(plan) - 1)]
        return "rule", [_feedback.matrix(layer, w) for layer, w, _, _ in plan]

    def _check(self, x: Tensor, y: Tensor, first: tuple) -> Tensor:
        """Validate (x, y); return y as float rows of a^L's shape (class indices one-hot).

        The checks read only shapes, dtypes and devices, so a float target with the
        same metadata as the last batch that passed skips them (a few µs a step).
        """
        _, w, b, _ = first
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            key = (x.shape, x.dtype, x.device, y.shape, y.dtype, y.device, w.dtype, w.device)
            if key == self.__dict__.get("_checked"):
                return y
        check_linear(x, w, b)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"expected a batch x of shape (N, {self.sizes[0]}) with N ≥ 1, "
                             f"got shape {tuple(x.shape)}")
        target = one_hot(check_cost_inputs(x.new_empty(x.shape[0], self.sizes[-1]), y, "a^L"),
                         self.sizes[-1], x.dtype)
        if target is y and x.dtype == w.dtype:  # a float target; indices are range-checked
            self._checked = key
        return target

    def _feedforward(
        self, x: Tensor, plan: list[tuple], keep_z_L: bool = False
    ) -> tuple[list[Tensor], Tensor | None, list[Tensor]]:
        """Step 1: z^l = a^{l-1} Wᵀ + b and a^l = σ(z^l), layer by layer.

        Returns [x, a^1, ..., a^L]; z^L if ``keep_z_L`` (for the value of the logits
        costs); and, per layer, the tensor σ'(z^l) is computed from: a^l where σ' is a
        function of the output (sigmoid, tanh, relu, ...), z^l where it is not (gelu,
        silu, leaky_relu with a negative slope). No other z^l is kept.
        """
        activations = [x]
        sp_from: list[Tensor] = []
        z_L = None
        last = len(plan) - 1
        for l, (_, weight, bias, act) in enumerate(plan):
            # one call for the GEMM and the bias: F.linear transposes W inside C++
            z = torch.nn.functional.linear(activations[-1], weight, bias)
            if (l == last and keep_z_L) or act.saves == "z":
                a = act.fn(z)
                if l == last:
                    z_L = z
            else:  # σ in place, saving an allocation per layer: z is not needed again
                a = _IN_PLACE.get(act.name, act.fn)(z)
            activations.append(a)
            sp_from.append(z if act.saves == "z" else a)
        return activations, z_L, sp_from

    def _output_error(
        self, z_L: Tensor | None, a_L: Tensor, y: Tensor, out, value: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Step 2, BP1: δ^L = ∇_a C ⊙ σ'(z^L), per example, for output activation
        ``out``; and, if ``value``, the batch-mean cost C (z^L for the logits costs)."""
        m = a_L.shape[0]
        cost = None
        if self.cost == "quadratic":
            r = a_L - y  # ∇_a C_x = a − y, shared by δ^L and C = (1/m) Σ_x ½‖a − y‖²
            if value:  # one dot product instead of square, sum and scale
                r1 = r.view(-1)
                cost = torch.dot(r1, r1).mul_(0.5 / m)
            return out.delta(r, a_L), cost  # (a − y) ⊙ σ'(z^L)
        # cross-entropy after sigmoid, log-likelihood after softmax: σ' cancels and
        # δ^L = a − y (the logits form's closed-form gradient, costs.py), finite at any |z|.
        if self.cost == "cross_entropy":
            delta = a_L - y
        else:  # (Σ_j y_j) a − y: a − y when y sums to 1, right for any soft y
            delta = a_L * y.sum(-1, keepdim=True) - y
        if value:  # the logits form's terms, summed over outputs and rows
            cost = get_cost(self.cost, logits=True).fn(z_L, y).sum() / m
        return delta, cost

    def _backward(
        self, delta: Tensor, activations: list[Tensor], sp_from: list[Tensor],
        plan: list[tuple], update, feedback: tuple[str, list] | None = None,
    ) -> list[Tensor]:
        """Steps 3–4: from δ^L, BP2 down the layers, with BP3 and BP4 at each.

        ``feedback`` (from ``_feedback_plan``) replaces BP2's factor: δ^l B^l for a
        per-layer rule's B, or δ^L B^l straight from the output for DFA."""
        L = len(plan)
        delta_L = delta
        m = activations[0].shape[0]
        deltas: list[Tensor] = [None] * L  # type: ignore[list-item]
        record = diagnostics.active()  # read once, not once per layer
        for l in range(L - 1, -1, -1):
            layer, weight, bias, act = plan[l]
            a_prev = activations[l]
            deltas[l] = delta
            if record:
                diagnostics.record_delta(layer._diag_name, act, delta,
                                         sp_from[l], scale=1 / m, a_prev=a_prev)
            if l > 0:  # BP2, with W^l read before the update below changes it
                if feedback is None:
                    passed = torch.mm(delta, weight)  # (W^l)ᵀ δ^l
                elif feedback[0] == "dfa":
                    passed = torch.mm(delta_L, feedback[1][l - 1])  # B^{l-1} δ^L (DFA)
                else:
                    b = feedback[1][l]
                    passed = torch.mm(delta, weight if b is None else b)  # Bᵀ δ^l
                delta_below = plan[l - 1][3].delta(passed, sp_from[l - 1])
            if update is None:
                _accumulate_mm(weight, delta.t(), a_prev, 1 / m)  # BP4, mean over rows
                _accumulate_sum(bias, delta, 1 / m)  # BP3, mean over rows
            else:
                eta, decay, l1_step = update
                sgn_w = torch.sign(weight) if l1_step else None  # sgn of W before the step
                # BP4 and the update in one GEMM: W ← decay·W − (η/m) δᵀ a_prev
                weight.addmm_(delta.t(), a_prev, beta=decay, alpha=-eta / m)
                if sgn_w is not None:
                    weight.sub_(sgn_w, alpha=l1_step)  # L1: W ← W − (ηλ₁/n) sgn(W)
                bias.add_(delta.sum(0), alpha=-eta / m)  # BP3
            if l > 0:
                delta = delta_below
        return deltas


# the costs of z^L (the public functional forms), BP1 in closed form: δ^L = a − y
_LOGITS_COSTS = {"cross_entropy": F.cross_entropy_cost, "log_likelihood": F.log_likelihood_cost}
_IN_PLACE = {"sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "relu": torch.relu_}


def _accumulate_sum(p: Tensor, delta: Tensor, alpha: float) -> None:
    """p.grad += alpha · Σ_rows delta (sum then scale: mean(0) costs twice as much here)."""
    if p.grad is None:
        p.grad = delta.sum(0).mul_(alpha)
    else:
        p.grad.add_(delta.sum(0), alpha=alpha)


def _accumulate_mm(p: Tensor, mat1: Tensor, mat2: Tensor, alpha: float) -> None:
    """p.grad += alpha · mat1 @ mat2, in one GEMM call either way."""
    if p.grad is None:  # beta=0: addmm ignores p's values, which only give the shape
        p.grad = torch.addmm(p, mat1, mat2, beta=0, alpha=alpha)
    else:
        p.grad.addmm_(mat1, mat2, alpha=alpha)
