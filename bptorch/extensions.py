"""Per-example quantities from the written-out backward: BackPACK's first-order extensions.

A batch's gradient is a sum over its examples: BP3 and BP4 add up, over the rows n,

    ∂C/∂b = Σ_n δ_n,      ∂C/∂W = Σ_n δ_n a_nᵀ          (a_n = a^{l−1} of example n)

Each bptorch backward holds every δ_n and a_n at that moment. Inside :func:`collect` it
hands them (``functions.base.per_example``) to a collector, which keeps what the sum
throws away (each family's forms: ``bptorch.per_example``):

* ``grad_batch``: each example's term, g_n = δ_n a_nᵀ (and δ_n for a bias). δ already
  carries the loss's reduction (1/N under ``reduction="mean"``), so Σ_n g_n = ``.grad``:
  BackPACK's scaling. For inputs with extra axes (a sequence (N, T, d), a conv's P
  positions), g_n = Σ_t δ_{n,t} a_{n,t}ᵀ, the sum BP4 takes over positions, per example.
* ``batch_l2``: ‖g_n‖², with no per-example gradient tensor where a cheaper form exists:
  ‖δ_n a_nᵀ‖² = ‖δ_n‖²‖a_n‖² (Goodfellow 2015) for one row per example; for T rows (a
  sequence, or a conv's positions) the Gram ("ghost norm") form
  ‖Σ_t δ_t a_tᵀ‖² = Σ_{t,s} (a_t·a_s)(δ_t·δ_s), which costs T²(p + d) per example
  against the T·p·d of forming g_n, which also gives BP4 (the layers skip theirs inside
  ``collect``: :meth:`Collector.skip`): chosen per layer call when 2T(p + d) < p·d
  (``per_example.ghost_cheaper``). A formed g_n is formed a chunk of examples at a time.
* ``sum_grad_squared``: Σ_n g_n² (elementwise); for one row per example (δ²)ᵀ(a²), one
  matmul.
* ``variance``: BackPACK's Σ_n g_n²/N − (Σ_n g_n / N)², N the batch size.

Shared weights (tied, or a module called twice inside the block): g_n = Σ_u g_n^u over
the uses, formed for that parameter only, and the quantities from it.

Results are left on each parameter under these names (``p.grad_batch``, ...), as BackPACK
leaves them, when the backward ends. Under ``reduction="sum"`` the g_n are the examples'
own gradients; under ``"mean"`` they are 1/N of them, as BackPACK's.

What the collector needs to be right: every parameter's whole gradient must come from
bptorch backwards that report to it. The collector takes the collected parameters' sums
out of what the backward returns and adds them to ``.grad`` itself at the end, so anything
else that writes ``.grad`` during the backward is torch's autograd: a clear error
(:class:`PartialGradientError`), never a partial result. BatchNorm in training mode mixes
the examples of a batch (each δ_n then depends on the others): an error naming the layer.

Covered (``KINDS``): linear and dense layers, Conv2d, Embedding, LayerNorm, BatchNorm
in eval mode, RNN/LSTM/GRU (through time), and MultiheadAttention through its linear
projections (chunks of ``in_proj_weight`` by rows); Conv1d/Conv3d, ConvTranspose1d/2d/3d,
GroupNorm and InstanceNorm, PReLU's α, the cells (a cell run over T steps: its steps
joined, :func:`_stack_steps`), and a routed forward's products with a parameter operand
(docs/extensions.md has the table). The explicit engine's ``Network``:
:func:`network_quantities`. The second-order quantities (``diag_ggn_exact``,
``diag_ggn_mc``, ``kflr``, ``kfac``) ride on the same backward: ``bptorch.curvature``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .curvature import SECOND_ORDER, Curvature, network_curvature
from .functions.base import PER_EXAMPLE
from .per_example import KINDS, LayerCall, LinearCall, ghost_cheaper, stack_steps

FIRST_ORDER = ("grad_batch", "batch_l2", "sum_grad_squared", "variance")


class PartialGradientError(RuntimeError):
    """A parameter's gradient came (partly) from outside the reporting bptorch layers."""


class BatchNormTrainingError(RuntimeError):
    """BatchNorm in training mode inside a per-example collection."""


# ---------------------------------------------------------------- the collector
class Collector:
    """Takes each reporting layer call's δ and a^{l−1} during a backward (the
    ``functions.base.PER_EXAMPLE`` hook), and at the backward's end writes ``.grad`` and
    the asked quantities onto the model's parameters.

    Subclasses (``bptorch.privacy``) override :meth:`take` and :meth:`finish`.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...] = ()) -> None:
        self.names = names
        self.names_of: dict[int, str] = {}
        self.params: dict[int, Tensor] = {}
        self.modules: dict[int, tuple[str, nn.Module]] = {}
        # shared weights, known before the backward (:meth:`take` sums their per-example
        # gradients over the uses): parameters registered twice (tied), and the direct
        # parameters of a module called twice in the forward (:meth:`forward_pre_hook`)
        self.shared: set[int] = set()
        self.params_of: dict[int, tuple[int, ...]] = {}  # id(module) → its parameters
        self.called: set[int] = set()  # the modules called since the last backward
        for module_name, module in model.named_modules(remove_duplicate=False):
            own = []
            for name, p in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if id(p) in self.modules and self.modules[id(p)][1] is not module:
                    self.shared.add(id(p))  # tied: registered under two modules
                self.modules.setdefault(id(p), (module_name, module))
                if p.requires_grad and id(p) not in self.params:
                    self.params[id(p)] = p
                    self.names_of[id(p)] = full
                own.append(id(p))
            if own:
                self.params_of[id(module)] = tuple(own)
        self.reused: set[int] = set()  # the parameters of modules called twice
        self.queued = False
        self.curvature: Curvature | None = None  # the second-order part, when asked
        self.records: dict[int, dict[str, Any]] = {}
        self.grad_state: dict[int, tuple[int, int] | None] = {}

    # ---- the grads the backward did not report: torch's
    def _state(self, p: Tensor) -> tuple[int, int] | None:
        return None if p.grad is None else (id(p.grad), p.grad._version)

    def start(self) -> None:
        """Note each parameter's ``.grad``: only torch can change it until :meth:`end`."""
        self.grad_state = {i: self._state(p) for i, p in self.params.items()}

    def check_untouched(self) -> None:
        """Raise if autograd wrote a parameter's ``.grad`` (a gradient from torch). A
        ``.grad`` set to None or zeroed since :meth:`start` (``zero_grad``) is not torch's."""
        touched = [i for i, p in self.params.items()
                   if p.grad is not None and self._state(p) != self.grad_state.get(i)
                   and bool(p.grad.any())]
        if touched:
            names = ", ".join(repr(self.names_of[i]) for i in touched[:5])
            raise PartialGradientError(
                f"parameter(s) {names} got gradient from torch's own autograd, not from a "
                "bptorch layer's written-out backward, so their per-example quantities "
                "would be partial. Build the model from bptorch.nn layers, or convert it "
                "with bptorch.convert.from_torch_nn(model, strict=True); a layer bptorch "
                "does not yet cover for per-example quantities (or a parameter used by a "
                "torch op beside a bptorch layer) cannot be collected. Supported: "
                f"{', '.join(sorted(KINDS))}.")

    def forward_pre_hook(self, module: nn.Module, args: Any) -> None:
        """Note a call of one of the model's modules (inside :func:`collect`'s block): a
        module called twice uses its parameters twice (shared weights)."""
        own = self.params_of.get(id(module))
        if own is not None:
            if id(module) in self.called:
                self.reused.update(own)
            self.called.add(id(module))

    # ---- the hook
    def __call__(self, kind: str, ctx: Any, grads: tuple, delta: Tensor | None,
                 a_prev: Tensor | None) -> tuple:
        if kind == "batch_norm":
            raise BatchNormTrainingError(self._batch_norm_message(ctx))
        cls = KINDS.get(kind)
        if self.curvature is not None and self.curvature(
                kind, ctx, delta, a_prev, cls and cls.slots, cls and cls.input_index):
            return grads  # called inside the curvature's vmapped walk: BP2 only
        if cls is None:
            return grads
        call, out = None, list(grads)
        skipped = getattr(ctx, "collected_slots", ())  # sums the collector forms itself
        inputs = ctx.next_functions
        for slot, role in cls.slots.items():
            if slot >= len(out) or (out[slot] is None and slot not in skipped):
                continue
            p, rows = _parameter_of(*inputs[cls.input_index(slot, len(inputs))])
            if p is None or id(p) not in self.params:
                continue  # not one of the model's parameters: autograd's, as usual
            if call is None:
                call = cls(ctx, delta, a_prev, grads)
            self.take(p, call, role, out[slot], rows)
            out[slot] = None  # the collector adds it to .grad at the end
        if call is not None:
            self.taken(call)
        if call is not None and not self.queued:
            self.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.end)
        return tuple(out)

    def taken(self, call: LayerCall) -> None:
        """After :meth:`take` took each of one layer call's parameters (a hook for
        ``bptorch.privacy``, which keeps calls to the backward's end)."""

    def _batch_norm_message(self, ctx: Any) -> str:
        where = "a BatchNorm layer (no affine parameters)"
        for node, _ in ctx.next_functions[1:]:  # (input, γ, β, running statistics)
            p = getattr(node, "variable", None)
            if p is not None and id(p) in self.modules:
                name, module = self.modules[id(p)]
                where = f"{type(module).__name__} {name!r}"
                break
        return (f"{where} is in training mode: its batch statistics mix the examples of a "
                "batch, so per-example gradients are not defined. Put it in eval mode "
                "(layer.eval(), running statistics), or use a per-example norm "
                "(GroupNorm, LayerNorm) instead.")

    def skip(self, kind: str, ctx: Any, need: tuple) -> tuple:
        """``need`` (``functions.base.per_example_need``) with the collected parameters'
        slots off: the layer skips its own BP3/BP4 and :meth:`take` forms the sum from δ
        and a^{l−1} after the quantities (``LayerCall.weighted_sum`` with c = 1), so where a
        quantity formed the per-example g_n, BP4 is Σ_n g_n and costs no second product.
        Not under the second-order quantities (their walk reads the layers' own sums).
        The slots skipped are noted on ``ctx`` for :meth:`__call__`."""
        cls = KINDS.get(kind)
        if cls is None or self.curvature is not None:
            return need
        out, skipped, inputs = list(need), [], ctx.next_functions
        for slot in cls.slots:
            if slot < len(out) and out[slot]:
                p, _rows = _parameter_of(*inputs[cls.input_index(slot, len(inputs))])
                if p is not None and id(p) in self.params:
                    out[slot] = False
                    skipped.append(slot)
        ctx.collected_slots = tuple(skipped)
        return tuple(out)

    def take(self, p: Tensor, call: LayerCall, role: str, grad: Tensor | None,
             rows: slice | None = None) -> None:
        """One layer call's share of parameter ``p`` (of its ``rows`` only, for a chunk
        of it): its sum, and the asked quantities now, while δ and a^{l−1} are alive
        (memory as a plain step). Disjoint chunks add up: their norms and squares too.
        ``grad`` None: the layer skipped its sum (:meth:`skip`); formed here, after the
        quantities, from the g_n they formed if they did."""
        rec = self.records.get(id(p))
        if rec is None:
            rec = self.records[id(p)] = {"p": p, "uses": 1, "parts": [], "n": call.n}
        if rows_overlap(rows, rec["parts"]):
            rec["uses"] += 1  # the same rows again: shared weights
        rec["parts"].append(rows)
        names = self.names
        stackable = getattr(call, "stackable", False)
        if stackable and "grad_batch" not in names:
            rec.setdefault("steps", []).append((call, role))  # a cell's step: stack_steps
        shared = not stackable and (id(p) in self.shared or id(p) in self.reused)
        per_example = "grad_batch" in names or shared  # a shared weight: Σ_u g_n^u
        if per_example:
            _add(rec, "grad_batch", call.formed(role), rows, (call.n, *p.shape), batched=True)
        alone = not per_example and rec["uses"] == 1  # else formed from grad_batch
        l2 = alone and "batch_l2" in names
        squares = alone and ("sum_grad_squared" in names or "variance" in names)
        if grad is None:  # the sum too, BP3/BP4 (from g_n where a quantity forms them)
            norms, sgs, grad = call.quantities(role, l2, squares)
        else:
            norms = call.batch_l2(role) if l2 else None
            sgs = call.sum_grad_squared(role) if squares else None
        if norms is not None:
            rec["batch_l2"] = rec.get("batch_l2", 0) + norms
        if sgs is not None:
            _add(rec, "sum_grad_squared", sgs, rows, p.shape)
        _add(rec, "grad", grad, rows, p.shape)

    def end(self) -> None:
        """At the backward's end: refuse torch's gradients, write .grad and the results."""
        self.queued = False
        records, self.records = self.records, {}
        self.called, self.reused = set(), set()  # the next forward counts afresh
        self.check_untouched()
        for i, rec in records.items():
            p = rec["p"]
            grad = rec["grad"].to(p.dtype)
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.add_(grad)
            self.finish(p, rec)
        if self.curvature is not None:
            self.curvature.finish()
        self.start()

    def finish(self, p: Tensor, rec: dict[str, Any]) -> None:
        """Leave the asked quantities on ``p`` as BackPACK names them."""
        names, gb = self.names, rec.get("grad_batch")
        if gb is None and rec["uses"] > 1 and len(rec.get("steps", ())) == len(rec["parts"]):
            _stack_steps(rec, names)  # a cell run over T steps: its uses as one sequence
        if gb is None and rec["uses"] > 1 and set(names) - {"grad_batch"}:
            raise RuntimeError(
                f"parameter {self.names_of[id(p)]!r} is used by {rec['uses']} layer calls in "
                "one backward (shared weights): its per-example norms need the per-example "
                "gradients summed over the uses, and the collection learns that a parameter "
                "is shared from tied registrations and from modules called twice inside its "
                "block. Run the model's forward inside the `with collect(...)` block, or "
                "collect 'grad_batch' as well")
        dtype = p.dtype
        if gb is not None:
            gb = gb.to(dtype)
        if "grad_batch" in names:
            p.grad_batch = gb
        if "batch_l2" in names:
            p.batch_l2 = (gb.flatten(1).square().sum(1) if gb is not None
                          else rec["batch_l2"].to(dtype))
        sgs = None
        if "sum_grad_squared" in names or "variance" in names:
            sgs = gb.square().sum(0) if gb is not None else rec["sum_grad_squared"].to(dtype)
        if "sum_grad_squared" in names:
            p.sum_grad_squared = sgs
        if "variance" in names:  # BackPACK's: Σ g_n²/N − (Σ g_n / N)²
            n = rec["n"]
            mean = rec["grad"].to(dtype) / n
            p.variance = torch.addcmul(sgs / n, mean, mean, value=-1)


def _stack_steps(rec: dict[str, Any], names: tuple[str, ...]) -> None:
    """A parameter used by every step of a cell (``stackable`` calls): the steps' δ and
    a^{l−1} joined on a step axis, g_n = Σ_t δ_{n,t} a_{n,t}ᵀ as a layer over time, and
    its norms (the ghost norm over T) and squares formed from that."""
    call, role = stack_steps(rec.pop("steps"))
    rec["uses"] = 1
    if "batch_l2" in names:
        rec["batch_l2"] = call.batch_l2(role)
    if "sum_grad_squared" in names or "variance" in names:
        rec["sum_grad_squared"] = call.sum_grad_squared(role)


def _add(rec: dict[str, Any], key: str, value: Tensor, rows: slice | None,
         shape: tuple, batched: bool = False) -> None:
    """rec[key] += value, placed at ``rows`` of a parameter of ``shape`` (the leading
    axis after the batch's when ``batched``); the first whole value is kept as it is."""
    if key not in rec:
        if rows is None:
            rec[key] = value
            return
        rec[key] = value.new_zeros(shape)
    at = (slice(None), rows) if batched and rows is not None else rows
    if at is None:
        rec[key] = rec[key] + value
    else:
        rec[key][at] += value


def _parameter_of(node: Any, output_nr: int) -> tuple[Tensor | None, slice | None]:
    """The leaf tensor a Function input comes from, and its rows when the input is a
    chunk of it (``w.chunk(3)``: MultiheadAttention's W^Q, W^K, W^V): (None, None) if
    neither."""
    p = getattr(node, "variable", None)
    if p is not None or type(node).__name__ != "SplitBackward0" or node._saved_dim != 0:
        return p, None
    base = getattr(node.next_functions[0][0], "variable", None)
    size = node._saved_split_size
    return base, slice(output_nr * size, (output_nr + 1) * size)


def rows_overlap(rows: slice | None, parts: list[slice | None]) -> bool:
    """Whether ``rows`` meets rows already taken (None: the whole parameter)."""
    return any(rows is None or part is None
               or (rows.start < part.stop and part.start < rows.stop) for part in parts)


def _check_names(names: tuple[str, ...], loss_fn: Any) -> None:
    for name in names:
        if name not in FIRST_ORDER and name not in SECOND_ORDER:
            raise ValueError(f"unknown quantity {name!r}: bptorch.extensions.collect "
                             f"supports {', '.join(FIRST_ORDER + SECOND_ORDER)} "
                             "(BackPACK's names)")


@contextlib.contextmanager
def collect(model: nn.Module, *names: str, loss_fn: Any = None,
            mc_samples: int = 1) -> Iterator[Collector]:
    """Collect per-example quantities during the ``loss.backward()`` run inside the block.

    ``names``: any of ``grad_batch``, ``batch_l2``, ``sum_grad_squared``, ``variance``
    (BackPACK's names, scalings and layouts). When the backward ends each of ``model``'s
    parameters holds ``.grad`` as usual and one attribute per name. The second-order
    names (``diag_ggn_exact``, ``diag_ggn_mc``, ``kflr``, ``kfac``: ``bptorch.curvature``)
    need ``loss_fn``, the loss module called on the model's output inside the block;
    ``mc_samples``: the Monte-Carlo columns of ``diag_ggn_mc`` and ``kfac`` (BackPACK's 1).

        with collect(model, "batch_l2"):
            loss_fn(model(x), y).backward()
        norms2 = sum(p.batch_l2 for p in model.parameters())
    """
    if not names:
        raise ValueError(f"collect needs at least one quantity: {', '.join(FIRST_ORDER)}")
    _check_names(names, loss_fn)
    collector = Collector(model, tuple(names))
    handle = None
    if set(names) & set(SECOND_ORDER):
        collector.curvature = Curvature(tuple(names), loss_fn, mc_samples, collector.params,
                                        collector.names_of, collector.modules)
        # the loss's input is read when loss_fn is called (its forward; nothing else)
        handle = loss_fn.register_forward_hook(collector.curvature.forward_hook)
    for p in collector.params.values():  # no stale results from an earlier collection
        for name in FIRST_ORDER + SECOND_ORDER:
            if hasattr(p, name):
                delattr(p, name)
    collector.start()
    PER_EXAMPLE.append(collector)
    calls = nn.modules.module.register_module_forward_pre_hook(collector.forward_pre_hook)
    try:
        yield collector
        collector.check_untouched()
    finally:
        PER_EXAMPLE.remove(collector)
        calls.remove()
        if handle is not None:
            handle.remove()


@torch.no_grad()
def network_quantities(net: nn.Module, x: Tensor, *names: str, mc_samples: int = 1) -> None:
    """The same quantities for the explicit engine: after ``net.backprop(x, y)`` (a
    ``bptorch.network.Network``), from its per-example ``net.deltas`` and the activations
    a^{l−1}, recomputed from ``x`` by one forward (the engine keeps only δ). Scaled as
    on the autograd path: the engine's cost is the batch mean, so g_n = δ_n a_nᵀ / N.
    Leaves each quantity on ``layers[l].weight`` and ``.bias`` as :func:`collect` does;
    the second-order ones from the engine's cost (``bptorch.curvature.network_curvature``)."""
    if not names:
        raise ValueError(f"network_quantities needs at least one quantity: {', '.join(FIRST_ORDER)}")
    _check_names(names, None)
    if getattr(net, "feedback", "backprop") != "backprop":
        raise ValueError(f"Network(feedback={net.feedback!r}): its δ are not the gradient's, "
                         "so per-example gradients are not defined")
    deltas = net.deltas
    if not deltas or deltas[0].shape[0] != x.shape[0]:
        raise ValueError("network_quantities reads net.deltas of this x: call "
                         "net.backprop(x, y) first")
    collector = Collector(net, tuple(names))
    a_prev, m = x, x.shape[0]
    for layer, delta in zip(net.layers, deltas):
        call = LinearCall(None, delta / m, a_prev, ())
        sums = {"weight": call.weighted_sum("weight", torch.ones(m)),  # BP4: Σ_n g_n
                "bias": call.weighted_sum("bias", torch.ones(m))}  # BP3
        for p, role in ((layer.weight, "weight"), (layer.bias, "bias")):
            collector.take(p, call, role, sums[role].to(p.dtype))
        a_prev = layer(a_prev)
    for rec in collector.records.values():
        collector.finish(rec["p"], rec)
    second = tuple(name for name in names if name in SECOND_ORDER)
    if second:
        network_curvature(net, x, second, mc_samples)


__all__ = ["BatchNormTrainingError", "Collector", "FIRST_ORDER", "KINDS", "LayerCall",
           "PartialGradientError", "SECOND_ORDER", "collect", "ghost_cheaper",
           "network_quantities", "rows_overlap"]
