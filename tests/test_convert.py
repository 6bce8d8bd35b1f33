"""bptorch.convert.from_torch_nn: torchvision's ResNet-18 converted layer by layer gives
torch's outputs, gradients and running statistics in train and eval mode; every supported
layer converts; unsupported layers are named (strict) or kept with a warning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bptorch
from bptorch import nn as bnn
from bptorch.convert import TWIN_NAMES, from_torch_nn


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """|a − b| ≤ tol · max|b| elementwise: a deep net's float32 gradients carry rounding
    of the size of the tensor's largest entries, not of each entry."""
    tol = 1e-10 if b.dtype == torch.float64 else 1e-4
    scale = float(b.detach().abs().max()) if b.is_floating_point() and b.numel() else 1.0
    atol = tol * max(scale, 1e-3)
    try:
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=what)
    except AssertionError:
        err = float((a.detach().double() - b.detach().double()).abs().max())
        raise AssertionError(f"{what}: max |a − b| = {err:.3g} > {atol:.3g}") from None


def _assert_grads_close(ours: nn.Module, theirs: nn.Module) -> None:
    for (name, p), (name2, q) in zip(ours.named_parameters(), theirs.named_parameters(),
                                     strict=True):
        assert name == name2
        _close(p.grad, q.grad, f"grad of {name}")


def _assert_state_close(ours: nn.Module, theirs: nn.Module) -> None:
    s1, s2 = ours.state_dict(), theirs.state_dict()
    assert list(s1) == list(s2)
    for k in s1:
        _close(s1[k], s2[k], f"state {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_resnet18_matches_torch(device, dtype):
    """Train mode (batch statistics, running statistics updated, an SGD step), then eval
    mode. In float32 one training step: with batch 2, layer4's BatchNorm sees 8 values per
    channel and later steps amplify float32 rounding (float64 agrees to 1e-12 throughout)."""
    torchvision = pytest.importorskip("torchvision")
    theirs = torchvision.models.resnet18(num_classes=10).to(device, dtype)
    ours = from_torch_nn(theirs)
    kinds = {type(m) for m in ours.modules()}
    left = {k.__name__ for k in kinds if k.__module__.startswith("torch.nn")}
    assert left <= {"Sequential"}, f"torch.nn layers left: {left}"
    assert {k.__name__ for k in kinds if k.__module__.startswith("torchvision")} == \
        {"ResNet", "BasicBlock"}
    assert bnn.BatchNorm2d in kinds and bnn.MaxPool2d in kinds and bnn.Conv2d in kinds
    _assert_state_close(ours, theirs)

    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 64, 64, device=device, dtype=dtype)
    train_steps = 1 if dtype == torch.float32 else 3
    for mode in ["train"] * train_steps + ["eval"]:
        ours.train(mode == "train"), theirs.train(mode == "train")
        y_ours, y_theirs = ours(x), theirs(x)
        _close(y_ours, y_theirs, "output")
        g = torch.randn_like(y_theirs)
        opt_ours.zero_grad(), opt_theirs.zero_grad()
        y_ours.backward(g)
        y_theirs.backward(g)
        _assert_grads_close(ours, theirs)
        opt_ours.step(), opt_theirs.step()
        _assert_state_close(ours, theirs)  # weights and running statistics


def _every_layer() -> nn.Module:
    """A model using each torch.nn layer with a twin (activations that bptorch has)."""
    acts = [getattr(nn, n)() for n in ("ReLU", "Sigmoid", "Tanh", "LeakyReLU", "Identity",
                                       "GELU", "SiLU") if hasattr(bnn, n)]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6, padding_idx=0)
            self.ln = nn.LayerNorm(6)
            self.features = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Dropout(0.3))
            self.head = nn.ModuleList([nn.Linear(16 + 6, 8), nn.BatchNorm1d(8), *acts,
                                       nn.Linear(8, 5), nn.Softmax(-1)])

        def forward(self, image, token):
            z = torch.cat([self.features(image), self.ln(self.emb(token))], 1)
            for layer in self.head:
                z = layer(z)
            return z

    return Model()


def test_every_supported_layer_converts():
    theirs = _every_layer()
    with torch.no_grad():  # running statistics and counts that a fresh twin would not have
        for b in theirs.buffers():
            b.uniform_(0.5, 1.5) if b.is_floating_point() else b.fill_(7)
    ours = from_torch_nn(theirs)
    _assert_state_close(ours, theirs)
    names = {type(m).__name__: type(m).__module__ for m in ours.modules()}
    for name, module in names.items():
        if name in TWIN_NAMES:
            assert module.startswith("bptorch"), name
    assert ours.features[2].training and isinstance(ours.features[2], bnn.ReLU)
    image, token = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        ours.features[-1].p = theirs.features[-1].p = 0.0 if mode else 0.3  # no random masks
        y_ours, y_theirs = ours(image, token), theirs(image, token)
        torch.testing.assert_close(y_ours, y_theirs)
        g = torch.randn_like(y_theirs)
        ours.zero_grad(), theirs.zero_grad()
        y_ours.backward(g)
        y_theirs.backward(g)
        _assert_grads_close(ours, theirs)
        _assert_state_close(ours, theirs)


def test_copy_keeps_mode_flags_and_sharing():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.BatchNorm1d(3)).eval()
    model[0].bias.requires_grad_(False)
    ours = from_torch_nn(model)
    assert ours[0] is ours[2] and isinstance(ours[0], bnn.Linear)
    assert not ours.training and not ours[3].training
    assert not ours[0].bias.requires_grad and ours[0].weight.requires_grad
    assert type(model[0]) is nn.Linear  # the original is left alone
    assert ours[0].weight.data_ptr() != model[0].weight.data_ptr()
    single = from_torch_nn(nn.Linear(2, 3, dtype=torch.float64))
    assert isinstance(single, bnn.Linear) and single.weight.dtype == torch.float64


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        # bptorch's LSTM has proj_size and Upsample a twin now (issue 21); its Embedding still
        # has no max_norm, and PixelShuffle no twin
        self.rnn = nn.Embedding(4, 5, max_norm=1.0)
        self.up = nn.PixelShuffle(2)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.rnn(x))


def test_strict_names_every_unsupported_layer():
    with pytest.raises(NotImplementedError) as info:
        from_torch_nn(_Recurrent())
    msg = str(info.value)
    assert "torch.nn.Embedding" in msg and "'rnn'" in msg and "torch.nn.PixelShuffle" in msg
    assert "max_norm" in msg
    assert "strict=False" in msg
    with pytest.raises(NotImplementedError, match="max_norm"):
        from_torch_nn(nn.Sequential(nn.Embedding(5, 2, max_norm=1.0)))


def test_non_strict_keeps_unsupported_layers_with_a_warning():
    model = _Recurrent()
    with pytest.warns(UserWarning, match="torch.nn.Embedding"):
        ours = from_torch_nn(model, strict=False)
    assert type(ours.rnn) is nn.Embedding and isinstance(ours.out, bnn.Linear)
    x = torch.randint(0, 4, (2, 3))
    torch.testing.assert_close(ours(x), model(x))


def test_twin_names_exist_in_torch():
    for name in TWIN_NAMES:
        assert hasattr(nn, name), name
    assert bptorch.convert.from_torch_nn is from_torch_nn


def test_twin_lacking_an_argument(monkeypatch):
    """A twin without one of torch's arguments converts layers that leave it at torch's
    default and refuses the others, naming the argument (twins are looked up at call time)."""

    class NarrowFlatten(nn.Module):  # a bptorch twin that knows only start_dim
        def __init__(self, start_dim: int = 1) -> None:
            super().__init__()
            self.start_dim = start_dim

        def forward(self, x):
            return x.flatten(self.start_dim)

    monkeypatch.setattr(bnn, "Flatten", NarrowFlatten)
    assert isinstance(from_torch_nn(nn.Flatten(2)), NarrowFlatten)
    with pytest.raises(NotImplementedError, match=r"no argument 'end_dim' \(here end_dim=2\)"):
        from_torch_nn(nn.Sequential(nn.Flatten(0, 2)))


# ---------------------------------------------------------------- sequence layers
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_converts_and_never_takes_the_fast_path(activation, batch_first,
                                                                   monkeypatch):
    """TransformerEncoder(Layer): MultiheadAttention, Linear, LayerNorm and Dropout become
    bptorch's, the layer's activation function becomes bptorch.functional's, and in eval
    mode under no_grad (where torch takes its fused fast path) the bptorch attention runs."""
    import bptorch.functions.attention as attention

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, 0.0, activation, batch_first=batch_first)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    ours = from_torch_nn(enc)
    compute = [m for m in ours.modules() if not isinstance(
        m, (torch.nn.TransformerEncoder, torch.nn.TransformerEncoderLayer, torch.nn.ModuleList))]
    assert compute and all(type(m).__module__.startswith("bptorch.") for m in compute)
    x = torch.randn(3, 5, 16, requires_grad=True)
    out, ref = ours(x), enc(x)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *ours.parameters()], g)
    want = torch.autograd.grad(ref, [x, *enc.parameters()], g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    calls = []
    apply = attention.AttentionFunction.apply
    monkeypatch.setattr(attention.AttentionFunction, "apply",
                        lambda *args: calls.append(1) or apply(*args))
    ours.eval(), enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), enc(x), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2  # one attention per layer: no fused fast path


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_recurrent_layers_convert(kind):
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(5, 7, 2, batch_first=True, bidirectional=True)
    ours = from_torch_nn(m)
    assert type(ours).__module__.startswith("bptorch.")
    x = torch.randn(3, 4, 5, requires_grad=True)
    out, ref = ours(x)[0], m(x)[0]
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, [x, *ours.parameters()], g),
                    torch.autograd.grad(ref, [x, *m.parameters()], g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    rnn = from_torch_nn(torch.nn.RNN(5, 7, nonlinearity="relu", bias=False))
    assert rnn.nonlinearity == "relu" and rnn.bias is False


def test_multihead_attention_converts_or_names_what_it_cannot():
    mha = torch.nn.MultiheadAttention(8, 2, bias=False, batch_first=True)
    ours = from_torch_nn(mha)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ours(x, x, x)[0], mha(x, x, x)[0], rtol=1e-5, atol=1e-6)
    # add_bias_kv, add_zero_attn and kdim/vdim convert too (issue 21)
    mha = torch.nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True, kdim=5,
                                      vdim=3)
    ours = from_torch_nn(mha)
    assert isinstance(ours, bnn.MultiheadAttention) and not ours._qkv_same_embed_dim
    q, k, v = torch.randn(4, 2, 8), torch.randn(6, 2, 5), torch.randn(6, 2, 3)
    torch.testing.assert_close(ours(q, k, v)[0], mha(q, k, v)[0], rtol=1e-5, atol=1e-6)
