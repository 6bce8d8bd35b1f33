"""Private training (DP-SGD) with Opacus's interface, clipping inside the one backward.

DP-SGD (Abadi et al. 2016) clips each example's gradient g_n to norm C, sums, adds
Gaussian noise N(0, σ²C²) and divides by the expected batch size:

    c_n = min(1, C / (‖g_n‖ + 1e-6)),   ĝ = (Σ_n c_n g_n + N(0, σ²C² I)) / B_expected

with ‖g_n‖² = Σ_layers ‖g_n^l‖² over *all* the model's parameters. Per layer,
Σ_n c_n g_n^l = Σ_n c_n δ_n a_nᵀ is BP4 with each example's δ row scaled by c_n first:
one reweighted matmul, no per-example gradient tensor (book-keeping, Bu et al. 2023).

The catch is the order: c_n needs the norms of every layer before any layer's clipped sum,
and the backward meets the layers one at a time. The choices are

* ghost clipping (Li et al. 2022, Opacus's): a first backward for the norms, a second
  for the reweighted sums. Two backward passes.
* book-keeping, taken here: one backward. Each bptorch layer hands its δ and a^{l−1} to
  the collector (``functions.base.PER_EXAMPLE``) as the backward reaches it; the collector
  adds the layer's ‖g_n^l‖² by its cheapest form (‖δ_n‖²‖a_n‖², or the Gram form for
  sequences and convolutions: ``bptorch.extensions``) and keeps δ and a^{l−1}. When the
  backward ends (a callback queued on autograd's engine), c_n is known and each layer's
  clipped sum is its own BP4 on the scaled δ. The layer's own unclipped BP3/BP4 is never
  formed (the collector turns those slots of ``need`` off before the backward reaches them:
  ``functions.base.per_example_need``), so a private step is one backward, the norms
  and one reweighted BP4 per layer. The memory held is the δ's and a's of the
  step (a plain step holds each a^{l−1} only until its layer's backward, and δ as it
  goes), except where a layer's per-example gradients, no larger than its δ and a, were
  formed for its norm: those are kept instead (``LayerCall.let_go``). Shared weights
  (tied, or a layer applied twice): ‖Σ_u g_n^u‖² with the cross terms between the uses
  (``per_example.cross_l2``), one clip factor per example for all uses.

Scaling follows Opacus exactly: under ``loss_reduction="mean"`` the backward's δ carries
1/B (the actual batch size), so the per-example gradient Opacus clips is B·g_n; the noise
is added to the clipped sum, and the sum divided by the *expected* batch size
(``len(dataset) / len(data_loader)``). With σ = 0 a step equals Opacus's step from the
same batch and weights (tests/test_privacy.py).

Sampling: Poisson (each example joins a batch with probability q = 1/len(data_loader)),
through Opacus's ``DPDataLoader`` when Opacus is installed, else :class:`PoissonSampler`.
Accounting: Opacus's accountants (RDP by default; ``"prv"``, ``"gdp"``), or
``dp-accounting``'s RDP accountant when Opacus is absent. Both are the optional extra
``bptorch[privacy]``.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .extensions import BatchNormTrainingError, Collector, rows_overlap
from .per_example import LayerCall, cross_l2
from .functions.base import PER_EXAMPLE

_INSTALL = "pip install 'bptorch[privacy]' (opacus, dp-accounting)"


# ---------------------------------------------------------------- clipping in the backward
class ClippingCollector(Collector):
    """Per-example norms layer by layer during the backward, the clipped sums at its end.

    After the backward each parameter's ``.grad`` holds Σ_n c_n g_n (Opacus's
    ``summed_grad``, in its scaling); the optimizer adds the noise.
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, loss_reduction: str) -> None:
        super().__init__(model)
        self.max_grad_norm, self.loss_reduction = max_grad_norm, loss_reduction
        self.calls: list[tuple[Tensor, LayerCall, str, slice | None]] = []
        self.norms2: Tensor | None = None
        self.per_sample_norms: Tensor | None = None  # the last step's ‖g_n‖, for inspection

    def install(self) -> None:
        """Active until the end of the next backward (called by the module's forward).
        Starts afresh: what a backward that raised half-way left behind is dropped."""
        self.queued, self.calls, self.norms2 = False, [], None
        self.start()
        if self not in PER_EXAMPLE:
            PER_EXAMPLE.append(self)

    # skip (Collector's): the layers' own BP3/BP4 off for the model's parameters; their
    # unclipped sums are never formed, since :meth:`end` forms the clipped ones

    def take(self, p: Tensor, call: LayerCall, role: str, grad: Tensor | None,
             rows: slice | None = None) -> None:
        """Add the call's ‖g_n^u‖² to the examples' squared norms, and keep the call for
        :meth:`end`. A parameter used by several calls (shared weights: tied, or a layer
        applied twice) has g_n = Σ_u g_n^u, so ‖g_n‖² = Σ_u ‖g_n^u‖² + 2 Σ_{u<v}
        ⟨g_n^u, g_n^v⟩: each use adds its own norm and its cross terms with the uses
        before it (``per_example.cross_l2``: the Gram form for dense layers)."""
        l2 = call.batch_l2(role)  # ‖g_n^u‖², by the cheapest form
        for q, earlier, earlier_role, earlier_rows in self.calls:
            if q is p and rows_overlap(rows, [earlier_rows]):  # the same entries again
                l2 = l2 + 2 * cross_l2(earlier, earlier_role, call, role,
                                       earlier_rows, rows, p.shape)
        self.calls.append((p, call, role, rows))
        self.norms2 = l2 if self.norms2 is None else self.norms2 + l2

    def taken(self, call: LayerCall) -> None:
        """The call's δ and a^{l−1} let go where its clipped sums come from kept g_n."""
        roles = []
        for _p, other, role, _rows in reversed(self.calls):
            if other is not call:
                break
            roles.append(role)
        call.let_go(roles)

    def end(self) -> None:
        self.queued = False
        calls, norms2 = self.calls, self.norms2
        self.calls, self.norms2 = [], None
        if self in PER_EXAMPLE:
            PER_EXAMPLE.remove(self)
        self.check_untouched()
        n = calls[0][1].n
        # Opacus clips the examples' own gradients: under a mean loss, B·g_n
        scale = float(n) if self.loss_reduction == "mean" else 1.0
        norms = norms2.sqrt() * scale
        self.per_sample_norms = norms
        clip = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # c_n, as Opacus
        fresh: set[int] = set()  # the .grad tensors formed here (added to in place)
        for p, call, role, rows in calls:  # BP4 (BP3) with each example's δ scaled by c_n
            # (a shared parameter: Σ_u Σ_n c_n g_n^u, one clip factor per example for all uses)
            summed = call.weighted_sum(role, clip * scale).to(p.dtype)
            if id(p) in fresh:
                p.grad[(rows,) if rows is not None else ...] += summed
                continue
            if rows is not None:  # a chunk of p (attention's W^Q, W^K, W^V)
                summed, part = torch.zeros_like(p), summed
                summed[rows] = part
            p.grad = summed if p.grad is None else p.grad + summed
            fresh.add(id(p))
        self.start()


class GradSampleModule(nn.Module):
    """The model, made private: its forward turns the clipping collector on for the next
    backward (training mode, with gradients enabled); otherwise the model's own forward.
    ``_module`` is the model, as in Opacus."""

    def __init__(self, module: nn.Module, collector: ClippingCollector) -> None:
        super().__init__()
        self._module = module
        self.collector = collector

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            self.collector.install()
        return self._module(*args, **kwargs)


class DPOptimizer(torch.optim.Optimizer):
    """The optimizer, made private: ``step`` adds N(0, σ²C²) to each clipped sum, divides
    by the expected batch size (``loss_reduction="mean"``), records the step with the
    accountant, then runs the original step. An ``Optimizer`` (learning-rate schedulers
    accept it) whose ``param_groups``, ``state`` and ``defaults`` are the original's."""

    def __init__(self, optimizer: torch.optim.Optimizer, collector: ClippingCollector, *,
                 noise_multiplier: float, max_grad_norm: float, expected_batch_size: int,
                 loss_reduction: str = "mean", generator: torch.Generator | None = None,
                 on_step: Any = None) -> None:
        self.original_optimizer = optimizer
        self.collector = collector
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch_size, self.loss_reduction = expected_batch_size, loss_reduction
        self.generator, self.on_step = generator, on_step
        self.params = [p for group in optimizer.param_groups for p in group["params"]
                       if p.requires_grad]

    # Optimizer.__init__ is not run: the original optimizer holds the state
    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.original_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        self.original_optimizer.param_groups = groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.original_optimizer.state

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        return self.original_optimizer.defaults

    def __repr__(self) -> str:
        return f"DPOptimizer({self.original_optimizer!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none)
        self.collector.start()

    def add_noise(self) -> None:
        """.grad = Σ_n c_n g_n + N(0, σ²C²), drawn as Opacus draws it (same generator,
        same order ⇒ same noise)."""
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            # in place: .grad is the collector's own Σ_n c_n g_n, no one else holds it
            summed = p.grad if p.grad is not None else torch.zeros_like(p)
            if std > 0:
                summed.add_(torch.normal(0, std, p.shape, device=p.device,
                                         generator=self.generator, dtype=p.dtype))
            if self.loss_reduction == "mean":
                summed.div_(self.expected_batch_size)
            p.grad = summed

    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            with torch.enable_grad():
                closure()
        self.add_noise()
        if self.on_step is not None:
            self.on_step()
        return self.original_optimizer.step()

    def state_dict(self) -> dict:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.original_optimizer.load_state_dict(state)


# ---------------------------------------------------------------- Poisson sampling
class PoissonSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices, each example in with probability ``sample_rate``, ``steps``
    batches an epoch (Opacus's ``UniformWithReplacementSampler``, used without Opacus)."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int,
                 generator: torch.Generator | None = None) -> None:
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield mask.nonzero().flatten().tolist()


def _empty_batch_collate(dataset: Any, collate: Any) -> Any:
    """``collate``, but an empty batch is each field with 0 rows (a Poisson batch can be
    empty), shaped after the dataset's first example."""
    def wrapped(batch: list) -> Any:
        if batch:
            return collate(batch)
        first = collate([dataset[0]])
        if isinstance(first, (tuple, list)):
            return type(first)(t[:0] for t in first)
        return first[:0]
    return wrapped


def poisson_data_loader(data_loader: DataLoader,
                        generator: torch.Generator | None = None) -> DataLoader:
    """``data_loader`` with Poisson sampling at rate 1/len(data_loader): Opacus's
    ``DPDataLoader`` when installed, else :class:`PoissonSampler`."""
    try:
        from opacus.data_loader import DPDataLoader
    except ImportError:
        DPDataLoader = None
    if DPDataLoader is not None:
        return DPDataLoader.from_data_loader(data_loader, generator=generator,
                                             distributed=False)
    steps = len(data_loader)
    sampler = PoissonSampler(len(data_loader.dataset), 1 / steps, steps, generator)
    collate = data_loader.collate_fn or torch.utils.data.default_collate
    return DataLoader(data_loader.dataset, batch_sampler=sampler,
                      num_workers=data_loader.num_workers,
                      collate_fn=_empty_batch_collate(data_loader.dataset, collate),
                      pin_memory=data_loader.pin_memory)


# ---------------------------------------------------------------- accounting
class _Accountant:
    """Opacus's accountant of ``mechanism`` when installed; else dp-accounting's RDP."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.history: list[tuple[float, float, int]] = []  # (σ, q, steps), as Opacus's
        try:
            from opacus.accountants import create_accountant
        except ImportError:
            self.opacus = None
            if mechanism != "rdp":
                raise ImportError(f"the {mechanism!r} accountant needs opacus: {_INSTALL}")
        else:
            self.opacus = create_accountant(mechanism)
            self.history = self.opacus.history

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        if self.opacus is not None:
            self.opacus.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        elif self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            σ, q, steps = self.history[-1]
            self.history[-1] = (σ, q, steps + 1)
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def get_epsilon(self, delta: float) -> float:
        if self.opacus is not None:
            return self.opacus.get_epsilon(delta=delta)
        try:
            from dp_accounting import dp_event, rdp
        except ImportError as e:
            raise ImportError(f"privacy accounting needs opacus or dp-accounting: {_INSTALL}") from e
        accountant = rdp.RdpAccountant()
        for σ, q, steps in self.history:
            accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(σ)),
                               steps)
        return accountant.get_epsilon(delta)


# ---------------------------------------------------------------- the engine
def _check_module(module: nn.Module) -> None:
    """BatchNorm mixes the examples of a batch: refuse it up front, as Opacus does."""
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(m).__name__:
            raise BatchNormTrainingError(
                f"{type(m).__name__} {name!r}: BatchNorm's batch statistics mix the examples "
                "of a batch, so per-example gradients (and their clipping) are not defined. "
                "Use a per-example norm (GroupNorm, LayerNorm) instead, or remove it.")


class PrivacyEngine:
    """Opacus's ``PrivacyEngine`` for bptorch models: ``make_private`` returns the module,
    optimizer and data loader that train with DP-SGD, ``get_epsilon(delta)`` the privacy
    spent so far.

        engine = PrivacyEngine()
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.1, max_grad_norm=1.0)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()   # clips, in this one backward
            optimizer.step()                  # adds noise, steps
        engine.get_epsilon(1e-5)

    ``accountant``: "rdp" (default), "prv" or "gdp" (Opacus's; Opacus's own default is
    "prv"). Every parameter's gradient must come from bptorch layers (an error names any
    that does not).
    """

    def __init__(self, *, accountant: str = "rdp", secure_mode: bool = False) -> None:
        if secure_mode:
            raise NotImplementedError("secure_mode (cryptographically safe noise) is not "
                                      "supported; use Opacus for it")
        self.accountant = _Accountant(accountant)

    def make_private(self, *, module: nn.Module, optimizer: torch.optim.Optimizer,
                     data_loader: DataLoader, noise_multiplier: float, max_grad_norm: float,
                     batch_first: bool = True, loss_reduction: str = "mean",
                     poisson_sampling: bool = True,
                     noise_generator: torch.Generator | None = None,
                     ) -> tuple[GradSampleModule, DPOptimizer, DataLoader]:
        """(module, optimizer, data_loader) made private, as Opacus's ``make_private``:
        clipping to ``max_grad_norm`` per example, noise σ = ``noise_multiplier``, Poisson
        sampling at rate 1/len(data_loader)."""
        if not batch_first:
            raise NotImplementedError("batch_first=False: bptorch's collectors read dim 0 "
                                      "as the batch")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if not isinstance(max_grad_norm, (int, float)):
            raise NotImplementedError("per-layer clipping (a list of max_grad_norm) is not "
                                      "supported; give one float")
        _check_module(module)
        sample_rate = 1 / len(data_loader)
        expected_batch_size = int(len(data_loader.dataset) * sample_rate)
        if poisson_sampling:
            data_loader = poisson_data_loader(data_loader)
        collector = ClippingCollector(module, max_grad_norm, loss_reduction)
        private_module = GradSampleModule(module, collector)
        private_optimizer = DPOptimizer(
            optimizer, collector, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction, generator=noise_generator,
            on_step=lambda: self.accountant.step(noise_multiplier, sample_rate))
        return private_module, private_optimizer, data_loader

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta``, from the accountant's history of (σ, q, steps)."""
        return self.accountant.get_epsilon(delta)


__all__ = ["ClippingCollector", "DPOptimizer", "GradSampleModule", "PoissonSampler",
           "PrivacyEngine", "poisson_data_loader"]
