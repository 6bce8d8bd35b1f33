"""bptorch.privacy: clipping in the one backward against a float64 per-example loop, a whole
private step against Opacus's from the same batch and weights, ε against Opacus's
accountant, Poisson sampling, and the errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bptorch.nn as bnn
import bptorch.privacy as privacy
from bptorch.convert import from_torch_nn
from bptorch.extensions import BatchNormTrainingError, PartialGradientError
from bptorch.functions.base import PER_EXAMPLE
from bptorch.privacy import PrivacyEngine
from test_extensions import _case, _loop

D = torch.float64
CASES = ["mlp", "sequence", "conv", "embedding", "layer_norm"]  # Opacus's layers


def _private(model, x, y, reduction, noise=0.0, clip=0.5, seed=None, engine_cls=PrivacyEngine):
    """One private SGD step on (x, y); the loader only fixes q and the expected batch."""
    data = TensorDataset(torch.zeros(12, 1), torch.zeros(12))
    loader = DataLoader(data, batch_size=4)  # q = 1/3, expected batch 4 (x has 5 rows)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.7)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    engine = engine_cls(accountant="rdp")
    module, optimizer, _ = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
        max_grad_norm=clip, loss_reduction=reduction, poisson_sampling=False,
        noise_generator=generator)
    optimizer.zero_grad()
    nn.CrossEntropyLoss(reduction=reduction)(module(x), y).backward()
    optimizer.step()
    return module


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", [*CASES, "lstm", "gru", "attention", "transformer"])
def test_clipped_sum_equals_a_per_example_loop(case, reduction):
    """After the backward .grad = Σ_n min(1, C/‖g_n‖) g_n, g_n the examples' own
    gradients (Opacus's scaling), from a float64 loop over single examples."""
    model, x, y = _case(case)
    twin = from_torch_nn(model, strict=False)
    ref = _loop(model, x, y, "sum")
    norms = torch.stack([g.flatten(1).square().sum(1) for g in ref.values()]).sum(0).sqrt()
    clip = float(norms.median())  # some examples clipped, some not
    factor = (clip / (norms + 1e-6)).clamp(max=1)
    data = DataLoader(TensorDataset(torch.zeros(10, 1)), batch_size=5)
    module, optimizer, _ = PrivacyEngine().make_private(
        module=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=1.0), data_loader=data,
        noise_multiplier=0.0, max_grad_norm=clip, loss_reduction=reduction,
        poisson_sampling=False)
    nn.CrossEntropyLoss(reduction=reduction)(module(x), y).backward()
    assert PER_EXAMPLE == []  # on for one backward only
    torch.testing.assert_close(module.collector.per_sample_norms, norms)
    for (name, g), p in zip(ref.items(), twin.parameters()):
        torch.testing.assert_close(p.grad, torch.tensordot(factor, g, 1), msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES)
def test_private_step_with_noise_0_equals_opacus(case, reduction):
    pytest.importorskip("opacus")
    import opacus

    model, x, y = _case(case)
    if case == "embedding":  # Opacus 1.6 gives the padding row per-example gradients
        model[0].padding_idx = None
    twin = from_torch_nn(copy.deepcopy(model), strict=False)
    _private(twin, x, y, reduction)
    _private(model, x, y, reduction, engine_cls=opacus.PrivacyEngine)
    for p, q in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)


def test_private_step_with_noise_equals_opacus_from_the_same_generator():
    pytest.importorskip("opacus")
    import opacus

    model, x, y = _case("mlp")
    twin = from_torch_nn(copy.deepcopy(model), strict=False)
    before = [p.detach().clone() for p in twin.parameters()]
    _private(twin, x, y, "mean", noise=1.3, seed=11)
    _private(model, x, y, "mean", noise=1.3, seed=11, engine_cls=opacus.PrivacyEngine)
    for p, q, b in zip(twin.parameters(), model.parameters(), before):
        torch.testing.assert_close(p, q)
        assert not torch.allclose(p, b)


def test_epsilon_equals_opacus_accountant():
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    model = bnn.Sequential(bnn.Linear(3, 2))
    data = DataLoader(TensorDataset(torch.randn(200, 3), torch.randint(0, 2, (200,))),
                      batch_size=20)
    engine = PrivacyEngine()
    module, optimizer, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=data, noise_multiplier=1.1, max_grad_norm=1.0)
    steps = 0
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            if len(x):
                nn.CrossEntropyLoss()(module(x), y).backward()
            optimizer.step()
            steps += 1
    reference = RDPAccountant()
    reference.history = [(1.1, 0.1, steps)]
    assert steps == 20
    assert engine.get_epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_without_opacus_from_dp_accounting(monkeypatch):
    """dp-accounting's RDP accountant, when Opacus is absent: close to Opacus's (their
    RDP orders differ)."""
    pytest.importorskip("dp_accounting")
    opacus = pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    import sys
    monkeypatch.setitem(sys.modules, "opacus.accountants", None)  # import fails
    accountant = privacy._Accountant("rdp")
    assert accountant.opacus is None
    for _ in range(30):
        accountant.step(noise_multiplier=1.0, sample_rate=0.01)
    reference = RDPAccountant()
    reference.history = [(1.0, 0.01, 30)]
    assert accountant.history == [(1.0, 0.01, 30)]
    assert accountant.get_epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=0.05)
    del opacus


@pytest.mark.parametrize("with_opacus", [True, False])
def test_poisson_sampling(with_opacus, monkeypatch):
    import sys
    if with_opacus:
        pytest.importorskip("opacus")
    else:
        monkeypatch.setitem(sys.modules, "opacus.data_loader", None)
    data = TensorDataset(torch.arange(400.0).reshape(200, 2), torch.arange(200))
    loader = privacy.poisson_data_loader(DataLoader(data, batch_size=50),
                                         generator=torch.Generator().manual_seed(0))
    sizes = []
    for _ in range(25):
        for x, y in loader:
            assert x.shape[1:] == (2,) and len(x) == len(y)
            assert (x[:, 0] == 2 * y).all()
            sizes.append(len(x))
    assert len(sizes) == 100  # len(loader) batches an epoch
    assert len(set(sizes)) > 5  # sizes vary
    assert abs(sum(sizes) / len(sizes) - 50) < 3  # expected q·N = 50 (σ/√100 ≈ 0.4)


def test_empty_poisson_batch_collates_to_zero_rows():
    data = TensorDataset(torch.randn(5, 3), torch.arange(5))
    collate = privacy._empty_batch_collate(data, torch.utils.data.default_collate)
    x, y = collate([])
    assert x.shape == (0, 3) and y.shape == (0,)


def test_batch_norm_is_refused_up_front():
    model = bnn.Sequential(bnn.Conv2d(1, 2, 3), bnn.BatchNorm2d(2))
    with pytest.raises(BatchNormTrainingError, match=r"BatchNorm2d '1'.*GroupNorm, LayerNorm"):
        PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2),
            noise_multiplier=1.0, max_grad_norm=1.0)


def test_a_torch_layer_is_refused():
    model = nn.Sequential(bnn.Linear(3, 4), nn.Linear(4, 2))
    module, optimizer, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2),
        noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(PartialGradientError, match="'1.weight'"):
        module(torch.randn(2, 3)).sum().backward()
    PER_EXAMPLE.clear()


def test_a_backward_that_raised_leaves_nothing_behind():
    """After a backward that failed half-way, the next step clips afresh."""
    torch.manual_seed(0)
    model = bnn.Sequential(bnn.Linear(3, 4), bnn.Tanh(), bnn.Linear(4, 2)).to(D)
    twin = copy.deepcopy(model)
    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    module, _, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=data,
        noise_multiplier=0.0, max_grad_norm=0.3)
    x = torch.randn(5, 3, dtype=D)

    class Boom(torch.autograd.Function):  # raises in backward, after the top layer reported
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("boom")

    module(x)  # turns the collector on
    with pytest.raises(RuntimeError, match="boom"):
        model[2](Boom.apply(model[1](model[0](x)))).sum().backward()
    assert module.collector.calls  # the top layer reported, then the backward failed
    model.zero_grad()
    module(x).sum().backward()
    module2, _, _ = PrivacyEngine().make_private(
        module=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=0.1), data_loader=data,
        noise_multiplier=0.0, max_grad_norm=0.3)
    module2(x).sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert PER_EXAMPLE == []


def test_eval_and_no_grad_forwards_do_not_collect():
    model = bnn.Sequential(bnn.Linear(3, 2))
    module, _, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2),
        noise_multiplier=1.0, max_grad_norm=1.0)
    with torch.no_grad():
        module(torch.randn(2, 3))
    module.eval()
    module(torch.randn(2, 3))
    assert PER_EXAMPLE == []


def test_the_private_optimizer_takes_a_learning_rate_scheduler():
    model = bnn.Sequential(bnn.Linear(3, 2))
    module, optimizer, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2),
        noise_multiplier=0.0, max_grad_norm=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    module(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("case", ["mlp", "conv", "rnn", "lstm", "gru"])
def test_a_private_backward_forms_no_unclipped_sum(case, monkeypatch):
    """The layers skip their own BP3/BP4 under clipping (the collector forms the clipped
    sums from δ): every BP3/BP4 routine sees its parameter slots off in a private
    backward, and on in a plain one (so the recorder sees them)."""
    import bptorch.functions.conv as conv
    import bptorch.functions.linear as linear
    import bptorch.functions.recurrent as recurrent

    seen = []

    def recording(module, name, params):  # params: the slots of `need` that are BP3/BP4
        original = getattr(module, name)

        def wrapped(*args):
            need = args[-1] if name != "conv2d_backward" else args[4]
            seen.append(tuple(need[i] for i in params))
            return original(*args)
        monkeypatch.setattr(module, name, wrapped)

    recording(linear, "linear_bwd", (1, 2))
    recording(conv, "conv2d_backward", (1, 2))
    recording(recurrent, "_weight_grads", (1, 2, 3, 4))
    model, x, y = _case(case)
    twin = from_torch_nn(model, strict=False)
    nn.CrossEntropyLoss()(twin(x), y).backward()
    assert seen and all(all(s) for s in seen)  # a plain backward forms every sum
    seen.clear()
    module = _private(twin, x, y, "mean")
    assert seen and not any(any(s) for s in seen)  # a private one none of them
    assert all(p.grad is not None for p in module.parameters())
