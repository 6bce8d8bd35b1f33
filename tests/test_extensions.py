"""bptorch.extensions.collect: each per-example quantity against a float64 loop over single
examples through the torch.nn twin, under both reductions, at non-square shapes; against
BackPACK's and Opacus's own outputs where installed; and the errors it owes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bptorch.nn as bnn
import bptorch.per_example as per_example
from bptorch.convert import from_torch_nn
from bptorch.extensions import BatchNormTrainingError, PartialGradientError, collect
from bptorch.functions.base import PER_EXAMPLE

NAMES = ("grad_batch", "batch_l2", "sum_grad_squared", "variance")
D = torch.float64


class Mean(nn.Module):
    """Mean over the sequence axis (a torch op with no parameters)."""

    def forward(self, x):
        return x.mean(1)


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class Output(nn.Module):
    """The output sequence of a recurrent layer's (output, state)."""

    def forward(self, out):
        return out[0]


class SelfAttention(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):  # (N, L, E), the attention time-first: (L, N, E)
        x = x.transpose(0, 1)
        return self.mha(x, x, x, need_weights=False)[0].transpose(0, 1)


def _case(name: str):
    """(torch model, x, y, loss kind) for one layer family, float64, non-square."""
    g = torch.Generator().manual_seed(7)
    n = 5
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))
        x = torch.randn(n, 6, generator=g)
    elif name == "sequence":  # (N, T, d): the ghost norm's case
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), Mean())
        x = torch.randn(n, 3, 4, generator=g)
    elif name == "conv":
        model = nn.Sequential(
            nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), nn.Tanh(),
            nn.Conv2d(4, 6, 3, groups=2, padding=(0, 1)), nn.Tanh(),
            nn.Conv2d(6, 2, (2, 3), padding="same"), Flat(), nn.Linear(2 * 2 * 5, 3))
        x = torch.randn(n, 3, 7, 5, generator=g)
    elif name == "conv_no_same":  # BackPACK's convolutions have no padding="same"
        model = nn.Sequential(
            nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), nn.Tanh(),
            nn.Conv2d(4, 6, 3, groups=2, padding=(0, 1)), nn.Flatten(), nn.Linear(60, 3))
        x = torch.randn(n, 3, 7, 5, generator=g)
    elif name == "embedding":
        model = nn.Sequential(nn.Embedding(11, 4, padding_idx=2), Mean(), nn.Linear(4, 3))
        x = torch.tensor([[1, 3, 3, 2], [2, 2, 0, 10], [5, 1, 5, 5], [7, 3, 2, 9],
                          [4, 4, 4, 4]])
    elif name in ("rnn", "lstm", "gru"):  # two layers, both directions, batch-first
        rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[name]
        model = nn.Sequential(rnn(4, 5, num_layers=2, batch_first=True, bidirectional=True),
                              Output(), Mean(), nn.Linear(10, 3))
        x = torch.randn(n, 3, 4, generator=g)
    elif name == "attention":  # self-attention, time-first inside
        model = nn.Sequential(nn.Linear(4, 6), SelfAttention(nn.MultiheadAttention(6, 2)),
                              Mean(), nn.Linear(6, 3))
        x = torch.randn(n, 3, 4, generator=g)
    elif name == "transformer":
        model = nn.Sequential(
            nn.Linear(4, 6),
            nn.TransformerEncoderLayer(6, 2, dim_feedforward=7, dropout=0.0, batch_first=True),
            Mean(), nn.Linear(6, 3))
        x = torch.randn(n, 3, 4, generator=g)
    elif name == "batch_norm_eval":  # running statistics: per example
        model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Tanh(), Flat(),
                              nn.Linear(3 * 3 * 2, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
        x = torch.randn(n, 2, 4, 3, generator=g)
        for m in (model[1], model[5]):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        model.eval()
    elif name == "layer_norm":
        model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3),
                              Mean())
        x = torch.randn(n, 3, 4, generator=g)
    else:
        raise KeyError(name)
    torch.manual_seed(3)
    model = model.to(D)
    for p in model.parameters():  # away from init (LayerNorm's γ = 1, β = 0)
        p.data.add_(0.3 * torch.randn(p.shape, generator=g, dtype=D))
    x = x.to(D) if x.is_floating_point() else x
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def _loss(reduction):
    return nn.CrossEntropyLoss(reduction=reduction)


def _loop(model, x, y, reduction):
    """Per-example gradients by a loop over single examples, scaled as BackPACK scales
    them: the examples' own under "sum", 1/N of them under "mean"."""
    scale = 1.0 / len(x) if reduction == "mean" else 1.0
    grads = {name: [] for name, _ in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        (_loss("sum")(model(x[i:i + 1]), y[i:i + 1]) * scale).backward()
        for name, p in model.named_parameters():
            grads[name].append(p.grad.clone())
    return {name: torch.stack(g) for name, g in grads.items()}


def _expected(gb):
    n = gb.shape[0]
    sgs = gb.square().sum(0)
    return {"grad_batch": gb, "batch_l2": gb.flatten(1).square().sum(1),
            "sum_grad_squared": sgs, "variance": sgs / n - (gb.sum(0) / n) ** 2}


CASES = ["mlp", "sequence", "conv", "embedding", "layer_norm", "rnn", "lstm", "gru",
         "attention", "transformer", "batch_norm_eval"]


def _check_all(case, reduction, names=NAMES):
    model, x, y = _case(case)
    twin = from_torch_nn(model, strict=False)
    ref = _loop(model, x, y, reduction)
    with collect(twin, *names):
        _loss(reduction)(twin(x), y).backward()
    model.zero_grad()
    _loss(reduction)(model(x), y).backward()
    for (name, p), (_, q) in zip(twin.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=f"{case} {name} .grad")
        want = _expected(ref[name])
        for quantity in names:
            torch.testing.assert_close(getattr(p, quantity), want[quantity],
                                       msg=f"{case} {name} {quantity} ({reduction})")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES)
def test_each_quantity_equals_a_per_example_loop(case, reduction):
    _check_all(case, reduction)


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("case", ["sequence", "conv", "lstm", "attention"])
def test_batch_l2_by_either_form(case, ghost, monkeypatch):
    """The Gram ("ghost norm") form and the per-example tensor give the same ‖g_n‖²."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    _check_all(case, "mean", ("batch_l2",))


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("case", ["sequence", "lstm", "gru", "attention", "conv"])
def test_quantities_by_chunks_of_examples(case, ghost, monkeypatch):
    """A sequence layer's g_n formed a few examples at a time (``per_example.CHUNK``: here
    one or two examples a chunk), its norms, squares and sum taken chunk by chunk; a
    convolution's unfold likewise (one example a chunk)."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    monkeypatch.setattr(per_example, "CHUNK", 40)
    monkeypatch.setattr(per_example, "UNFOLD_CHUNK", 40)
    _check_all(case, "mean", ("batch_l2", "variance"))
    _check_all(case, "sum", ("sum_grad_squared",))


@pytest.mark.parametrize("case", ["mlp", "sequence", "conv", "embedding", "attention"])
def test_each_quantity_alone(case):
    """Without grad_batch the cheap forms answer: batch_l2 from norms, sum_grad_squared
    from one matmul (one row per example) or scatter (embedding)."""
    for name in NAMES[1:]:
        _check_all(case, "sum", (name,))


def test_dense_layer():
    """bptorch's fused Dense (linear + σ in one Function)."""
    torch.manual_seed(0)
    model = bnn.Sequential(bnn.Dense(6, 5, activation="sigmoid"), bnn.Linear(5, 3)).to(D)
    x, y = torch.randn(4, 6, dtype=D), torch.tensor([0, 2, 1, 2])
    twin = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)).to(D)
    with torch.no_grad():
        for p, q in zip(model.parameters(), twin.parameters()):
            q.copy_(p)
    ref = _loop(twin, x, y, "mean")
    with collect(model, *NAMES):
        _loss("mean")(model(x), y).backward()
    for p, gb in zip(model.parameters(), ref.values()):
        for quantity, want in _expected(gb).items():
            torch.testing.assert_close(getattr(p, quantity), want)


def test_embedding_scale_grad_by_freq_sums_to_grad():
    torch.manual_seed(0)
    emb = bnn.Embedding(9, 3, scale_grad_by_freq=True).to(D)
    x = torch.tensor([[1, 1, 4], [4, 8, 1]])
    g = torch.randn(2, 3, 3, dtype=D)
    with collect(emb, "grad_batch", "batch_l2"):
        (emb(x) * g).sum().backward()
    torch.testing.assert_close(emb.weight.grad_batch.sum(0), emb.weight.grad)
    torch.testing.assert_close(emb.weight.batch_l2,
                               emb.weight.grad_batch.flatten(1).square().sum(1))


def test_outside_collect_the_backward_is_unchanged():
    """Before, between and after collections, .grad equals torch's, and no attribute is
    left on parameters a collection did not reach."""
    model, x, y = _case("conv")
    twin = from_torch_nn(model, strict=False)
    _loss("mean")(twin(x), y).backward()
    _loss("mean")(model(x), y).backward()
    for p, q in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
        assert not hasattr(p, "batch_l2")
    with collect(twin, "batch_l2"):
        _loss("mean")(twin(x), y).backward()
    assert PER_EXAMPLE == []
    # accumulation across the three backwards: 3× torch's one
    _loss("mean")(twin(x), y).backward()
    for p, q in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, 3 * q.grad / 1)


def test_grad_accumulates_inside_collect():
    """An existing .grad is added to, as autograd adds."""
    model, x, y = _case("mlp")
    twin = from_torch_nn(model, strict=False)
    _loss("sum")(twin(x), y).backward()
    with collect(twin, "grad_batch"):
        _loss("sum")(twin(x), y).backward()
    for p in twin.parameters():
        torch.testing.assert_close(p.grad, 2 * p.grad_batch.sum(0))


def test_batch_norm_in_training_mode_is_an_error_naming_the_layer():
    model = bnn.Sequential(bnn.Conv2d(2, 3, 3), bnn.BatchNorm2d(3), bnn.Flatten(),
                           bnn.Linear(3 * 3 * 3, 2))
    x = torch.randn(4, 2, 5, 5)
    with pytest.raises(BatchNormTrainingError, match=r"BatchNorm2d '1'.*eval mode.*"
                                                     r"GroupNorm, LayerNorm"):
        with collect(model, "batch_l2"):
            model(x).sum().backward()
    assert PER_EXAMPLE == []
    model.eval()  # running statistics: per example, collects
    with collect(model, "batch_l2"):
        model(x).sum().backward()
    assert model[1].weight.batch_l2.shape == (4,)


def test_a_gradient_from_torch_is_an_error():
    """A torch.nn layer inside a bptorch model: its parameters' gradients come from
    torch's autograd, so the collection refuses rather than report part of them."""
    model = nn.Sequential(bnn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(3, 4)
    with pytest.raises(PartialGradientError, match=r"'2.weight', '2.bias'.*from_torch_nn"):
        with collect(model, "batch_l2"):
            model(x).sum().backward()
    # also when no bptorch layer reports at all: the check runs as the block ends
    torch_only = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(PartialGradientError, match="'0.weight'"):
        with collect(torch_only, "grad_batch"):
            torch_only(x).sum().backward()


def test_a_parameter_also_used_by_torch_is_an_error():
    lin = bnn.Linear(4, 3)
    x = torch.randn(2, 4)
    with pytest.raises(PartialGradientError, match="'weight'"):
        with collect(lin, "batch_l2"):
            (lin(x).sum() + lin.weight.square().sum()).backward()  # weight decay by hand


def test_shared_weights():
    """A parameter used by two layer calls: grad_batch sums its uses, and so do the norms
    without it when the collection sees the layer called twice (the forward inside its
    block); a forward before the block leaves it no way to know: an error that says so
    (tests/test_privacy_shared.py has the families and the tied case)."""
    lin = bnn.Linear(4, 4).to(D)
    x = torch.randn(3, 4, dtype=D)
    with collect(lin, "grad_batch", "batch_l2"):
        lin(torch.tanh(lin(x))).sum().backward()
    ref = torch.func.vmap(torch.func.grad(
        lambda w, b, xi: torch.nn.functional.linear(
            torch.tanh(torch.nn.functional.linear(xi, w, b)), w, b).sum(), argnums=(0, 1)),
        in_dims=(None, None, 0))(lin.weight.detach(), lin.bias.detach(), x)
    torch.testing.assert_close(lin.weight.grad_batch, ref[0])
    torch.testing.assert_close(lin.weight.batch_l2, ref[0].flatten(1).square().sum(1))
    with collect(lin, "batch_l2"):
        lin(torch.tanh(lin(x))).sum().backward()
    torch.testing.assert_close(lin.weight.batch_l2, ref[0].flatten(1).square().sum(1))
    torch.testing.assert_close(lin.bias.batch_l2, ref[1].square().sum(1))
    out = lin(torch.tanh(lin(x))).sum()
    with pytest.raises(RuntimeError, match="shared weights.*'grad_batch'"):
        with collect(lin, "batch_l2"):
            out.backward()


def test_names_are_checked():
    lin = bnn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown quantity 'grad'.*batch_l2"):
        with collect(lin, "grad"):
            pass
    # the second-order names are computed now (tests/test_curvature.py); without a loss
    # they say what is missing
    with pytest.raises(ValueError, match="need the loss: pass loss_fn="):
        with collect(lin, "kfac"):
            pass
    with pytest.raises(ValueError, match="at least one"):
        with collect(lin):
            pass


# ---------------------------------------------------------------- the peers' own outputs
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", ["mlp", "conv_no_same"])
def test_equals_backpack(case, reduction):
    backpack = pytest.importorskip("backpack")
    from backpack import extensions as bext

    model, x, y = _case(case)
    twin = from_torch_nn(model, strict=False)
    with collect(twin, *NAMES):
        _loss(reduction)(twin(x), y).backward()
    model = backpack.extend(model)
    loss_fn = backpack.extend(_loss(reduction))
    with backpack.backpack(bext.BatchGrad(), bext.BatchL2Grad(), bext.SumGradSquared(),
                           bext.Variance()):
        loss_fn(model(x), y).backward()
    # BackPACK 1.7.1's BatchL2Grad of a grouped convolution's weight disagrees with its
    # own BatchGrad (and with the loop above); there its grad_batch's norms are compared
    grouped = {id(m.weight) for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1}
    for p, q in zip(twin.parameters(), model.parameters()):
        for name in NAMES:
            theirs = getattr(q, name)
            if name == "batch_l2" and id(q) in grouped:
                theirs = q.grad_batch.flatten(1).square().sum(1)
            torch.testing.assert_close(getattr(p, name), theirs)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES[:5])  # Opacus has no grad sampler for nn.RNN/LSTM/GRU
def test_equals_opacus_grad_sample(case, reduction):
    """Opacus's grad_sample is the examples' own gradient (it undoes the mean)."""
    pytest.importorskip("opacus")
    from opacus import GradSampleModule

    model, x, y = _case(case)
    twin = from_torch_nn(model, strict=False)
    with collect(twin, "grad_batch"):
        _loss(reduction)(twin(x), y).backward()
    gsm = GradSampleModule(model, loss_reduction=reduction)
    _loss(reduction)(gsm(x), y).backward()
    scale = len(x) if reduction == "mean" else 1
    for m, q in ((m, q) for m in model.modules() for q in m.parameters(recurse=False)):
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            # Opacus 1.6 gives the padding row a per-example gradient; its .grad is 0
            q.grad_sample[:, m.padding_idx] = 0
    for p, q in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad_batch * scale, q.grad_sample)


def test_network_explicit_engine_equals_the_autograd_path():
    """Network's explicit engine (net.backprop, net.deltas) gives what collect gives on
    the autograd path (net.loss(...).backward())."""
    from bptorch.extensions import network_quantities
    from bptorch.network import Network

    torch.manual_seed(0)
    net = Network([6, 5, 4], activation="tanh", cost="log_likelihood").to(D)
    x, y = torch.randn(7, 6, dtype=D), torch.randint(0, 4, (7,))
    with collect(net, *NAMES):
        net.loss(x, y).backward()
    want = {name: [getattr(p, name).clone() for p in net.parameters()] for name in NAMES}
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.backprop(x, y)
    network_quantities(net, x, *NAMES)
    for i, p in enumerate(net.parameters()):
        torch.testing.assert_close(p.grad, grads[i])
        for name in NAMES:
            torch.testing.assert_close(getattr(p, name), want[name][i], msg=name)
    with pytest.raises(ValueError, match="backprop"):
        network_quantities(net, x[:3], "batch_l2")


def test_under_autocast_bfloat16():
    """δ and a^{l−1} in bfloat16: the quantities in the parameters' float32, close to
    the float32 run's to bfloat16's scale."""
    torch.manual_seed(0)
    model = bnn.Sequential(bnn.Conv2d(3, 4, 3), bnn.ReLU(), bnn.Flatten(),
                           bnn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    with collect(model, "batch_l2", "grad_batch"):
        _loss("mean")(model(x), y).backward()
    want = [(p.batch_l2.clone(), p.grad_batch.clone()) for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16), collect(model, "batch_l2", "grad_batch"):
        _loss("mean")(model(x), y).backward()
    for p, (l2, gb) in zip(model.parameters(), want):
        assert p.batch_l2.dtype == p.grad_batch.dtype == torch.float32
        assert (p.batch_l2 - l2).abs().max() <= 0.03 * l2.abs().max()
        assert (p.grad_batch - gb).abs().max() <= 0.03 * gb.abs().max()
