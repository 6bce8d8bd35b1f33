"""L1 regularisation (the book's chapter 3): one step of the explicit engine with ``l1``
is one SGD step on the penalised cost C = C₀ + (λ₁/n) Σ|w| (+ (λ/2n) Σw²), by torch
autograd over plain torch ops in float64; broken copies of the update fail the same check;
the three engines of experiments.mnist agree with --l1."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bptorch import Network
from experiments import mnist as exp

COSTS = ["quadratic", "cross_entropy", "log_likelihood"]
SIZES = [7, 5, 4, 3]  # non-square at every layer
ETA, N = 0.7, 40  # n: training-set size, m = 6 rows in the batch


def make(cost: str):
    """A float64 net whose weights are all at least 0.05 from sgn's kink at 0."""
    torch.manual_seed(0)
    net = Network(SIZES, "sigmoid", cost, "scaled", dtype=torch.float64)
    with torch.no_grad():
        for layer in net.layers:
            w = layer.weight
            w.copy_(torch.where(w >= 0, w + 0.05, w - 0.05))
    x = torch.randn(6, SIZES[0], dtype=torch.float64)
    y = torch.randint(0, SIZES[-1], (6,))
    return net, x, y


def penalised_cost(net: Network, x, y, lmbda: float, l1: float):
    """C₀ (batch mean, plain torch ops) + (λ₁/n) Σ|W| + (λ/2n) Σ‖W‖², weights only."""
    a = x
    for layer in net.layers:
        z = F.linear(a, layer.weight, layer.bias)
        a = torch.softmax(z, -1) if layer.activation.name == "softmax" else torch.sigmoid(z)
    t = F.one_hot(y, a.shape[1]).to(a.dtype)
    if net.cost == "quadratic":
        c0 = 0.5 * ((a - t) ** 2).sum(1).mean()
    elif net.cost == "cross_entropy":
        c0 = -(t * a.log() + (1 - t) * (1 - a).log()).sum(1).mean()
    else:
        c0 = -(t * a.log()).sum(1).mean()
    weights = [layer.weight for layer in net.layers]
    return (c0 + l1 / N * sum(w.abs().sum() for w in weights)
            + lmbda / (2 * N) * sum(w.pow(2).sum() for w in weights))


def sgd_on_penalised_cost(net: Network, x, y, lmbda: float, l1: float) -> list:
    """p − η ∂C/∂p for every parameter, by torch autograd of ``penalised_cost``."""
    params = list(net.parameters())
    grads = torch.autograd.grad(penalised_cost(net, x, y, lmbda, l1), params)
    return [(p - ETA * g).detach() for p, g in zip(params, grads)]


def assert_one_sgd_step(after: Network, before: Network, x, y, lmbda, l1) -> None:
    for got, want in zip(after.parameters(), sgd_on_penalised_cost(before, x, y, lmbda, l1)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("lmbda, l1", [(0.0, 3.0), (5.0, 3.0)])
def test_update_mini_batch_is_sgd_on_the_l1_penalised_cost(cost, lmbda, l1):
    net, x, y = make(cost)
    before = copy.deepcopy(net)
    net.update_mini_batch(x, y, ETA, lmbda, N, l1=l1)
    assert_one_sgd_step(net, before, x, y, lmbda, l1)
    moved = copy.deepcopy(before)  # and the L1 term is large enough to matter here
    moved.update_mini_batch(x, y, ETA, lmbda, N)
    assert (moved.layers[0].weight - net.layers[0].weight).abs().min() > 1e-2


def _broken_update(net: Network, x, y, lmbda, l1, bug: str) -> None:
    """The book's L1 update written out on top of backprop, with one planted bug."""
    net.backprop(x, y)
    with torch.no_grad():
        for layer in net.layers:
            w = layer.weight
            l1_term = {"sign": -ETA * l1 / N * torch.sign(w), "no /n": ETA * l1 * torch.sign(w),
                       "abs": ETA * l1 / N * w.abs()}[bug]
            w.mul_(1 - ETA * lmbda / N).sub_(ETA * w.grad).sub_(l1_term)
            layer.bias.sub_(ETA * layer.bias.grad)


@pytest.mark.parametrize("bug", ["sign", "no /n", "abs"])
def test_the_check_rejects_a_broken_l1_update(bug):
    net, x, y = make("cross_entropy")
    before = copy.deepcopy(net)
    _broken_update(net, x, y, 5.0, 3.0, bug)
    with pytest.raises(AssertionError):
        assert_one_sgd_step(net, before, x, y, 5.0, 3.0)


def test_l1_takes_sgn_of_zero_as_zero():
    """The L1 step alone is −(ηλ₁/n) sgn(W) of the W before the step; a zero weight gets none."""
    net, x, y = make("cross_entropy")
    with torch.no_grad():
        net.layers[1].weight[0, :2] = 0.0
    w0 = [layer.weight.clone() for layer in net.layers]
    plain = copy.deepcopy(net)
    net.update_mini_batch(x, y, ETA, 0.0, N, l1=3.0)
    plain.update_mini_batch(x, y, ETA, 0.0, N)
    for w, p, before in zip(net.layers, plain.layers, w0):
        torch.testing.assert_close(w.weight - p.weight, -ETA * 3.0 / N * torch.sign(before),
                                   rtol=0, atol=1e-14)
    assert torch.equal(net.layers[1].weight[0, :2], plain.layers[1].weight[0, :2])
    for w, p in zip(net.layers, plain.layers):
        assert torch.equal(w.bias, p.bias)  # L1 leaves the biases alone


def test_l1_needs_n():
    net, x, y = make("quadratic")
    with pytest.raises(ValueError, match="needs n"):
        net.update_mini_batch(x, y, ETA, l1=1.0)


def test_engines_agree_with_l1():
    """explicit, autograd (+ add_l1_grad) and native take the same L1 steps."""
    torch.manual_seed(0)
    x = torch.rand(60, 12, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 4, (60,)), 4).to(torch.float64)
    explicit = Network([12, 8, 4], "sigmoid", "cross_entropy", "scaled", dtype=torch.float64)
    autograd, native = copy.deepcopy(explicit), exp.native_model(copy.deepcopy(explicit))
    start = copy.deepcopy(explicit.state_dict())
    for model, engine in ((explicit, "explicit"), (autograd, "autograd"), (native, "native")):
        opt = exp.sgd(model, 0.5, 5.0, 60) if engine != "explicit" else None
        exp.train_epoch(model, engine, x, y, 10, 0.5, 5.0, torch.Generator().manual_seed(1),
                        opt, l1=2.0)
    no_l1 = copy.deepcopy(Network([12, 8, 4], "sigmoid", "cross_entropy", "scaled",
                                  dtype=torch.float64))
    no_l1.load_state_dict(start)
    exp.train_epoch(no_l1, "explicit", x, y, 10, 0.5, 5.0, torch.Generator().manual_seed(1))
    want = explicit.state_dict()
    for got in (autograd.state_dict(), exp._from_native_keys(native.state_dict())):
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-10)
    assert (want["layers.0.weight"] - no_l1.state_dict()["layers.0.weight"]).abs().max() > 1e-2


def test_mnist_cli_records_l1(mnist, tmp_path):
    out = exp.main(["--preset", "ch3", "--l1", "2.0", "--epochs", "1", "--train-size", "200",
                    "--threads", "1", "--no-progress"])
    assert out["config"]["l1"] == 2.0
    with pytest.raises(SystemExit):
        exp.main(["--l1", "2.0", "--compile", "2", "--epochs", "0"])


def test_summarize_keeps_l1_runs_apart_from_their_preset():
    from experiments.summarize import summarize

    def run(l1):
        return {"config": {"preset": "ch3", "engine": "explicit", "seed": 1, "l1": l1,
                           "lmbda": 0.0 if l1 else 5.0},
                "history": {"test_accuracy": [0.97], "validation_accuracy": [0.97],
                            "training_cost": [0.5], "epoch_seconds": [2.0]}}

    rows = summarize([run(0.5), run(0.0)]).splitlines()
    assert len(rows) == 4
    assert rows[2].startswith("| ch3 | explicit | 1 |") and rows[2].endswith("| 97.92% |")
    assert rows[3].startswith("| ch3 + L1 λ₁ = 0.5, λ = 0 | explicit | 1 |")
    assert rows[3].endswith("| — |")  # the book gives no L1 figure
