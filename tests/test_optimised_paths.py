"""The optimised paths give the numbers of the plain ones: update_mini_batch against
backprop + a hand-written SGD step, backprop against torch autograd across changing
batch sizes (the cached input check, the last partial batch), the book's NumPy loop
against bptorch, and the benchmark suite runs (no timings are asserted)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.reference_numpy import ReferenceNetwork
from bptorch import Network

from helpers import book_sgd_step

NETS = [[7, 5, 3], [6, 5, 4, 3]]
COSTS = ["quadratic", "cross_entropy", "log_likelihood"]


def make(sizes, cost, act="sigmoid", seed=0):
    torch.manual_seed(seed)
    return Network(sizes, activation=act, cost=cost, init="scaled", dtype=torch.float64)


def batch(m, sizes, seed=1, one_hot=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (m,), generator=g)
    if one_hot:
        y = torch.nn.functional.one_hot(y, sizes[-1]).double()
    return x, y


def autograd_grads(net, x, y):
    """∂C/∂θ by torch autograd through the plain ops, for the same batch-mean cost."""
    net.zero_grad()
    with torch.enable_grad():
        net.loss(x, y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    return grads


@pytest.mark.parametrize("sizes", NETS)
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("act", ["sigmoid", "relu"])
def test_update_mini_batch_equals_backprop_plus_sgd(sizes, cost, act):
    """The fused step W ← (1 − ηλ/n)W − η ∂C/∂W, b ← b − η ∂C/∂b, step after step."""
    eta, lmbda, n = 0.7, 3.0, 50
    fused, plain = make(sizes, cost, act), make(sizes, cost, act)
    for step, m in enumerate([9, 9, 4, 9]):  # a partial batch in the middle
        x, y = batch(m, sizes, seed=step)
        fused.update_mini_batch(x, y, eta, lmbda, n)
        plain.zero_grad()
        plain.backprop(x, y)
        book_sgd_step(plain, eta, lmbda, n)
        for p, q in zip(fused.parameters(), plain.parameters()):
            torch.testing.assert_close(p, q)
        for d, e in zip(fused.deltas, plain.deltas):
            torch.testing.assert_close(d, e)


@pytest.mark.parametrize("cost", COSTS)
def test_backprop_across_changing_batches(cost):
    """Batch sizes change (full, partial, full), targets switch between indices and
    one-hot: the cached check must neither go stale nor let a bad batch through."""
    sizes = [6, 5, 4, 3]
    net = make(sizes, cost)
    for step, (m, one_hot) in enumerate([(8, True), (8, True), (3, True), (8, False),
                                         (1, True), (8, True)]):
        x, y = batch(m, sizes, seed=10 + step, one_hot=one_hot)
        ref = autograd_grads(net, x, y)
        with torch.enable_grad():
            c_ref = net.loss(x, y).detach()
        net.zero_grad()
        c = net.backprop(x, y)
        torch.testing.assert_close(c, c_ref)
        for p, g in zip(net.parameters(), ref):
            torch.testing.assert_close(p.grad, g)
        # .grad accumulates, as loss.backward() does
        net.backprop(x, y)
        for p, g in zip(net.parameters(), ref):
            torch.testing.assert_close(p.grad, 2 * g)
    with pytest.raises(ValueError):  # a bad batch after cached good ones
        net.backprop(torch.randn(8, 5, dtype=torch.float64), batch(8, sizes, one_hot=True)[1])
    with pytest.raises(ValueError):
        net.backprop(batch(8, sizes)[0], torch.rand(8, 4, dtype=torch.float64))
    with pytest.raises(TypeError):  # dtype mismatch after the cache was filled
        net.backprop(batch(8, sizes)[0].float(), batch(8, sizes, one_hot=True)[1].float())
    with pytest.raises(ValueError):  # class index out of range
        net.backprop(batch(8, sizes)[0], torch.full((8,), 3))


def test_check_cache_follows_the_parameters_dtype():
    sizes = [6, 5, 3]
    net = make(sizes, "quadratic")
    x, y = batch(4, sizes, one_hot=True)
    net.backprop(x, y)
    net.float()
    with pytest.raises(TypeError):
        net.backprop(x, y)
    net.zero_grad()
    net.backprop(x.float(), y.float())
    assert net.layers[0].weight.grad.dtype == torch.float32


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_numpy_reference_matches_bptorch(cost):
    """The book's per-example loop (column vectors, summed nabla_w) against backprop."""
    sizes = [7, 5, 4, 3]
    net = make(sizes, cost)
    x, y = batch(6, sizes, one_hot=True)
    ref = ReferenceNetwork([l.weight.detach().numpy() for l in net.layers],
                           [l.bias.detach().numpy() for l in net.layers], cost)
    gb, gw = ref.gradients(x.numpy(), y.numpy())
    net.backprop(x, y)
    for layer, b, w in zip(net.layers, gb, gw):
        np.testing.assert_allclose(layer.weight.grad.numpy(), w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad.numpy(), b, rtol=1e-10, atol=1e-12)
    # and one SGD step of each lands on the same weights
    ref.update_mini_batch(x.numpy(), y.numpy(), eta=0.5, lmbda=2.0, n=30)
    net.update_mini_batch(x, y, 0.5, 2.0, 30)
    for layer, b, w in zip(net.layers, ref.biases, ref.weights):
        np.testing.assert_allclose(layer.weight.detach().numpy(), w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bias.detach().numpy(), b.ravel(), rtol=1e-10,
                                   atol=1e-12)


def test_numpy_reference_rejects_a_wrong_gradient():
    """The comparison above can fail: a reference with a dropped σ' disagrees."""
    sizes = [7, 5, 3]
    net = make(sizes, "quadratic")
    x, y = batch(6, sizes, one_hot=True)

    class Broken(ReferenceNetwork):
        def backprop(self, x, y):
            nb, nw = super().backprop(x, y)
            return nb, [2 * w for w in nw]

    ref = Broken([l.weight.detach().numpy() for l in net.layers],
                 [l.bias.detach().numpy() for l in net.layers])
    _, gw = ref.gradients(x.numpy(), y.numpy())
    net.backprop(x, y)
    assert not np.allclose(net.layers[0].weight.grad.numpy(), gw[0])


def test_benchmark_quick_writes_markdown(tmp_path):
    from benchmarks import run

    out = tmp_path / "results.md"
    md = run.main(["--quick", "--no-conv", "--no-compile", "--out", str(out)])  # conv.py has its own tests
    text = out.read_text()
    assert text == md
    assert text.startswith("# bptorch benchmarks (quick)")
    for heading in ("### Targets", "### (a, b) One SGD step", "### (b) Training epochs",
                    "### (c)", "### (d)", "### (e)", "### (f) CUDA"):
        assert heading in text
    # every table row has as many cells as its header
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            n = lines[i - 1].count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == n, lines[j]
                j += 1
