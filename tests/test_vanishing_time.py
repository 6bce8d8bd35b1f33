"""``bptorch.diagnostics.time_gradients``: ‖∂C/∂h_t‖ per time step through bptorch's own
backward (BP2 through time), checked against torch.nn's cells (RNNCell, LSTMCell, GRUCell)
unrolled by hand with autograd, at non-square sizes, 1 and 2 layers, batch_first both ways,
soft (not one-hot) targets; plus the errors and the experiment script's smoke run."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bptorch import nn as bnn
from bptorch.diagnostics import time_gradients
from bptorch.functions import recurrent as rec

from helpers import soft_targets

F64 = torch.float64
T, N, H_IN, H, K = 6, 5, 3, 4, 7  # non-square everywhere


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cells(rnn: nn.Module, kind: str) -> list[nn.Module]:
    """torch.nn cells holding ``rnn``'s weights, one per layer."""
    cells = []
    for layer in range(rnn.num_layers):
        n_in = rnn.input_size if layer == 0 else rnn.hidden_size
        if kind == "lstm":
            cell = nn.LSTMCell(n_in, rnn.hidden_size, dtype=F64)
        elif kind == "gru":
            cell = nn.GRUCell(n_in, rnn.hidden_size, dtype=F64)
        else:
            cell = nn.RNNCell(n_in, rnn.hidden_size, nonlinearity=kind, dtype=F64)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(rnn, f"{name}_l{layer}"))
        cells.append(cell)
    return cells


def _reference(rnn, kind, x, readout, y) -> torch.Tensor:
    """(T, N, H) ∂C/∂h_t of the last layer, torch.nn cells unrolled, h_t.retain_grad()."""
    cells = _cells(rnn, kind)
    xs = x.transpose(0, 1) if rnn.batch_first else x  # (T, N, H_in)
    h = [torch.zeros(N, H, dtype=F64) for _ in cells]
    c = [torch.zeros(N, H, dtype=F64) for _ in cells]
    tops = []
    for t in range(T):
        inp = xs[t]
        for layer, cell in enumerate(cells):
            if kind == "lstm":
                h[layer], c[layer] = cell(inp, (h[layer], c[layer]))
            else:
                h[layer] = cell(inp, h[layer])
            inp = h[layer]
        h[-1].retain_grad()
        tops.append(h[-1])
    logp = torch.log_softmax(readout(tops[-1]), -1)
    (-(y * logp).sum(1).mean()).backward()  # the log-likelihood cost, mean over the batch
    return torch.stack([t.grad for t in tops])


MODELS = {"tanh": lambda **kw: bnn.RNN(H_IN, H, nonlinearity="tanh", **kw),
          "relu": lambda **kw: bnn.RNN(H_IN, H, nonlinearity="relu", **kw),
          "lstm": lambda **kw: bnn.LSTM(H_IN, H, **kw),
          "gru": lambda **kw: bnn.GRU(H_IN, H, **kw)}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch_cells_unrolled(kind, num_layers, batch_first):
    rnn = MODELS[kind](num_layers=num_layers, batch_first=batch_first, dtype=F64)
    with torch.no_grad():  # larger weights than the default init: the norms differ more
        for p in rnn.parameters():
            p.mul_(2.5)
    readout = bnn.Linear(H, K, dtype=F64)
    x = torch.randn(N, T, H_IN, dtype=F64) if batch_first else torch.randn(T, N, H_IN, dtype=F64)
    y = soft_targets(N, K)
    got = time_gradients(rnn, x, readout, bnn.LogLikelihoodCost(logits=True), y)
    per_ex = time_gradients(rnn, x, readout, bnn.LogLikelihoodCost(logits=True), y,
                            measure="per_example")
    grads = time_gradients(rnn, x, readout, bnn.LogLikelihoodCost(logits=True), y,
                           measure="none")
    ref = _reference(rnn, kind, x, readout, y)
    assert got.shape == per_ex.shape == (T,)
    torch.testing.assert_close(grads, ref)  # the vectors, not only their norms (signs)
    torch.testing.assert_close(got, ref.sum(1).norm(dim=-1))
    torch.testing.assert_close(per_ex, (ref.norm(dim=-1) * N).mean(1))
    assert not torch.allclose(got[0], got[-1])  # the steps do differ


def test_torch_module_gives_the_same_numbers():
    """The function takes torch.nn's LSTM too: same weights, same numbers."""
    rnn = bnn.LSTM(H_IN, H, dtype=F64)
    twin = nn.LSTM(H_IN, H, dtype=F64)
    twin.load_state_dict(rnn.state_dict())
    readout = nn.Linear(H, K, dtype=F64)
    x, y = torch.randn(T, N, H_IN, dtype=F64), torch.randint(0, K, (N,))
    torch.testing.assert_close(
        time_gradients(rnn, x, readout, bnn.LogLikelihoodCost(logits=True), y),
        time_gradients(twin, x, readout, nn.CrossEntropyLoss(), y))


def test_leaves_grads_and_mode_alone():
    rnn, readout = bnn.RNN(H_IN, H, dtype=F64), bnn.Linear(H, K, dtype=F64)
    rnn.train(), readout.eval()
    x, y = torch.randn(T, N, H_IN, dtype=F64), torch.randint(0, K, (N,))
    time_gradients(rnn, x, readout, bnn.LogLikelihoodCost(logits=True), y)
    assert all(p.grad is None for p in [*rnn.parameters(), *readout.parameters()])
    assert rnn.training and not readout.training


def test_bad_input():
    readout, cost = bnn.Linear(H, K), bnn.LogLikelihoodCost(logits=True)
    y = torch.randint(0, K, (N,))
    with pytest.raises(ValueError, match="bidirectional"):
        time_gradients(bnn.LSTM(H_IN, H, bidirectional=True), torch.randn(T, N, H_IN),
                       readout, cost, y)
    with pytest.raises(ValueError, match="measure"):
        time_gradients(bnn.LSTM(H_IN, H), torch.randn(T, N, H_IN), readout, cost, y,
                       measure="mean")
    with pytest.raises(ValueError, match="3-D"):
        time_gradients(bnn.LSTM(H_IN, H), torch.randn(T, H_IN), readout, cost, y)


def test_rejects_a_broken_backward(monkeypatch):
    """Drop the forget gate from the cell path (dc_{t−1} = dc_t instead of dc_t ⊙ f_t): the
    check against torch's cells must fail."""
    real = rec.lstm_bwd

    def broken(*args):
        grads = list(real(*args))
        gates = args[9]
        f = gates[0].chunk(4, -1)[1]  # one step per call: T = 1
        if grads[2] is not None:
            grads[2] = grads[2] / f  # ∂C/∂c_0 without the ⊙ f_1
        return tuple(grads)

    monkeypatch.setattr(rec, "lstm_bwd", broken)
    rnn = bnn.LSTM(H_IN, H, dtype=F64)
    readout = bnn.Linear(H, K, dtype=F64)
    x, y = torch.randn(T, N, H_IN, dtype=F64), soft_targets(N, K)
    got = time_gradients(rnn, x, readout, bnn.LogLikelihoodCost(logits=True), y)
    ref = _reference(rnn, "lstm", x, readout, y)
    assert not torch.allclose(got, ref.sum(1).norm(dim=-1))


def test_experiment_smoke(tmp_path, mnist):
    from experiments import vanishing_time

    out = tmp_path / "time.json"
    results = vanishing_time.main(["--n-images", "20", "--hidden", "8", "--seeds", "2",
                                   "--json", str(out), "--plot", str(tmp_path / "t.png"),
                                   "--threads", "1"])
    saved = json.loads(out.read_text())
    assert saved["config"]["hidden"] == 8 and (tmp_path / "t.png").exists()
    for model in results["models"]:
        assert len(model["norm_mean"]) == 28 and len(model["norm_seeds"]) == 2
        assert all(v > 0 for v in model["norm_mean"])
