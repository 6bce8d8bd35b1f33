"""Shared weights (a parameter used by several layer calls: tied, or a layer applied twice)
in private training and in the first-order quantities, against a float64 per-example
reference from torch.func (vmap of grad, the clipping done by hand).

Example n's gradient of a shared parameter is the sum over its uses, g_n = Σ_u g_n^u, so
its squared norm has cross terms, ‖g_n‖² = Σ_u ‖g_n^u‖² + 2 Σ_{u<v} ⟨g_n^u, g_n^v⟩, and
its clipped sum is Σ_u Σ_n c_n g_n^u with one c_n for all uses."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import bptorch.nn as bnn
import bptorch.per_example as per_example
from bptorch.extensions import collect
from bptorch.functions.base import PER_EXAMPLE
from bptorch.privacy import ClippingCollector, PrivacyEngine
from helpers import clip_at_median

D = torch.float64
N = 5


class Twice(nn.Module):
    """One Linear applied twice (tanh between), then a head: (N, d) or (N, T, d)."""

    def __init__(self, ns, sequence: bool) -> None:
        super().__init__()
        self.inner, self.head, self.sequence = ns.Linear(4, 4), ns.Linear(4, 3), sequence

    def forward(self, x):
        h = self.inner(torch.tanh(self.inner(x)))
        return self.head(h.mean(1) if self.sequence else h)


class Tied(nn.Module):
    """A tiny language model whose output layer's weight is its embedding table (tied):
    the table is used by an Embedding and by a Linear at every position."""

    def __init__(self, ns) -> None:
        super().__init__()
        self.emb, self.out = ns.Embedding(7, 5), ns.Linear(5, 7)
        self.out.weight = self.emb.weight

    def forward(self, i):
        return self.out(torch.tanh(self.emb(i))).mean(1)


class ConvTwice(nn.Module):
    """One Conv2d (3 → 3, padding 1) applied twice, then a Linear head."""

    def __init__(self, ns) -> None:
        super().__init__()
        self.conv, self.head = ns.Conv2d(3, 3, 3, padding=1), ns.Linear(3 * 4 * 5, 2)

    def forward(self, x):
        return self.head(self.conv(torch.tanh(self.conv(x))).flatten(1))


def _case(name: str):
    """(torch model, its bptorch twin with the same weights and ties, x, y)."""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(5)
    if name in ("twice", "twice_sequence"):
        seq = name == "twice_sequence"
        model, twin = Twice(nn, seq), Twice(bnn, seq)
        x = torch.randn(N, *((3,) if seq else ()), 4, generator=g, dtype=D)
        y = torch.randint(0, 3, (N,), generator=g)
    elif name == "tied":
        model, twin = Tied(nn), Tied(bnn)
        x, y = torch.randint(0, 7, (N, 3), generator=g), torch.randint(0, 7, (N,), generator=g)
    else:
        model, twin = ConvTwice(nn), ConvTwice(bnn)
        x = torch.randn(N, 3, 4, 5, generator=g, dtype=D)
        y = torch.randint(0, 2, (N,), generator=g)
    model, twin = model.to(D), twin.to(D)
    with torch.no_grad():  # weights away from the init's symmetries: non-zero biases
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D) * 0.7)
    twin.load_state_dict(model.state_dict())
    return model, twin, x, y


def _per_example(model, x, y):
    """{name: g_n (N, *shape)}: each example's own gradient (a summed loss), torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters()}  # tied: once

    def loss(params, xi, yi):
        out = functional_call(model, params, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0), reduction="sum")
    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


CASES = ["twice", "twice_sequence", "tied", "conv_twice"]


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_private_clipping_of_shared_weights(case, ghost, monkeypatch):
    """‖g_n‖ over all parameters with each shared one's g_n summed over its uses, and
    .grad = Σ_n c_n g_n, c_n = min(1, C/‖g_n‖), against torch.func's per-example
    gradients clipped by hand; C the median norm, so both kinds of c_n occur. Both forms
    of the cross terms: the Gram form (ghost) and the formed g_n."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    model, twin, x, y = _case(case)
    ref = _per_example(model, x, y)
    norms, bound, clip = clip_at_median(ref)
    collector = ClippingCollector(twin, bound, "sum")
    collector.install()
    nn.functional.cross_entropy(twin(x), y, reduction="sum").backward()
    assert PER_EXAMPLE == []
    torch.testing.assert_close(collector.per_sample_norms, norms)
    names = [name for name, _ in twin.named_parameters()]
    assert names == list(ref)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p.grad, torch.tensordot(clip, ref[name], 1), msg=name)


def test_cross_terms_matter():
    """The cross terms are not small here: leaving them out (the per-use norms summed)
    gives other norms, so the test above can tell."""
    model, _twin, x, y = _case("twice")
    ref = _per_example(model, x, y)
    full = ref["inner.weight"].flatten(1).square().sum(1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    assert not torch.allclose(full, params["inner.weight"].new_zeros(N))
    # the two uses' own gradients, from a model whose second use has its own copy
    split = Twice(nn, False).to(D)
    split.load_state_dict(model.state_dict())

    def loss(w1, w2, xi, yi):
        h = nn.functional.linear(xi, w1, params["inner.bias"])
        h = nn.functional.linear(torch.tanh(h), w2, params["inner.bias"])
        out = nn.functional.linear(h, params["head.weight"], params["head.bias"])
        return nn.functional.cross_entropy(out.unsqueeze(0), yi.unsqueeze(0), reduction="sum")
    g1, g2 = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        params["inner.weight"], params["inner.weight"], x, y)
    torch.testing.assert_close(g1 + g2, ref["inner.weight"])
    apart = g1.flatten(1).square().sum(1) + g2.flatten(1).square().sum(1)
    assert (apart - full).abs().max() > 1e-3 * full.max()


def test_private_step_through_the_engine_with_a_layer_applied_twice():
    """The whole private step (PrivacyEngine, noise 0, mean loss) on a layer applied twice:
    the parameters move by −lr · Σ_n c_n g_n / B_expected, g_n the examples' own."""
    model, twin, x, y = _case("twice")
    ref = _per_example(model, x, y)
    norms = torch.stack([g.flatten(1).square().sum(1) for g in ref.values()]).sum(0).sqrt()
    bound = float(norms.median())
    clip = (bound / (norms + 1e-6)).clamp(max=1.0)
    before = {name: p.detach().clone() for name, p in twin.named_parameters()}
    data = torch.utils.data.TensorDataset(torch.zeros(10, 1))
    module, optimizer, _ = PrivacyEngine().make_private(
        module=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=0.3),
        data_loader=torch.utils.data.DataLoader(data, batch_size=5), noise_multiplier=0.0,
        max_grad_norm=bound, poisson_sampling=False)
    optimizer.zero_grad()
    nn.functional.cross_entropy(module(x), y).backward()
    optimizer.step()
    for name, p in twin.named_parameters():
        step = torch.tensordot(clip, ref[name], 1) / 5  # expected batch 10 / 2 = 5
        torch.testing.assert_close(p.detach(), before[name] - 0.3 * step, msg=name)


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_first_order_quantities_of_shared_weights(case, ghost, monkeypatch):
    """batch_l2, sum_grad_squared and variance of shared weights without grad_batch: the
    per-example gradient summed over the uses (known to be shared from the tie, or from
    the module called twice inside the block), under a mean loss (BackPACK's 1/N)."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    model, twin, x, y = _case(case)
    ref = {k: g / N for k, g in _per_example(model, x, y).items()}
    with collect(twin, "batch_l2", "sum_grad_squared", "variance"):
        nn.functional.cross_entropy(twin(x), y).backward()
    for name, p in twin.named_parameters():
        g = ref[name]
        sgs = g.square().sum(0)
        torch.testing.assert_close(p.grad, g.sum(0), msg=name)
        torch.testing.assert_close(p.batch_l2, g.flatten(1).square().sum(1), msg=name)
        torch.testing.assert_close(p.sum_grad_squared, sgs, msg=name)
        torch.testing.assert_close(p.variance, sgs / N - (g.sum(0) / N) ** 2, msg=name)
        assert not hasattr(p, "grad_batch")  # formed for the sum, not left on p


def test_a_shared_use_the_collection_did_not_see_coming_is_an_error():
    """A layer applied twice by a forward run before the block: the collection cannot
    know it is shared until its second use, when the first use's δ is gone; it says so."""
    _model, twin, x, y = _case("twice")
    loss = nn.functional.cross_entropy(twin(x), y)
    with pytest.raises(RuntimeError, match="shared weights.*inside the `with collect"):
        with collect(twin, "batch_l2"):
            loss.backward()
    assert PER_EXAMPLE == []


@pytest.mark.parametrize("case", CASES)
def test_private_step_of_shared_weights_equals_opacus(case):
    """Opacus 1.6 accumulates a shared parameter's per-sample gradients over its uses
    (hooks); a private step with noise 0 from the same batch and weights is the same."""
    opacus = pytest.importorskip("opacus")
    model, twin, x, y = _case(case)
    data = torch.utils.data.TensorDataset(torch.zeros(10, 1))
    bound = 0.5 * float(torch.stack([g.flatten(1).square().sum(1) for g in
                                     _per_example(model, x, y).values()]).sum(0).sqrt().max())
    stepped = []
    for engine, net in ((opacus.PrivacyEngine(), model), (PrivacyEngine(), twin)):
        module, optimizer, _ = engine.make_private(
            module=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.3),
            data_loader=torch.utils.data.DataLoader(data, batch_size=5),
            noise_multiplier=0.0, max_grad_norm=bound, poisson_sampling=False)
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()
        stepped.append(dict(net.named_parameters()))
    for name, p in stepped[1].items():
        torch.testing.assert_close(p, stepped[0][name], msg=name)
