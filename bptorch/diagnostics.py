"""Opt-in recording of δ^l and σ'(z^l), to see saturation and the speed of learning.

The book's chapter 3 and 5 diagnoses: a layer learns slowly when its δ^l is small,
since ∂C/∂b^l = δ^l (BP3) and ∂C/∂W^l = δ^l (a^{l-1})ᵀ (BP4); δ^l is small when
σ'(z^l) is (a saturated neuron, BP1/BP2), or when the δ handed down is (vanishing
gradients). Wrap any backward in :func:`record` to see, per layer::

    with bptorch.diagnostics.record(model) as rec:
        loss = cost(model(x), y)
        loss.backward()               # or net.backprop(x, y), net.update_mini_batch(...)
    rec.stats()                       # {"hidden": {"speed": 0.31, ...}, "out": {...}}

The four numbers, all for the cost C of the batch (the book's mean over its rows):

* ``speed`` = ‖∂C/∂b^l‖ = ‖Σ_x scale·δ^l_x‖, the book's "speed of learning" (BP3);
* ``mean_abs_delta`` = mean over rows and neurons of |scale·δ^l| = |∂C/∂z^l|;
* ``weight_grad_norm`` = ‖∂C/∂W^l‖_F = ‖(scale·δ)ᵀ a^{l-1}‖ (BP4), NaN for a bare
  activation module, which never sees a^{l-1};
* ``saturated_fraction``: the fraction of entries with |σ'(z^l)| below 1% of
  max_z |σ'(z)| (``Activation.prime_max``): sigmoid σ' < 0.0025, i.e. |z| > 5.99;
  ReLU z ≤ 0; identity never. The absolute value matters for GELU and SiLU, whose σ'
  goes negative (and above 1): GELU counts z < −3.02 and the band −0.78 < z < −0.73
  around the zero of σ' (max |σ'| = 1.1289); SiLU z < −6.14 and −1.33 < z < −1.23
  (max |σ'| = 1.0998). In those bands the gradient vanishes all the same.

``scale`` is what turns the δ a backward holds into ∂C/∂z for the batch cost: 1 on
the autograd path (the cost's 1/N is already in δ), 1/N in ``Network.backprop``
and ``update_mini_batch`` (whose δ^l are the per-example ones), so both paths give
the same numbers. Only these reduced numbers are kept (one 4-vector per layer per
backward), unless ``keep=True``.

The Functions report through a hook that ``bptorch.functions`` exposes
(``functions.base.DELTA_HOOKS``), into which :func:`record` registers this module while a
recorder is active; ``functions/`` never imports this module. When no recorder is active
the list is empty and the Functions' backward pay one list read per layer and keep
nothing: ``benchmarks/diagnostics_overhead.py`` times it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor, nn

from . import feedback
from .functions.base import DELTA_HOOKS
from .nn.activation import _Activation
from .nn.linear import Dense

_recorder = None  # the active (innermost) Recorder, or None

FIELDS = ("speed", "mean_abs_delta", "weight_grad_norm", "saturated_fraction")
SATURATED = 0.01  # "saturated" means |σ'(z)| < SATURATED · max_z |σ'(z)|


def active() -> bool:
    """True while a recorder is collecting."""
    return _recorder is not None


def record_delta(
    name,
    activation,
    delta: Tensor,
    saved: Tensor | None,
    scale: float = 1.0,
    a_prev: Tensor | None = None,
) -> None:
    """Hand one layer's δ^l, and the tensor σ'(z^l) is computed from, to the recorder.

    ``scale`` turns δ's row sum into ∂C/∂b: 1 on the autograd path (the cost's 1/N
    is already inside δ), 1/N in ``Network.backprop`` (whose δ^l are per example).
    ``a_prev`` is a^{l-1}, for ‖∂C/∂W^l‖ (BP4); None where the caller has none.
    """
    if _recorder is not None:
        _recorder.add(name, activation, delta, saved, scale, a_prev)


@torch.no_grad()  # a double backward (create_graph=True) must not tape the diagnostics
def layer_stats(
    activation, delta: Tensor, saved: Tensor | None, scale: float = 1.0,
    a_prev: Tensor | None = None,
) -> Tensor:
    """The four :data:`FIELDS` of one layer, as one (4,) tensor (no host sync)."""
    dz = delta.reshape(-1, delta.shape[-1]) * scale  # ∂C/∂z^l of the batch cost, (N, n_l)
    speed = dz.sum(0).norm()  # BP3: ‖∂C/∂b^l‖
    mean_abs = dz.abs().mean()
    if a_prev is None:
        w_norm = dz.new_tensor(math.nan)
    else:
        a2d = a_prev.reshape(-1, a_prev.shape[-1]).to(dz.dtype)  # δ is bf16 under autocast
        w_norm = (dz.t() @ a2d).norm()  # BP4: ‖∂C/∂W^l‖
    if saved is None:  # identity saves nothing: σ' = 1, never saturated
        saturated = dz.new_zeros(())
    else:
        sp = activation.prime(saved)  # σ'(z^l)
        saturated = (sp.abs() < SATURATED * activation.prime_max).to(dz.dtype).mean()
    return torch.stack([speed, mean_abs, w_norm, saturated])


class Recorder:
    """What :func:`record` yields: per-layer statistics, one row per backward.

    Attributes:
        names: layer names, in the model's order (then in order of first record).
        deltas, primes: with ``keep=True``, name -> list of ∂C/∂z^l (= scale·δ^l,
            (N, n_l), detached copies) and of σ'(z^l), one per backward.
    """

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.names: list[str] = []
        self._rows: dict[str, list[Tensor]] = {}
        self.deltas: dict[str, list[Tensor]] = {}
        self.primes: dict[str, list[Tensor]] = {}

    def add(self, name, activation, delta, saved, scale=1.0, a_prev=None) -> None:
        """Reduce one layer's δ^l to the four numbers and append them."""
        name = "unnamed" if name is None else name
        if name not in self._rows:
            self._rows[name] = []
            if name not in self.names:
                self.names.append(name)
        self._rows[name].append(layer_stats(activation, delta, saved, scale, a_prev))
        if self.keep:
            with torch.no_grad():
                dz = delta.reshape(-1, delta.shape[-1]) * scale
                sp = torch.ones_like(dz) if saved is None else activation.prime(saved)
            self.deltas.setdefault(name, []).append(dz.detach().clone())
            self.primes.setdefault(name, []).append(sp.detach().clone())

    def calls(self, name: str) -> int:
        """How many backward passes recorded layer ``name``."""
        return len(self._rows.get(name, ()))

    def history(self) -> dict[str, dict[str, list[float]]]:
        """name -> field -> one float per recorded backward, oldest first."""
        out = {}
        for name in self.names:
            rows = self._rows.get(name)
            if rows:
                cols = torch.stack(rows).t().tolist()  # one host sync per layer
                out[name] = dict(zip(FIELDS, cols))
        return out

    def stats(self, reduce: str = "last") -> dict[str, dict[str, float]]:
        """name -> field -> float: the latest backward's value, or the mean over all.

        ``reduce="last"`` (default) or ``"mean"``. Layers never reached are absent.
        """
        if reduce not in ("last", "mean"):
            raise ValueError(f"reduce must be 'last' or 'mean', got {reduce!r}")
        out = {}
        for name in self.names:
            rows = self._rows.get(name)
            if rows:
                row = rows[-1] if reduce == "last" else torch.stack(rows).mean(0)
                out[name] = dict(zip(FIELDS, row.tolist()))
        return out

    def clear(self) -> None:
        """Forget every record (the names stay)."""
        self._rows.clear()
        self.deltas.clear()
        self.primes.clear()


def _diagnosable(module: nn.Module) -> bool:
    """The bptorch modules whose Function reports a name: Dense and the activations."""
    return isinstance(module, (Dense, _Activation))


def _on_delta(name, activation, delta: Tensor, saved: Tensor | None,
              a_prev: Tensor | None = None) -> None:
    """The callback in ``functions.base.DELTA_HOOKS`` while a recorder is active."""
    record_delta(name, activation, delta, saved, a_prev=a_prev)


@contextlib.contextmanager
def record(model: nn.Module | None = None, *, keep: bool = False) -> Iterator[Recorder]:
    """Collect per-layer statistics from every backward run inside the block.

    With ``model``, each Dense and activation module in ``model.named_modules()``
    is labelled by its name there ("hidden", "0", "layers.1"; the model itself, if
    it is one, "layer{i}" by its order); the labels are restored on exit. Without
    it, layers report their existing ``_diag_name`` (``Network`` sets these) or
    "unnamed". Names are attached when the forward runs, so run it inside the block.

    Nesting: the innermost recorder collects; the outer one resumes when it exits.
    After exit, the recorder keeps its records and collects nothing more.
    """
    global _recorder
    rec = Recorder(keep)
    renamed: list[tuple[nn.Module, object]] = []
    if model is not None:
        for i, (name, module) in enumerate(
            (n, m) for n, m in model.named_modules() if _diagnosable(m)
        ):
            renamed.append((module, module.__dict__.get("_diag_name", _MISSING)))
            module._diag_name = name or f"layer{i}"
            if module._diag_name not in rec.names:
                rec.names.append(module._diag_name)
    previous, _recorder = _recorder, rec
    if previous is None:
        DELTA_HOOKS.append(_on_delta)
    try:
        yield rec
    finally:
        _recorder = previous
        if previous is None:
            DELTA_HOOKS.remove(_on_delta)
        for module, old in reversed(renamed):
            if old is _MISSING:
                del module._diag_name
            else:
                module._diag_name = old


_MISSING = object()


def measure(net: nn.Module, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
    """Per-layer :data:`FIELDS` of ``net.backprop(x, y)`` on a probe batch, as floats.

    The parameters' ``.grad`` (and ``net.deltas``) are put back as they were, so it
    can run between optimizer steps; the parameters themselves are not touched.
    """
    params = list(net.parameters())
    grads = [p.grad for p in params]
    deltas = getattr(net, "deltas", None)
    try:
        for p in params:
            p.grad = None
        with record(net) as rec:
            net.backprop(x, y)
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        if deltas is not None:
            net.deltas = deltas
    return rec.stats()


# -- feedback rules: how far a rule's update is from backprop's ------------------------------
def angle(a: Tensor, b: Tensor) -> float:
    """The angle between two tensors as vectors, in degrees: arccos(⟨a, b⟩ / (‖a‖ ‖b‖));
    NaN where either is zero."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    norms = a.norm() * b.norm()
    if norms == 0:
        return math.nan
    return math.degrees(math.acos(float((a @ b / norms).clamp(-1.0, 1.0))))


def _weight_grads(model: nn.Module, step) -> dict[str, Tensor]:
    """{layer name: ∂C/∂W} after ``step()``, with every ``.grad`` put back as it was."""
    weights = [(n[: -len(".weight")], p) for n, p in model.named_parameters()
               if n.endswith("weight") and p.dim() >= 2]
    params = list(model.parameters())
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        step()
        return {n: p.grad.detach().clone() for n, p in weights if p.grad is not None}
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def alignment(model: nn.Module, x: Tensor, y: Tensor, loss_fn=None) -> dict[str, float]:
    """Per layer, the angle in degrees between the update ∂C/∂W^l that ``model``'s feedback
    rule computes on the batch (x, y) and the one backprop computes on the same batch.

    The measure Lillicrap et al. (2016) plot to show that feedback alignment "learns to
    align": 90° is an unrelated direction, below 90° the rule's step still descends C.
    The output layer's angle is 0 under every rule (its δ^L is BP1's).

    ``loss_fn(model, x, y)`` returns the cost for ``.backward()`` (the autograd path, e.g.
    a :class:`bptorch.feedback.DFA` wrapper or a model of layers with ``feedback=``);
    without it, ``model.backprop(x, y)`` (a :class:`bptorch.Network`) runs the explicit
    engine. The model runs in eval mode (no dropout: both passes see the same net); its
    ``.grad``, mode and the layers' generators (brsf) are put back afterwards.
    """

    def step() -> None:
        if loss_fn is None:
            model.backprop(x, y)
        else:
            loss_fn(model, x, y).backward()

    was_training = model.training
    model.eval()
    try:
        with feedback.frozen_generators(model):
            rule = _weight_grads(model, step)
        with feedback.exact(model):
            exact = _weight_grads(model, step)
    finally:
        model.train(was_training)
    return {n: angle(rule[n], exact[n]) for n in exact if n in rule}


# -- recurrent nets: the vanishing gradient on the time axis ---------------------------------
def time_gradients(rnn: nn.Module, x: Tensor, readout: nn.Module, cost: nn.Module, y: Tensor,
                   *, measure: str = "batch") -> Tensor:
    """‖∂C/∂h_t‖ for t = 1..T: chapter 5's per-layer "speed of learning" on the time axis.

    ``rnn`` (an RNN, LSTM or GRU, bptorch's or torch.nn's, one direction) reads ``x``
    (laid out as ``rnn`` expects: (T, N, H_in), or (N, T, H_in) with ``batch_first``)
    one step at a time through its own forward, ``rnn(x_t, state)``, carrying the state;
    then C = ``cost(readout(h_T), y)``, and one backward (the rnn's own: for bptorch, BP2
    through time written out) fills ∂C/∂h_t of every carried h_t (the last layer's, N × H).
    h_t feeds both step t+1 and, at t = T, the readout: its gradient is the total one.

    ``measure``:

    * ``"batch"`` (default), the book's measure: ‖Σ_x ∂C/∂h_t^x‖, the norm of the gradient
      of the batch cost summed over the rows (= ‖mean_x ∂C_x/∂h_t^x‖ when C is the batch
      mean), as ``record``'s ``speed`` = ‖Σ_x δ_x‖; a (T,) tensor;
    * ``"per_example"``: mean_x ‖∂C_x/∂h_t^x‖ = the mean over the rows of ‖N · ∂C/∂h_t^x‖
      (assumes C is the mean over the batch); a (T,) tensor;
    * ``"none"``: the gradients ∂C/∂h_t themselves, (T, N, H).

    No ``.grad`` is touched; ``rnn`` and ``readout`` run in eval mode.
    """
    if getattr(rnn, "bidirectional", False):
        raise ValueError("time_gradients: expected a one-direction rnn (bidirectional=False): "
                         "h_t of a reverse pass depends on the steps after t")
    if measure not in ("batch", "per_example", "none"):
        raise ValueError(f"time_gradients: measure must be 'batch', 'per_example' or 'none', "
                         f"got {measure!r}")
    if x.dim() != 3:
        raise ValueError(f"time_gradients: expected a batched 3-D input, got shape "
                         f"{tuple(x.shape)}")
    time_dim = 1 if getattr(rnn, "batch_first", False) else 0
    was_training = rnn.training, readout.training
    rnn.eval(), readout.eval()  # no dropout between layers: one deterministic pass
    try:
        with torch.enable_grad():
            state, hs = None, []
            for t in range(x.shape[time_dim]):
                _out, state = rnn(x.narrow(time_dim, t, 1), state)
                hs.append(state[0] if isinstance(state, tuple) else state)  # (L, N, H) h_t
            loss = cost(readout(hs[-1][-1]), y)
            # ∂C/∂h_t for every t in one backward; autograd.grad leaves every .grad alone
            grads = torch.autograd.grad(loss, hs)
    finally:
        rnn.train(was_training[0]), readout.train(was_training[1])
    g = torch.stack([gt[-1] for gt in grads]).detach()  # (T, N, H): the last layer's h_t
    if measure == "none":
        return g
    if measure == "per_example":
        return (g.norm(dim=-1) * g.shape[1]).mean(1)
    return g.sum(1).norm(dim=-1)
