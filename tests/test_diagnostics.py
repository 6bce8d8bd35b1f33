"""bptorch.diagnostics against torch autograd on the same weights, and the ch3 neuron."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import bptorch
from bptorch import diagnostics
from bptorch.diagnostics import FIELDS, layer_stats, measure, record

ACTS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
PRIME_MAX = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0}
N, SIZES = 11, [7, 5, 4, 3]  # non-square everywhere, N != any layer size


def reference(weights, acts, x, upstream):
    """Plain torch autograd on copies of the weights; ``upstream(a_L)`` is the scalar C.

    Returns per layer the four statistics from autograd's own ∂C/∂b, ∂C/∂W, ∂C/∂z
    (retain_grad), and σ'(z) from autograd of σ itself (not from bptorch's prime).
    """
    params = [(w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_())
              for w, b in weights]
    a, zs = x, []
    for (w, b), act in zip(params, acts):
        z = a @ w.T + b
        z.retain_grad()
        zs.append(z)
        a = ACTS[act](z)
    upstream(a).backward()
    out = []
    for (w, b), z, act in zip(params, zs, acts):
        zz = z.detach().requires_grad_()
        (sp,) = torch.autograd.grad(ACTS[act](zz).sum(), zz)  # σ'(z), elementwise
        out.append({
            "speed": b.grad.norm().item(),
            "mean_abs_delta": z.grad.abs().mean().item(),
            "weight_grad_norm": w.grad.norm().item(),
            "saturated_fraction": (sp < 0.01 * PRIME_MAX[act]).double().mean().item(),
        })
    return out


def assert_stats_close(got: dict, want: dict, rtol=1e-9):
    for f in FIELDS:
        assert math.isclose(got[f], want[f], rel_tol=rtol, abs_tol=1e-12), (f, got[f], want[f])


def spread_input(n, n_in, dtype=torch.float64, device="cpu"):
    """Inputs large enough that some sigmoid units saturate, some do not."""
    return (3 * torch.randn(n, n_in, dtype=dtype)).to(device)


def one_hot(labels, k, dtype=torch.float64):
    return torch.nn.functional.one_hot(labels, k).to(dtype)


# -- the explicit engine ---------------------------------------------------------
@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_network_backprop_matches_autograd(act, cost, device):
    net = bptorch.Network(SIZES, act, cost, init="large", dtype=torch.float64).to(device)
    x = spread_input(N, SIZES[0], device=device)
    labels = torch.randint(0, SIZES[-1], (N,), device=device)
    with record(net) as rec:
        net.backprop(x, labels)
    y = one_hot(labels, SIZES[-1]).to(device)
    if cost == "quadratic":
        upstream = lambda a: 0.5 * ((a - y) ** 2).sum() / N
    else:
        upstream = lambda a: -(y * a.log() + (1 - y) * (1 - a).log()).sum() / N
    acts = [act] * (len(SIZES) - 2) + ["sigmoid"]
    want = reference([(l.weight, l.bias) for l in net.layers], acts, x, upstream)
    got = rec.stats()
    assert list(got) == [f"layers.{l}" for l in range(len(net.layers))]
    for l, w in enumerate(want):
        assert_stats_close(got[f"layers.{l}"], w, rtol=1e-7)
    # the sigmoid layers must actually show some saturation for the check to bite
    if act == "sigmoid":
        assert 0 < got["layers.0"]["saturated_fraction"] < 1


def test_update_mini_batch_records_pre_update_gradients():
    net = bptorch.Network(SIZES, "sigmoid", "cross_entropy", dtype=torch.float64)
    x, labels = spread_input(N, SIZES[0]), torch.randint(0, SIZES[-1], (N,))
    with record(net) as probe:
        net.backprop(x, labels)
    with record(net) as rec:
        net.update_mini_batch(x, labels, eta=3.0, lmbda=1.0, n=100)
    for name, s in probe.stats().items():
        assert_stats_close(rec.stats()[name], s, rtol=1e-9)


def test_scale_omitted_is_rejected():
    """The comparison above would catch a recorder that forgot Network's 1/m."""
    net = bptorch.Network(SIZES, "sigmoid", "quadratic", init="large", dtype=torch.float64)
    x, labels = spread_input(N, SIZES[0]), torch.randint(0, SIZES[-1], (N,))
    net.backprop(x, labels)
    y = one_hot(labels, SIZES[-1])
    want = reference([(l.weight, l.bias) for l in net.layers], ["sigmoid"] * 3, x,
                     lambda a: 0.5 * ((a - y) ** 2).sum() / N)
    a_prev = x
    for l, layer in enumerate(net.layers):
        a = layer.activation.fn(torch.addmm(layer.bias, a_prev, layer.weight.t()))
        wrong = dict(zip(FIELDS, layer_stats(layer.activation, net.deltas[l], a, 1.0,
                                             a_prev).tolist()))
        right = dict(zip(FIELDS, layer_stats(layer.activation, net.deltas[l], a, 1 / N,
                                             a_prev).tolist()))
        assert_stats_close(right, want[l])
        with pytest.raises(AssertionError):
            assert_stats_close(wrong, want[l])
        a_prev = a


# -- the autograd path through user-built modules --------------------------------
def named_sequential(dtype=torch.float64):
    return nn.Sequential(OrderedDict(
        hidden=bptorch.nn.Dense(7, 5, "tanh", dtype=dtype),
        out=bptorch.nn.Dense(5, 3, "sigmoid", dtype=dtype),
    ))


def test_sequential_random_upstream_matches_autograd(device):
    model = named_sequential().to(device)
    with torch.no_grad():  # large weights: some saturation in "out"
        model.out.weight.mul_(10)
    x = spread_input(N, 7, device=device)
    g = torch.randn(N, 3, dtype=torch.float64, device=device)
    with record(model) as rec:
        model(x).backward(g)
    want = reference([(model.hidden.weight, model.hidden.bias),
                      (model.out.weight, model.out.bias)],
                     ["tanh", "sigmoid"], x, lambda a: (a * g).sum())
    got = rec.stats()
    assert list(got) == ["hidden", "out"]
    assert_stats_close(got["hidden"], want[0])
    assert_stats_close(got["out"], want[1])
    assert 0 < got["out"]["saturated_fraction"] < 1


def test_sequential_with_cost_module_and_separate_activation():
    """Linear + Sigmoid modules: the activation reports speed = ‖∂C/∂b‖ of the Linear
    before it, and NaN for ‖∂C/∂W‖, which it cannot see."""
    model = nn.Sequential(OrderedDict(
        lin=bptorch.nn.Linear(7, 5, dtype=torch.float64),
        act=bptorch.nn.Sigmoid(),
        out=bptorch.nn.Dense(5, 3, "sigmoid", dtype=torch.float64),
    ))
    cost = bptorch.nn.CrossEntropyCost()
    x, y = spread_input(N, 7), torch.rand(N, 3, dtype=torch.float64)
    with record(model) as rec:
        cost(model(x), y).backward()
    n = lambda a: -(y * a.log() + (1 - y) * (1 - a).log()).sum() / N
    want = reference([(model.lin.weight, model.lin.bias), (model.out.weight, model.out.bias)],
                     ["sigmoid", "sigmoid"], x, n)
    got = rec.stats()
    assert list(got) == ["act", "out"]
    assert math.isnan(got["act"]["weight_grad_norm"])
    got["act"]["weight_grad_norm"] = want[0]["weight_grad_norm"]
    assert_stats_close(got["act"], want[0])
    assert_stats_close(got["out"], want[1])
    assert math.isclose(got["act"]["speed"], model.lin.bias.grad.norm().item(), rel_tol=1e-9)


def test_keep_stores_batch_cost_delta():
    model = named_sequential()
    x, g = spread_input(N, 7), torch.randn(N, 3, dtype=torch.float64)
    with record(model, keep=True) as rec:
        model(x).backward(g)
    # reference ∂C/∂z of the output layer: g ⊙ σ'(z)
    z = x @ model.hidden.weight.T.detach() + model.hidden.bias.detach()
    z2 = torch.tanh(z) @ model.out.weight.T.detach() + model.out.bias.detach()
    s = torch.sigmoid(z2)
    torch.testing.assert_close(rec.deltas["out"][0], g * s * (1 - s))
    torch.testing.assert_close(rec.primes["hidden"][0], 1 - torch.tanh(z) ** 2)


def test_mean_over_calls_and_history():
    model = named_sequential()
    with record(model) as rec:
        for _ in range(3):
            model(spread_input(N, 7)).backward(torch.randn(N, 3, dtype=torch.float64))
    assert rec.calls("hidden") == 3
    hist = rec.history()["hidden"]
    assert all(len(v) == 3 for v in hist.values())
    mean = rec.stats("mean")["hidden"]
    for f in FIELDS:
        assert math.isclose(mean[f], sum(hist[f]) / 3, rel_tol=1e-12)
    assert rec.stats()["hidden"]["speed"] == hist["speed"][-1]
    with pytest.raises(ValueError):
        rec.stats("median")


def test_only_reduced_numbers_are_kept():
    model = named_sequential()
    with record(model) as rec:
        model(spread_input(N, 7)).backward(torch.randn(N, 3, dtype=torch.float64))
    assert not rec.deltas and not rec.primes
    assert all(r.shape == (len(FIELDS),) for rows in rec._rows.values() for r in rows)


# -- on/off, nesting, names ------------------------------------------------------
def test_inactive_records_nothing(monkeypatch):
    def boom(*args, **kw):
        raise AssertionError("diagnostics ran while inactive")

    monkeypatch.setattr(diagnostics, "layer_stats", boom)
    monkeypatch.setattr(diagnostics.Recorder, "add", boom)
    assert not diagnostics.active()
    model = named_sequential()
    model(spread_input(N, 7)).backward(torch.randn(N, 3, dtype=torch.float64))
    net = bptorch.Network(SIZES)
    net.backprop(torch.rand(N, 7), torch.randint(0, 3, (N,)))
    net.update_mini_batch(torch.rand(N, 7), torch.randint(0, 3, (N,)), 0.1)
    assert diagnostics._recorder is None
    assert not any(hasattr(m, "_diag_name") for m in model.modules())


def test_the_boom_check_can_fail(monkeypatch):
    """The test above would notice a recorder running: prove it with one active."""
    monkeypatch.setattr(diagnostics.Recorder, "add",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    model = named_sequential()
    with pytest.raises(AssertionError, match="ran"), record(model):
        model(spread_input(N, 7)).backward(torch.randn(N, 3, dtype=torch.float64))


def test_nested_and_after_exit():
    model = named_sequential()
    run = lambda: model(spread_input(N, 7)).backward(torch.randn(N, 3, dtype=torch.float64))
    with record(model) as outer:
        run()
        with record(model) as inner:
            run()
        assert diagnostics._recorder is outer
        run()
    assert diagnostics._recorder is None
    assert outer.calls("out") == 2 and inner.calls("out") == 1
    before = outer.stats()
    run()  # after exit: nothing more recorded
    assert outer.calls("out") == 2 and outer.stats() == before
    assert not any(hasattr(m, "_diag_name") for m in model.modules())  # names restored


def test_names_restored_and_fallbacks():
    net = bptorch.Network([6, 4, 3])
    wrapper = nn.Sequential(OrderedDict(net=net))
    with record(wrapper) as rec:
        net.backprop(torch.rand(5, 6), torch.randint(0, 3, (5,)))
    assert list(rec.stats()) == ["net.layers.0", "net.layers.1"]
    assert net.layers[0]._diag_name == "layers.0"  # Network's own label is back
    dense = bptorch.nn.Dense(6, 3)
    with record(dense) as rec:  # the model is the layer itself: no name, falls back
        dense(torch.rand(5, 6)).sum().backward()
    with record() as anon:
        dense(torch.rand(5, 6)).sum().backward()
    assert list(rec.stats()) == ["layer0"] and list(anon.stats()) == ["unnamed"]


def test_double_backward_still_works():
    model = named_sequential()
    x = spread_input(N, 7).requires_grad_()
    with record(model) as rec:
        (gx,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        gx.sum().backward()
    assert rec.calls("out") >= 1 and x.grad is not None


# -- measure ---------------------------------------------------------------------
def test_measure_restores_grads_and_matches_record():
    net = bptorch.Network(SIZES, "sigmoid", "cross_entropy", dtype=torch.float64)
    x, labels = spread_input(N, SIZES[0]), torch.randint(0, SIZES[-1], (N,))
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in net.parameters()]
    copies = [g.clone() for g in grads]
    params = [p.detach().clone() for p in net.parameters()]
    got = measure(net, x, labels)
    for p, g, c, q in zip(net.parameters(), grads, copies, params):
        assert p.grad is g and torch.equal(g, c) and torch.equal(p, q)
    net2 = bptorch.Network(SIZES, "sigmoid", "cross_entropy", dtype=torch.float64)
    net2.load_state_dict(net.state_dict())
    with record(net2) as rec:
        net2.backprop(x, labels)
    assert got == rec.stats()
    assert all(isinstance(v, float) for s in got.values() for v in s.values())
    assert set(got["layers.0"]) == set(FIELDS)


# -- chapter 3's single neuron ---------------------------------------------------
def test_saturation_experiment_matches_the_book():
    from experiments.saturation import train_neuron

    quad = train_neuron("quadratic", 2.0, 2.0, 0.15, 300)
    assert quad["output"][0] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())
    assert quad["output"][150] > 0.9  # stuck on the plateau
    ce = train_neuron("cross_entropy", 2.0, 2.0, 0.15, 300)
    assert ce["cost_value"][50] < 0.15  # learns fast from the same start
    easy = train_neuron("quadratic", 0.6, 0.9, 0.15, 300)
    assert easy["output"][300] < 0.1 and len(easy["output"]) == 301


# -- chapter 5's speeds ----------------------------------------------------------
def test_vanishing_speeds_are_bias_gradient_norms_of_the_mean_cost():
    """Row j of train_speeds is ‖∂C/∂b^l‖ before step j: check rows 0 and 1 by hand."""
    from experiments.vanishing import initial_speeds, train_speeds

    torch.manual_seed(3)
    net = bptorch.Network([20, 6, 5, 3], "sigmoid", "cross_entropy", dtype=torch.float64)
    x, labels = torch.rand(40, 20, dtype=torch.float64), torch.randint(0, 3, (40,))

    def by_hand():
        net.zero_grad(set_to_none=True)
        net.loss(x, labels).backward()  # autograd of the mean cost
        out = [net.layers[l].bias.grad.norm().item() for l in range(2)]
        net.zero_grad(set_to_none=True)
        return out

    start = by_hand()
    initial, per_image = initial_speeds(net, x, labels)
    assert initial == pytest.approx(start, rel=1e-9)
    assert per_image[0] > initial[0]  # mean of norms ≥ norm of mean (triangle inequality)
    probe = bptorch.Network([20, 6, 5, 3], "sigmoid", "cross_entropy", dtype=torch.float64)
    probe.load_state_dict(net.state_dict())
    probe.update_mini_batch(x, labels, 0.1, 5.0, 40)
    net_after = probe
    speed = train_speeds(net, x, labels, 2, 0.1, 5.0)
    assert len(speed) == 3 and speed[0] == pytest.approx(start, rel=1e-9)
    for p, q in zip(net_after.parameters(), net.parameters()):
        assert not torch.equal(p, q)  # net took two steps, probe one
    net.load_state_dict(net_after.state_dict())
    assert speed[1] == pytest.approx(by_hand(), rel=1e-9)
