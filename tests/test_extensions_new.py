"""bptorch.extensions.collect on the layer families of issue 21 (issue 22, item 3): Conv1d,
Conv3d, ConvTranspose1d/2d/3d, GroupNorm, InstanceNorm1d/2d/3d, BatchNorm3d, PReLU's α, the
RNN/LSTM/GRU cells (one step and run over time), the Transformer composites, and models
from ``from_torch_nn`` whose forward is routed (torchvision's resnet18, functional calls).

Each quantity is compared with a float64 loop over single examples through the torch.nn
model (under both reductions, non-square shapes, options drawn across their values), and
with BackPACK 1.7.1's BatchGrad/BatchL2Grad/SumGradSquared/Variance where BackPACK has the
layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bptorch.nn as bnn
import bptorch.per_example as per_example
from bptorch.convert import from_torch_nn
from bptorch.extensions import BatchNormTrainingError, PartialGradientError, collect
from bptorch.functions.base import PER_EXAMPLE
from helpers import clip_at_median

NAMES = ("grad_batch", "batch_l2", "sum_grad_squared", "variance")
D = torch.float64
N = 4  # examples per batch


# ---------------------------------------------------------------- helpers
class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class CellLoop(nn.Module):
    """A cell run over the T steps of (N, T, H_in), then a Linear on the last state."""

    def __init__(self, cell, hidden, classes=3):
        super().__init__()
        self.cell, self.fc = cell, nn.Linear(hidden, classes)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        h = state[0] if isinstance(state, tuple) else state
        return self.fc(h)


class Functional(nn.Module):
    """A forward that calls functions itself on its modules' parameters (routed)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.slope = nn.PReLU(4)
        self.fc = nn.Linear(4 * 3, 3)

    def forward(self, x):
        z = F.conv1d(x, self.conv.weight, self.conv.bias, stride=2, padding=1)
        z = F.group_norm(z, 2, self.norm.weight, self.norm.bias)
        z = F.prelu(z, self.slope.weight)
        return F.linear(torch.flatten(z, 1), self.fc.weight, self.fc.bias)


def _perturb(model, g):
    """Parameters away from their init (norms' γ = 1, β = 0; PReLU's 0.25)."""
    for p in model.parameters():
        p.data.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


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


def _check(model, x, y, reduction, names=NAMES, strict=True):
    """collect on the converted model against the loop through the torch model."""
    model = model.to(D)
    twin = from_torch_nn(model, strict=strict)
    ref = _loop(model, x, y, reduction)
    with collect(twin, *names):
        _loss(reduction)(twin(x), y).backward()
    assert PER_EXAMPLE == []
    for name, p in twin.named_parameters():
        want = _expected(ref[name])
        torch.testing.assert_close(p.grad, ref[name].sum(0), msg=f"{name} .grad")
        for quantity in names:
            torch.testing.assert_close(getattr(p, quantity), want[quantity],
                                       msg=f"{name} {quantity} ({reduction})")
    return twin


def _data(shape, seed=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, *shape, generator=g, dtype=D),
            torch.randint(0, 3, (N,), generator=g), g)


# ---------------------------------------------------------------- convolutions, any d
# options drawn across their values; each a two-layer net: (first, second) layer kwargs
CONV1D = [
    dict(a=dict(kernel_size=3, stride=2, padding=1), b=dict(kernel_size=2, groups=2, dilation=2)),
    dict(a=dict(kernel_size=2, padding="same", dilation=3),
         b=dict(kernel_size=3, stride=3, padding=2, bias=False)),
    dict(a=dict(kernel_size=3, padding=2, padding_mode="reflect"),
         b=dict(kernel_size=1, groups=2, padding="valid")),
]
CONV3D = [
    dict(a=dict(kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2)),
         b=dict(kernel_size=(1, 2, 2), groups=2)),
    dict(a=dict(kernel_size=2, padding="same"),
         b=dict(kernel_size=(2, 1, 3), stride=(2, 1, 1), dilation=(1, 2, 1), padding=(0, 1, 1),
                bias=False)),
]
CONV_T1D = [
    dict(a=dict(kernel_size=3, stride=2, padding=1, output_padding=1),
         b=dict(kernel_size=2, groups=2, dilation=2)),
    dict(a=dict(kernel_size=2, stride=3, output_padding=2, dilation=2),
         b=dict(kernel_size=3, padding=2, bias=False)),
]
CONV_T2D = [
    dict(a=dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                dilation=(1, 2)),
         b=dict(kernel_size=2, groups=2, stride=(1, 2))),
    dict(a=dict(kernel_size=2, stride=2, dilation=3, output_padding=(2, 1)),
         b=dict(kernel_size=(1, 3), padding=(0, 1), bias=False)),
]
CONV_T1D.append(dict(a=dict(kernel_size=3, stride=2, padding=1, dilation=2),
                    b=dict(kernel_size=2, groups=2, stride=3)))
CONV_T2D.append(dict(a=dict(kernel_size=(2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1)),
                    b=dict(kernel_size=(3, 1), groups=2, stride=2, padding=1, bias=False)))
CONV_T3D = [
    dict(a=dict(kernel_size=(2, 1, 2), stride=(1, 2, 2), padding=(0, 0, 1),
                output_padding=(0, 1, 1)),
         b=dict(kernel_size=(1, 2, 1), groups=2, dilation=(1, 2, 1))),
]
CONV_T3D.append(dict(a=dict(kernel_size=(1, 2, 2), stride=2, padding=(0, 1, 0)),
                    b=dict(kernel_size=2, groups=2, dilation=(1, 1, 2))))
CONV_FAMILIES = {
    "conv1d": (nn.Conv1d, CONV1D, (3, 9)),
    "conv3d": (nn.Conv3d, CONV3D, (3, 4, 5, 3)),
    "conv_transpose1d": (nn.ConvTranspose1d, CONV_T1D, (3, 5)),
    "conv_transpose2d": (nn.ConvTranspose2d, CONV_T2D, (3, 3, 4)),
    "conv_transpose3d": (nn.ConvTranspose3d, CONV_T3D, (3, 2, 3, 2)),
}
CONV_CASES = [(family, i) for family, (_, configs, _) in CONV_FAMILIES.items()
              for i in range(len(configs))]


def _conv_net(family, i, seed=7, flatten=Flat):
    """conv(3 → 4) · tanh · conv(4 → 6) · flatten · linear, float64, with its data."""
    layer, configs, shape = CONV_FAMILIES[family]
    cfg = configs[i]
    x, y, g = _data(shape, seed)
    torch.manual_seed(3)
    body = nn.Sequential(layer(3, 4, **cfg["a"]), nn.Tanh(), layer(4, 6, **cfg["b"]))
    width = body.to(D)(x[:1]).numel()
    model = _perturb(nn.Sequential(*body, flatten(), nn.Linear(width, 3)).to(D), g)
    return model, x, y


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("family,i", CONV_CASES)
def test_conv_nd_each_quantity_equals_a_per_example_loop(family, i, reduction):
    model, x, y = _conv_net(family, i)
    _check(model, x, y, reduction)


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("family", list(CONV_FAMILIES))
def test_conv_nd_batch_l2_by_either_form(family, ghost, monkeypatch):
    """The Gram ("ghost norm") form and the per-example tensor, each alone (no grad_batch,
    so batch_l2 and sum_grad_squared take their own forms)."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    model, x, y = _conv_net(family, 0)
    _check(model, x, y, "sum", ("batch_l2",))
    _check(model, x, y, "mean", ("variance",))


@pytest.mark.parametrize("family", list(CONV_FAMILIES))
def test_conv_nd_formed_a_few_examples_at_a_time(family, monkeypatch):
    """g_n formed by chunks of examples (``per_example.UNFOLD_CHUNK`` small: one a chunk,
    each with its own unfold), joined: the same quantities and the same sum."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: False)
    monkeypatch.setattr(per_example, "UNFOLD_CHUNK", 1)
    model, x, y = _conv_net(family, 0)
    _check(model, x, y, "sum", ("batch_l2",))
    _check(model, x, y, "mean", ("variance",))


def test_conv_nd_ghost_norm_choice_follows_2t2_against_pd(monkeypatch):
    """Which form answers is the per-layer comparison of ``ghost_cheaper(T, p, d)`` (T
    positions, p = C_out/g, d = C_in/g · K: 2T(p + d) < p·d), as Conv2d's."""
    asked = []
    real = per_example.ghost_cheaper

    def spy(t, p, d):
        asked.append((t, p, d))
        return real(t, p, d)

    monkeypatch.setattr(per_example, "ghost_cheaper", spy)
    conv = bnn.Conv1d(6, 8, 3, stride=2, groups=2).to(D)
    x = torch.randn(N, 6, 11, dtype=D)
    with collect(conv, "batch_l2"):
        (conv(x) * torch.randn(N, 8, 5, dtype=D)).sum().backward()
    assert asked == [(5, 4, 3 * 3)]  # T = 5 positions, p = 8/2, d = 6/2 · 3
    convt = bnn.ConvTranspose3d(4, 6, 2, stride=2, groups=2).to(D)
    x = torch.randn(N, 4, 2, 3, 2, dtype=D)
    asked.clear()
    with collect(convt, "batch_l2"):
        (convt(x) * torch.randn(N, 6, 4, 6, 4, dtype=D)).sum().backward()
    assert asked == [(12, 2, 3 * 8)]  # T = a's 12 positions, p = 4/2, d = 6/2 · 8


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("family,i", [c for c in CONV_CASES if not any(
    word in str(CONV_FAMILIES[c[0]][1][c[1]]) for word in ("same", "reflect", "output_padding"))])
def test_conv_nd_equals_backpack(family, i, reduction):
    """BackPACK 1.7.1 has Conv1d/3d and ConvTranspose1d/2d/3d, without padding="same",
    padding modes or output_padding (its transposed unfold ignores output_padding: a shape
    error)."""
    backpack = pytest.importorskip("backpack")
    from backpack import extensions as bext

    model, x, y = _conv_net(family, i, flatten=nn.Flatten)
    twin = from_torch_nn(model)
    with collect(twin, *NAMES):
        _loss(reduction)(twin(x), y).backward()
    model = backpack.extend(model)
    loss_fn = backpack.extend(_loss(reduction))
    with backpack.backpack(bext.BatchGrad(), bext.BatchL2Grad(), bext.SumGradSquared(),
                           bext.Variance()):
        loss_fn(model(x), y).backward()
    # BackPACK 1.7.1's BatchL2Grad of a grouped convolution's weight disagrees with its own
    # BatchGrad (and with the loop, tests/test_extensions.py): there its grad_batch's norms
    grouped = {id(m.weight) for m in model.modules() if getattr(m, "groups", 1) > 1}
    for p, q in zip(twin.parameters(), model.parameters()):
        for name in NAMES:
            theirs = getattr(q, name)
            if name == "batch_l2" and id(q) in grouped:
                theirs = q.grad_batch.flatten(1).square().sum(1)
            torch.testing.assert_close(getattr(p, name), theirs, msg=f"{family} {name}")


# ---------------------------------------------------------------- norms, PReLU
def _norm_case(name):
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(3)
    if name == "group_norm":
        model = nn.Sequential(nn.Conv2d(2, 6, 2), nn.GroupNorm(3, 6), nn.Tanh(), Flat(),
                              nn.Linear(6 * 3 * 2, 3))
        shape = (2, 4, 3)
    elif name == "group_norm_1d":  # (N, C, L), one group: LayerNorm over (C, L)
        model = nn.Sequential(nn.Conv1d(2, 4, 2), nn.GroupNorm(1, 4, eps=1e-3), Flat(),
                              nn.Linear(4 * 4, 3))
        shape = (2, 5)
    elif name == "instance_norm1d":
        model = nn.Sequential(nn.Conv1d(2, 3, 2), nn.InstanceNorm1d(3, affine=True), nn.Tanh(),
                              Flat(), nn.Linear(3 * 5, 3))
        shape = (2, 6)
    elif name == "instance_norm2d":  # running statistics tracked; training: the input's
        model = nn.Sequential(nn.Conv2d(2, 3, 2),
                              nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                              nn.Tanh(), Flat(), nn.Linear(3 * 3 * 2, 3))
        shape = (2, 4, 3)
    elif name == "instance_norm3d":
        model = nn.Sequential(nn.Conv3d(2, 3, 2), nn.InstanceNorm3d(3, affine=True), nn.Tanh(),
                              Flat(), nn.Linear(3 * 2 * 1 * 3, 3))
        shape = (2, 3, 2, 4)
    elif name == "instance_norm2d_eval":  # running statistics: BatchNorm's eval equation
        model = nn.Sequential(nn.Conv2d(2, 3, 2),
                              nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                              Flat(), nn.Linear(3 * 3 * 2, 3))
        shape = (2, 4, 3)
    elif name == "batch_norm3d_eval":
        model = nn.Sequential(nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3), nn.Tanh(), Flat(),
                              nn.Linear(3 * 2 * 1 * 3, 3))
        shape = (2, 3, 2, 4)
    elif name == "prelu":  # one α per channel after a conv, one shared α after a linear
        model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.PReLU(3), Flat(), nn.Linear(18, 5),
                              nn.PReLU(), nn.Linear(5, 3))
        shape = (2, 4, 3)
    elif name == "prelu_sequence":  # (N, T, C): α per channel of dim 1, as torch
        model = nn.Sequential(nn.Linear(4, 5), nn.PReLU(3), Flat(), nn.Linear(15, 3))
        shape = (3, 4)
    else:
        raise KeyError(name)
    model = _perturb(model.to(D), g)
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    if name.endswith("_eval"):
        model.eval()
    x = torch.randn(N, *shape, generator=g, dtype=D)
    y = torch.randint(0, 3, (N,), generator=g)
    return model, x, y


NORM_CASES = ["group_norm", "group_norm_1d", "instance_norm1d", "instance_norm2d",
              "instance_norm3d", "instance_norm2d_eval", "batch_norm3d_eval", "prelu",
              "prelu_sequence"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", NORM_CASES)
def test_norms_and_prelu_equal_a_per_example_loop(case, reduction):
    model, x, y = _norm_case(case)
    _check(model, x, y, reduction)


@pytest.mark.parametrize("case", ["group_norm", "instance_norm3d", "prelu"])
def test_norms_and_prelu_each_quantity_alone(case):
    model, x, y = _norm_case(case)
    for name in NAMES[1:]:
        _check(model, x, y, "sum", (name,))


def test_prelu_unbatched_input_is_one_example():
    """A 1-d input has no batch dim (one channel, torch's rule): one example."""
    prelu = bnn.PReLU().to(D)
    with torch.no_grad():
        prelu.weight.fill_(-0.4)
    z = torch.tensor([-1.0, 2.0, -3.0], dtype=D)
    g = torch.tensor([0.5, -1.5, 2.0], dtype=D)
    with collect(prelu, "grad_batch", "batch_l2"):
        (prelu(z) * g).sum().backward()
    want = (g * z.clamp(max=0)).sum().reshape(1, 1)  # ∂C/∂α = Σ δ min(z, 0)
    torch.testing.assert_close(prelu.weight.grad_batch, want)
    torch.testing.assert_close(prelu.weight.batch_l2, want.square().sum(1))


def test_batch_norm3d_in_training_mode_is_an_error_naming_the_layer():
    model = bnn.Sequential(bnn.Conv3d(2, 3, 2), bnn.BatchNorm3d(3), bnn.Flatten(),
                           bnn.Linear(3 * 2 * 2 * 2, 2))
    x = torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(BatchNormTrainingError, match=r"BatchNorm3d '1'.*eval mode.*"
                                                     r"GroupNorm, LayerNorm"):
        with collect(model, "batch_l2"):
            model(x).sum().backward()
    assert PER_EXAMPLE == []


# ---------------------------------------------------------------- the cells
def _cell_case(kind, steps, seed=5):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(3)
    cell = {"rnn": nn.RNNCell(4, 5), "rnn_relu": nn.RNNCell(4, 5, nonlinearity="relu"),
            "lstm": nn.LSTMCell(4, 5), "gru": nn.GRUCell(4, 5),
            "gru_nobias": nn.GRUCell(4, 5, bias=False)}[kind]
    model = _perturb(CellLoop(cell, 5).to(D), g)
    x = torch.randn(N, steps, 4, generator=g, dtype=D)
    y = torch.randint(0, 3, (N,), generator=g)
    return model, x, y


CELLS = ["rnn", "rnn_relu", "lstm", "gru", "gru_nobias"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", CELLS)
def test_cells_equal_a_per_example_loop(kind, steps, reduction):
    """One step, and a cell run over T steps (its weights used T times: the steps' rows
    joined on a step axis, g_n = Σ_t δ_{n,t} a_{n,t}ᵀ)."""
    model, x, y = _cell_case(kind, steps)
    _check(model, x, y, reduction)


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cells_over_time_each_quantity_alone(kind, ghost, monkeypatch):
    """Without grad_batch: batch_l2 and sum_grad_squared from the stacked steps, by the
    ghost norm over T and by the per-example tensor."""
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    model, x, y = _cell_case(kind, 4)
    for name in NAMES[1:]:
        _check(model, x, y, "sum", (name,))


def test_cells_equal_the_layers_over_time():
    """A cell run over T steps gives the quantities of its layer (RNN, one layer, one
    direction) on the same sequence: both are BP4 through time, per example."""
    torch.manual_seed(0)
    lstm = bnn.LSTM(4, 5, batch_first=True).to(D)
    cell = bnn.LSTMCell(4, 5).to(D)
    with torch.no_grad():
        for a, b in zip(cell.parameters(), lstm.parameters()):
            a.copy_(b)
    x = torch.randn(N, 3, 4, dtype=D)
    g = torch.randn(N, 5, dtype=D)
    with collect(lstm, *NAMES[1:]):
        (lstm(x)[0][:, -1] * g).sum().backward()
    h = None
    with collect(cell, *NAMES[1:]):
        for t in range(3):
            h = cell(x[:, t], h)
        (h[0] * g).sum().backward()
    for p, q in zip(cell.parameters(), lstm.parameters()):
        for name in NAMES[1:]:
            torch.testing.assert_close(getattr(p, name), getattr(q, name), msg=name)


# ---------------------------------------------------------------- the Transformer composites
class Seq2Seq(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer, self.fc = transformer, nn.Linear(6, 3)

    def forward(self, x):  # (N, T, 6): source, and the first two steps as the target
        if isinstance(self.transformer, nn.TransformerDecoderLayer):
            return self.fc(self.transformer(x[:, :2], x).mean(1))  # (target, memory)
        return self.fc(self.transformer(x, x[:, :2]).mean(1))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", ["transformer", "decoder_layer", "encoder_norm_first"])
def test_transformer_composites_through_their_parts(case, reduction):
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(2)
    if case == "transformer":
        model = Seq2Seq(nn.Transformer(6, 2, num_encoder_layers=1, num_decoder_layers=1,
                                       dim_feedforward=7, dropout=0.0, batch_first=True))
    elif case == "decoder_layer":  # target: the first two steps, memory: the source
        model = Seq2Seq(nn.TransformerDecoderLayer(6, 3, 5, dropout=0.0, batch_first=True,
                                                   activation="gelu"))
    else:
        layer = nn.TransformerEncoderLayer(6, 2, 7, dropout=0.0, batch_first=True,
                                           norm_first=True)
        model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                              Flat(), nn.Linear(6 * 3, 3))
    model = _perturb(model.to(D), g)
    x = torch.randn(N, 3, 6, generator=g, dtype=D)
    y = torch.randint(0, 3, (N,), generator=g)
    _check(model, x, y, reduction)


# ---------------------------------------------------------------- routed forwards
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_routed_functional_calls(reduction):
    """F.conv1d, F.group_norm, F.prelu, torch.flatten and F.linear on the modules'
    parameters inside the model's own forward: routed to bptorch's Functions, which
    report to the collector."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(3)
    model = _perturb(Functional().to(D), g)
    x = torch.randn(N, 3, 6, generator=g, dtype=D)
    y = torch.randint(0, 3, (N,), generator=g)
    _check(model, x, y, reduction)


class BiasByHand(Functional):
    """F.linear without its bias, then ``+ self.fc.bias``: a torch add on a parameter."""

    def forward(self, x):
        z = F.prelu(F.conv1d(x, self.conv.weight, self.conv.bias, stride=2, padding=1),
                    self.slope.weight)
        return F.linear(torch.flatten(z, 1), self.fc.weight) + self.fc.bias


def test_routed_forward_partly_in_torch_is_an_error():
    """A parameter whose gradient comes (partly) through torch ops (a bias added by hand,
    a weight transposed in torch before F.linear) gets PartialGradientError naming it,
    never a partial result."""
    model = from_torch_nn(BiasByHand().to(D))
    x = torch.randn(N, 3, 6, dtype=D)
    with pytest.raises(PartialGradientError, match=r"'fc.bias'"):
        with collect(model, "batch_l2"):
            model(x).sum().backward()
    assert PER_EXAMPLE == []

    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 3, dtype=D))

        def forward(self, x):
            return F.linear(x, self.w.t())

    model = from_torch_nn(Transposed())
    with pytest.raises(PartialGradientError, match=r"'w'"):
        with collect(model, "grad_batch"):
            model(torch.randn(N, 6, dtype=D)).sum().backward()


def test_converted_resnet18_in_eval_mode():
    """torchvision's resnet18 converted (its forward routed: torch.flatten), BatchNorm in
    eval mode: each quantity equals the per-example loop; in training mode, the error."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).to(D)
    g = torch.Generator().manual_seed(4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    model.eval()
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=D)
    y = torch.tensor([2, 1])
    twin = from_torch_nn(model)
    ref = _loop(model, x, y, "mean")
    with collect(twin, *NAMES):
        _loss("mean")(twin(x), y).backward()
    for name, p in twin.named_parameters():  # 11M parameters: one norm per comparison
        want = _expected(ref[name])
        for quantity in NAMES:
            got, exp = getattr(p, quantity), want[quantity]
            assert got.shape == exp.shape, (name, quantity)
            assert (got - exp).norm() <= 1e-9 * exp.norm() + 1e-15, (name, quantity)
    twin.train()
    with pytest.raises(BatchNormTrainingError, match="BatchNorm2d"):
        with collect(twin, "batch_l2"):
            _loss("mean")(twin(x), y).backward()
    assert PER_EXAMPLE == []


# ---------------------------------------------------------------- outside collect
def test_outside_collect_the_new_backwards_are_unchanged():
    """The branches run only inside collect: outside, .grad equals torch's."""
    for model, x, y in (_conv_net("conv_transpose2d", 0), _norm_case("group_norm"),
                        _cell_case("lstm", 2)):
        twin = from_torch_nn(model)
        _loss("mean")(twin(x), y).backward()
        _loss("mean")(model(x), y).backward()
        for p, q in zip(twin.parameters(), model.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
            assert not hasattr(p, "grad_batch")


def test_under_autocast_bfloat16_conv1d_and_group_norm():
    """δ and a^{l−1} in bfloat16: the quantities in the parameters' float32; grad_batch adds
    up to the same run's .grad and its norms are batch_l2; all close to the float32 run's
    to bfloat16's scale (torch's own bfloat16 .grad of this net is up to 13% of the
    largest entry off its float32 .grad)."""
    torch.manual_seed(0)
    model = bnn.Sequential(bnn.Conv1d(3, 4, 3), bnn.GroupNorm(2, 4), bnn.PReLU(4),
                           bnn.ConvTranspose1d(4, 2, 2, stride=2), bnn.Flatten(),
                           bnn.Linear(2 * 12, 5))
    x, y = torch.randn(6, 3, 8), torch.randint(0, 5, (6,))
    with collect(model, "batch_l2", "grad_batch"):
        _loss("mean")(model(x), y).backward()
    want = [(p.batch_l2.clone(), p.grad_batch.clone()) for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16), collect(model, "batch_l2", "grad_batch"):
        _loss("mean")(model(x), y).backward()
    for p, (l2, gb) in zip(model.parameters(), want):
        assert p.batch_l2.dtype == p.grad_batch.dtype == torch.float32
        # .grad is the backward's bfloat16 BP4, rounded once; grad_batch is summed in float32
        torch.testing.assert_close(p.grad_batch.sum(0), p.grad, rtol=0.02,
                                   atol=0.01 * p.grad.abs().max().item())
        torch.testing.assert_close(p.batch_l2, p.grad_batch.flatten(1).square().sum(1))
        assert (p.batch_l2 - l2).abs().max() <= 0.25 * l2.abs().max()
        assert (p.grad_batch - gb).abs().max() <= 0.25 * gb.abs().max()


# ---------------------------------------------------------------- products with a parameter
class Products(nn.Module):
    """A routed forward with its own products on parameters: x @ W, W @ x, a layer scale
    γ * x (ConvNeXt's), an einsum with a weight, and q @ kᵀ between activations."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5))  # x @ W: (N, T, 4) → (N, T, 5)
        self.v = nn.Parameter(torch.randn(2, 3))  # W @ x: (N, 3, 5) → (N, 2, 5)
        self.scale = nn.Parameter(torch.randn(5))  # broadcast over (N, 2, 5)
        self.e = nn.Parameter(torch.randn(5, 3))  # einsum 'ntd,de->nte'
        self.fc = nn.Linear(6, 3)

    def forward(self, x):  # (N, 3, 4)
        h = torch.tanh(x @ self.w)  # (N, 3, 5)
        h = self.scale * (self.v @ h)  # (N, 2, 5)
        a = torch.softmax(h @ h.transpose(1, 2), -1)  # (N, 2, 2): no parameter
        h = torch.einsum("ntd,de->nte", a @ h, self.e)  # (N, 2, 3)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_products_with_a_parameter_operand(reduction):
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(3)
    model = _perturb(Products().to(D), g)
    x = torch.randn(N, 3, 4, generator=g, dtype=D)
    y = torch.randint(0, 3, (N,), generator=g)
    _check(model, x, y, reduction)
    _check(model, x, y, reduction, ("batch_l2",))


@pytest.mark.parametrize("ghost", [True, False])
def test_products_batch_l2_by_either_form(ghost, monkeypatch):
    monkeypatch.setattr(per_example, "ghost_cheaper", lambda t, p, d: ghost)
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(3)
    model = _perturb(Products().to(D), g)
    x = torch.randn(N, 3, 4, generator=g, dtype=D)
    y = torch.randint(0, 3, (N,), generator=g)
    _check(model, x, y, "sum", ("batch_l2", "variance"))


def test_products_without_a_per_example_form_are_errors():
    """A parameter indexed by the examples (bmm's per-entry matrices, a (N, ...) factor),
    or an einsum form not written: a clear error, never a guess."""
    x = torch.randn(N, 3, 4, dtype=D)

    class Per(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.op = op
            self.p = nn.Parameter(torch.randn(N, 4, 2, dtype=D))
            self.q = nn.Parameter(torch.randn(N, 1, 1, dtype=D))

        def forward(self, x):
            if self.op == "bmm":
                return torch.bmm(x, self.p)
            if self.op == "mul":
                return x * self.q
            return torch.einsum("nij,njk->nik", x, self.p)

    for op, match in (("bmm", "bmm: its batch entries"), ("mul", "mul: the parameter spans the output's dim 0"),
                      ("einsum", "einsum: equation 'nij,njk->nik'")):
        model = from_torch_nn(Per(op))
        with pytest.raises(NotImplementedError, match=match):
            with collect(model, "batch_l2"):
                model(x).sum().backward()
        assert PER_EXAMPLE == []


# ---------------------------------------------------------------- clipping (bptorch.privacy)
@pytest.mark.parametrize("case", ["conv1d", "conv3d", "conv_transpose2d", "conv_transpose3d",
                                  "group_norm", "instance_norm1d", "prelu", "lstm_cell",
                                  "gru_cell", "products"])
def test_clipped_sum_in_the_backward(case):
    """Each new family's ``weighted_sum`` (BP4 with δ_n scaled, what private training runs):
    ``.grad`` = Σ_n c_n g_n with c_n = min(1, C/‖g_n‖), ‖g_n‖ over all the parameters,
    from the per-example loop; C between the smallest and largest norm, so both kinds of
    c_n occur."""
    from bptorch.privacy import ClippingCollector

    if case in CONV_FAMILIES:
        model, x, y = _conv_net(case, 0)
    elif case in ("lstm_cell", "gru_cell"):
        model, x, y = _cell_case(case[:-5], 1)
    elif case == "products":
        g = torch.Generator().manual_seed(9)
        torch.manual_seed(3)
        model = _perturb(Products().to(D), g)
        x, y = torch.randn(N, 3, 4, generator=g, dtype=D), torch.randint(0, 3, (N,), generator=g)
    else:
        model, x, y = _norm_case(case)
    twin = from_torch_nn(model)
    ref = _loop(model, x, y, "sum")
    norms, bound, clip = clip_at_median(ref)
    collector = ClippingCollector(twin, bound, "sum")
    collector.install()
    _loss("sum")(twin(x), y).backward()
    assert PER_EXAMPLE == []
    torch.testing.assert_close(collector.per_sample_norms, norms)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p.grad, torch.tensordot(clip, ref[name], 1), msg=name)
