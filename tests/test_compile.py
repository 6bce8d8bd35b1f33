"""torch.compile over bptorch: the autograd path (nn.Sequential of Dense + cost) and the
explicit engine (Network.update_mini_batch) give the same numbers as eager.

The autograd path compiles with ``fullgraph=True``: no graph break.
The correctness tests use backend="aot_eager" (Dynamo + AOTAutograd, no code generation),
which keeps this file fast; one test runs inductor, the default backend, on the fused
engine. Graph breaks are counted with torch._dynamo.explain.
"""
from __future__ import annotations

import pytest
import torch

import bptorch
import bptorch.nn as bnn

torch._dynamo.config.cache_size_limit = 64


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model():
    return torch.nn.Sequential(bnn.Dense(12, 9, "tanh"), bnn.Dense(9, 5, "sigmoid"))


def _train(model, steps, x, y, cost):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for i in range(steps):
        loss = cost(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_compiled_model_trains_like_eager():
    x, y = torch.randn(3, 8, 12), torch.randint(0, 5, (3, 8))
    eager = _model()
    compiled_src = _model()
    compiled_src.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_src, backend="aot_eager")
    cost = bnn.CrossEntropyCost()
    l_eager = _train(eager, 3, x, y, cost)
    l_comp = _train(compiled, 3, x, y, cost)
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-6, atol=1e-6)
    for p, q in zip(compiled_src.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def _mlp():
    return torch.nn.Sequential(
        bnn.Dense(12, 9, "tanh"), bnn.Linear(9, 8), bnn.LeakyReLU(0.1), bnn.Dense(8, 7, "gelu"),
        bnn.Linear(7, 5),
    )


def _convnet():
    return torch.nn.Sequential(
        bnn.Conv2d(1, 3, 3, padding=1), bnn.ReLU(), bnn.MaxPool2d(2), bnn.Dropout(0.25),
        bnn.Conv2d(3, 4, 3, groups=1, dilation=1), bnn.Sigmoid(), bnn.Flatten(),
        bnn.Linear(4 * 2 * 2, 5),
    )


CASES = {
    "mlp-loglikelihood": (_mlp, lambda: torch.randn(8, 12), bnn.LogLikelihoodCost(logits=True)),
    "mlp-crossentropy": (_mlp, lambda: torch.randn(8, 12), bnn.CrossEntropyCost(logits=True)),
    "conv-quadratic": (_convnet, lambda: torch.randn(6, 1, 8, 8), bnn.QuadraticCost()),
}


@pytest.mark.parametrize("case", CASES)
def test_fullgraph_compile_of_a_training_loss(case):
    """``torch.compile(fullgraph=True)`` of a loss through bptorch.nn modules and a bptorch
    cost compiles with grads enabled (no graph break: BPFunction hides each ``jvp`` from
    Dynamo) and gives eager's loss and gradients. Forward-mode AD keeps working in eager
    mode: tests/test_torch_func.py."""
    make, make_x, cost = CASES[case]
    eager = make()
    compiled_src = make()
    compiled_src.load_state_dict(eager.state_dict())
    x = make_x()
    y = torch.randint(0, 5, (x.shape[0],)) if case != "conv-quadratic" else torch.rand(6, 5)

    def loss_fn(model, x, y):
        return cost(model(x), y)

    assert torch._dynamo.explain(loss_fn)(compiled_src, x, y).graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    l_comp = compiled(compiled_src, x, y)
    l_comp.backward()
    torch.manual_seed(3)
    l_eager = loss_fn(eager, x, y)
    l_eager.backward()
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(compiled_src.named_parameters(), eager.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_layer_norm_compiles_once_for_any_number_of_rows():
    """LayerNorm's backward has no Python loop over rows under compile (its CPU blocks are
    eager only), so new row counts reuse the dynamic-shape graph: at most two compiles
    (the first shape, then the dynamic one) for four row counts, gradients as eager's."""
    from torch._dynamo.testing import CompileCounterWithBackend

    norm = bnn.LayerNorm(16)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x: norm(x).pow(2).sum(), backend=counter)
    for rows in (3, 5, 9, 17):
        x = torch.randn(rows, 16, requires_grad=True)
        (g,) = torch.autograd.grad(compiled(x), x)
        (g_eager,) = torch.autograd.grad(norm(x).pow(2).sum(), x)
        torch.testing.assert_close(g, g_eager)
    assert counter.frame_count <= 2


def test_inference_is_one_graph():
    model, x = _model(), torch.randn(8, 12)
    with torch.no_grad():
        assert torch._dynamo.explain(model)(x).graph_break_count == 0


def _step_data(n=4, m=10):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, m, 20, generator=g), torch.randint(0, 10, (n, m), generator=g)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_update_mini_batch_matches_eager(backend):
    x, y = _step_data()
    eager = bptorch.Network([20, 15, 10], cost="cross_entropy")
    comp = bptorch.Network([20, 15, 10], cost="cross_entropy")
    comp.load_state_dict(eager.state_dict())
    step = torch.compile(comp.update_mini_batch, backend=backend)
    for i in range(len(x)):
        eager.update_mini_batch(x[i], y[i], eta=0.5, lmbda=5.0, n=1000)
        step(x[i], y[i], eta=0.5, lmbda=5.0, n=1000)
    for p, q in zip(comp.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert torch._dynamo.explain(eager.update_mini_batch)(
        x[0], y[0], eta=0.5, lmbda=5.0, n=1000).graph_break_count == 0


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_sgd_steps_equal_eager_steps(backend):
    """bptorch.compile.sgd_steps: k compiled steps = k eager update_mini_batch calls."""
    from bptorch.compile import sgd_steps

    x, y = _step_data(n=6, m=10)
    eager = bptorch.Network([20, 15, 10], cost="cross_entropy")
    comp = bptorch.Network([20, 15, 10], cost="cross_entropy")
    comp.load_state_dict(eager.state_dict())
    run = sgd_steps(comp, steps=3, backend=backend)
    for chunk in (slice(0, 3), slice(3, 6)):
        run(x[chunk], y[chunk], 0.5, 5.0, 1000)
    for i in range(6):
        eager.update_mini_batch(x[i], y[i], eta=0.5, lmbda=5.0, n=1000)
    tol = dict(rtol=0, atol=0) if backend == "aot_eager" else dict(rtol=1e-5, atol=1e-6)
    for p, q in zip(comp.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, **tol)
    with pytest.raises(ValueError, match="expected 3 stacked mini-batches"):
        run(x[:2], y[:2], 0.5, 5.0, 1000)
