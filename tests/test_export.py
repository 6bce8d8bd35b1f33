"""Persistence and export: state_dicts that load into and out of torch.nn models,
torch.export of a bptorch model, and bptorch.convert.to_torch_nn."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bptorch
import bptorch.nn as bnn
from bptorch.activations import ACTIVATIONS
from bptorch.convert import (network_state_dict_to_sequential,
                             sequential_state_dict_to_network, to_torch_nn)


def _trained_network():
    torch.manual_seed(0)
    net = bptorch.Network([784, 30, 10], cost="cross_entropy")
    x, y = torch.rand(40, 784), torch.randint(0, 10, (40,))
    for idx in torch.arange(40).split(10):
        net.update_mini_batch(x[idx], y[idx], eta=0.5)
    return net


def test_save_load_weights_only_roundtrip(tmp_path):
    net = _trained_network()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    fresh = bptorch.Network([784, 30, 10], cost="cross_entropy")
    fresh.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    x = torch.rand(5, 784)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)


def test_network_state_dict_loads_into_torch_sequential_and_back(tmp_path):
    net = _trained_network()
    torch.save(network_state_dict_to_sequential(net.state_dict()), tmp_path / "seq.pt")
    seq = nn.Sequential(nn.Linear(784, 30), nn.Sigmoid(), nn.Linear(30, 10), nn.Sigmoid())
    seq.load_state_dict(torch.load(tmp_path / "seq.pt", weights_only=True))
    x = torch.rand(5, 784)
    torch.testing.assert_close(seq(x), net(x))
    back = bptorch.Network([784, 30, 10], cost="cross_entropy")
    back.load_state_dict(sequential_state_dict_to_network(seq.state_dict()))
    torch.testing.assert_close(back(x), net(x))


@pytest.mark.parametrize("cls", [bnn.Linear, bnn.Dense])
def test_modules_share_torch_linear_keys(cls):
    ours, theirs = cls(6, 4), nn.Linear(6, 4)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight, theirs.weight)
    theirs2 = nn.Linear(6, 4)
    theirs2.load_state_dict(cls(6, 4).state_dict())  # and the other way
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_to_torch_nn_identical_outputs(activation):
    torch.manual_seed(0)
    model = nn.Sequential(bnn.Linear(7, 6), bnn.Tanh(), bnn.Dense(6, 5, activation),
                          nn.Sequential(bnn.LeakyReLU(0.2), bnn.Dense(5, 3, "softmax")),
                          bnn.Softmax(0))
    plain = to_torch_nn(model)
    names = {type(m).__module__.split(".")[0] for m in plain.modules()}
    assert names == {"torch"}  # nothing of bptorch is left
    x = torch.randn(4, 7)
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_to_torch_nn_network_and_trained_weights():
    net = _trained_network()
    plain = to_torch_nn(net)
    assert isinstance(plain[0], nn.Linear) and isinstance(plain[1], nn.Sigmoid)
    x = torch.rand(9, 784)
    torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)
    with torch.no_grad():
        plain[0].weight.zero_()  # copy=True: the bptorch weights are untouched
    assert net.layers[0].weight.abs().sum() > 0


def test_torch_export_of_bptorch_model():
    """torch.export traces through the custom Functions' forward into aten ops."""
    net = _trained_network()
    model = nn.Sequential(*net.layers, bnn.Linear(10, 3), bnn.ReLU())
    x = torch.rand(8, 784)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.linear.default" in targets and "aten.sigmoid.default" in targets
    x2 = torch.rand(13, 784)  # another batch size
    torch.testing.assert_close(program.module()(x2), model(x2))
    # and torch.export of the torch.nn conversion gives the same function
    torch.testing.assert_close(torch.export.export(to_torch_nn(model), (x,)).module()(x),
                               program.module()(x))


@pytest.mark.parametrize("dim", [-2, 0, 1, -1])
def test_to_torch_nn_keeps_softmax_dim(dim):
    """Softmax(dim) converts to nn.Softmax with the same dim, negative dims included."""
    plain = to_torch_nn(bnn.Softmax(dim))
    assert isinstance(plain, nn.Softmax) and plain.dim == dim
    x = torch.randn(3, 4)
    torch.testing.assert_close(plain(x), torch.softmax(x, dim), rtol=0, atol=0)
    assert to_torch_nn(bnn.LeakyReLU(0.3)).negative_slope == 0.3


def test_to_torch_nn_converts_conv_nets():
    torch.manual_seed(0)
    model = nn.Sequential(bnn.Conv2d(1, 4, 3, stride=2, padding=1), bnn.ReLU(),
                          bnn.MaxPool2d(2), bnn.Dropout(0.3), bnn.Flatten(),
                          bnn.Dense(4 * 3 * 3, 5, "tanh")).eval()
    plain = to_torch_nn(model)
    names = {type(m).__module__.split(".")[0] for m in plain.modules()}
    assert names == {"torch"}
    assert not plain[3].training  # eval mode carried over
    assert list(plain[0].state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 1, 11, 12)
    torch.testing.assert_close(plain(x), model(x))


# ---------------------------------------------------- the round trip of every twin
# One torch.nn layer per name in convert.TWIN_NAMES, with options away from torch's
# defaults where the twin takes them, and its inputs (float64). A name added to the table
# without a case here fails test_every_twin_has_a_round_trip_case.
def _ints(*shape, high=10):
    return torch.randint(0, high, shape)


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64)


ROUND_TRIP_CASES = {
    "Linear": [(lambda: nn.Linear(5, 4), lambda: (_x(3, 2, 5),)),
               (lambda: nn.Linear(5, 4, bias=False), lambda: (_x(3, 5),))],
    "Conv2d": [(lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                  groups=2), lambda: (_x(2, 4, 9, 8),)),
               (lambda: nn.Conv2d(3, 5, 3, padding="same", bias=False), lambda: (_x(2, 3, 6, 7),))],
    "MaxPool2d": [(lambda: nn.MaxPool2d((3, 2), stride=(2, 1), padding=1, dilation=(1, 2),
                                        return_indices=True, ceil_mode=True),
                   lambda: (_x(2, 3, 9, 8),))],
    "AvgPool2d": [(lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                        count_include_pad=False), lambda: (_x(2, 3, 8, 7),)),
                  (lambda: nn.AvgPool2d((2, 3), divisor_override=5), lambda: (_x(2, 3, 8, 7),))],
    "AdaptiveAvgPool2d": [(lambda: nn.AdaptiveAvgPool2d((3, None)), lambda: (_x(2, 3, 7, 5),))],
    # the pools over 1 and 3 dims, the adaptive max pools and Upsample (issue 21)
    "MaxPool1d": [(lambda: nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True,
                                        return_indices=True), lambda: (_x(2, 3, 11),))],
    "MaxPool3d": [(lambda: nn.MaxPool3d((2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0)),
                   lambda: (_x(2, 2, 4, 7, 5),))],
    "AvgPool1d": [(lambda: nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True,
                                        count_include_pad=False), lambda: (_x(2, 3, 10),))],
    "AvgPool3d": [(lambda: nn.AvgPool3d(2, stride=1, padding=1, divisor_override=3),
                   lambda: (_x(2, 2, 4, 5, 3),))],
    "AdaptiveAvgPool1d": [(lambda: nn.AdaptiveAvgPool1d(4), lambda: (_x(2, 3, 10),))],
    "AdaptiveAvgPool3d": [(lambda: nn.AdaptiveAvgPool3d((2, None, 3)),
                           lambda: (_x(2, 2, 5, 4, 7),))],
    "AdaptiveMaxPool1d": [(lambda: nn.AdaptiveMaxPool1d(4, return_indices=True),
                           lambda: (_x(2, 3, 10),))],
    "AdaptiveMaxPool2d": [(lambda: nn.AdaptiveMaxPool2d((None, 3)), lambda: (_x(2, 3, 7, 5),))],
    "AdaptiveMaxPool3d": [(lambda: nn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True),
                           lambda: (_x(2, 2, 5, 7, 4),))],
    "Upsample": [(lambda: nn.Upsample(scale_factor=(1.5, 2.0), mode="bilinear",
                                      align_corners=True), lambda: (_x(2, 3, 4, 5),)),
                 (lambda: nn.Upsample(size=(5, 3, 4), mode="nearest-exact"),
                  lambda: (_x(1, 2, 2, 3, 4),)),
                 (lambda: nn.Upsample(scale_factor=1.7, mode="linear",
                                      recompute_scale_factor=True), lambda: (_x(2, 3, 5),))],
    "UpsamplingNearest2d": [(lambda: nn.UpsamplingNearest2d(scale_factor=2),
                             lambda: (_x(2, 3, 4, 5),))],
    "UpsamplingBilinear2d": [(lambda: nn.UpsamplingBilinear2d(size=(7, 6)),
                              lambda: (_x(2, 3, 4, 5),))],
    "BatchNorm1d": [(lambda: nn.BatchNorm1d(4, eps=1e-3, momentum=0.3), lambda: (_x(6, 4, 5),)),
                    (lambda: nn.BatchNorm1d(4, affine=False, track_running_stats=False),
                     lambda: (_x(6, 4),))],
    "BatchNorm2d": [(lambda: nn.BatchNorm2d(3, momentum=None), lambda: (_x(4, 3, 5, 2),)),
                    (lambda: nn.BatchNorm2d(3, bias=False).eval(), lambda: (_x(4, 3, 5, 2),))],
    "LayerNorm": [(lambda: nn.LayerNorm((4, 5), eps=1e-3, bias=False), lambda: (_x(2, 3, 4, 5),)),
                  (lambda: nn.LayerNorm(5, elementwise_affine=False), lambda: (_x(3, 5),))],
    "Embedding": [(lambda: nn.Embedding(10, 4, padding_idx=-2, scale_grad_by_freq=True),
                   lambda: (torch.tensor([[1, 8, 3], [3, 3, 0]]),))],
    "Dropout": [(lambda: nn.Dropout(0.3).eval(), lambda: (_x(4, 5),)),
                (lambda: nn.Dropout(0.0, inplace=True), lambda: (_x(4, 5),))],
    "Flatten": [(lambda: nn.Flatten(0, 2), lambda: (_x(2, 3, 4, 5),))],
    "ReLU": [(lambda: nn.ReLU(inplace=True), lambda: (_x(4, 5),))],
    "Sigmoid": [(lambda: nn.Sigmoid(), lambda: (_x(4, 5),))],
    "Tanh": [(lambda: nn.Tanh(), lambda: (_x(4, 5),))],
    "LeakyReLU": [(lambda: nn.LeakyReLU(0.2, inplace=True), lambda: (_x(4, 5),)),
                  (lambda: nn.LeakyReLU(-0.5), lambda: (_x(4, 5),))],
    "Softmax": [(lambda: nn.Softmax(0), lambda: (_x(4, 5),)),
                (lambda: nn.Softmax(dim=-2), lambda: (_x(2, 4, 5),))],
    "Identity": [(lambda: nn.Identity(3, unused="ignored"), lambda: (_x(4, 5),))],
    "GELU": [(lambda: nn.GELU("tanh"), lambda: (_x(4, 5),)),
             (lambda: nn.GELU(), lambda: (_x(4, 5),))],
    "SiLU": [(lambda: nn.SiLU(inplace=True), lambda: (_x(4, 5),))],
    "MultiheadAttention": [
        (lambda: nn.MultiheadAttention(8, 2, bias=False, batch_first=True),
         lambda: (_x(2, 3, 8), _x(2, 5, 8), _x(2, 5, 8))),
        (lambda: nn.MultiheadAttention(6, 3, dropout=0.2).eval(),
         lambda: (_x(3, 2, 6), _x(4, 2, 6), _x(4, 2, 6)))],
    "RNN": [(lambda: nn.RNN(5, 7, 2, nonlinearity="relu", bias=False, batch_first=True,
                            dropout=0.25, bidirectional=True).eval(), lambda: (_x(3, 4, 5),))],
    "LSTM": [(lambda: nn.LSTM(5, 6, 2, batch_first=True, bidirectional=True),
              lambda: (_x(3, 4, 5),)),
             (lambda: nn.LSTM(5, 6, bias=False), lambda: (_x(4, 3, 5),))],
    "GRU": [(lambda: nn.GRU(5, 6, 2, dropout=0.5).eval(), lambda: (_x(4, 3, 5),)),
            (lambda: nn.GRU(5, 6, batch_first=True, bias=False), lambda: (_x(3, 4, 5),))],
    "Conv1d": [(lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2,
                                  padding_mode="reflect"), lambda: (_x(2, 4, 9),)),
               (lambda: nn.Conv1d(3, 5, 2, padding="same", bias=False), lambda: (_x(3, 7),))],
    "Conv3d": [(lambda: nn.Conv3d(2, 4, (2, 3, 1), stride=(1, 2, 1), padding=(1, 0, 1),
                                  padding_mode="circular"), lambda: (_x(2, 2, 4, 5, 3),))],
    "ConvTranspose1d": [(lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1,
                                                    output_padding=1, groups=2),
                         lambda: (_x(2, 4, 5),))],
    "ConvTranspose2d": [(lambda: nn.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0),
                                                    dilation=(1, 2), bias=False),
                         lambda: (_x(2, 3, 4, 5),))],
    "ConvTranspose3d": [(lambda: nn.ConvTranspose3d(2, 4, 2, stride=2, output_padding=(1, 0, 1)),
                         lambda: (_x(1, 2, 2, 3, 2),))],
    # issue 21's activations
    "ReLU6": [(lambda: nn.ReLU6(inplace=True), lambda: (_x(4, 5) * 4,))],
    "Hardtanh": [(lambda: nn.Hardtanh(-2.0, 0.5, inplace=True), lambda: (_x(4, 5) * 2,)),
                 (lambda: nn.Hardtanh(), lambda: (_x(4, 5),))],
    "Hardswish": [(lambda: nn.Hardswish(inplace=True), lambda: (_x(4, 5) * 4,))],
    "Hardsigmoid": [(lambda: nn.Hardsigmoid(), lambda: (_x(4, 5) * 4,))],
    "ELU": [(lambda: nn.ELU(0.3, inplace=True), lambda: (_x(4, 5),)),
            (lambda: nn.ELU(-0.5), lambda: (_x(4, 5),))],
    "SELU": [(lambda: nn.SELU(inplace=True), lambda: (_x(4, 5),))],
    "Softplus": [(lambda: nn.Softplus(2.0, 1.0), lambda: (_x(4, 5),))],
    "Mish": [(lambda: nn.Mish(inplace=True), lambda: (_x(4, 5),))],
    "PReLU": [(lambda: nn.PReLU(3, 0.1), lambda: (_x(2, 3, 4),)),
              (lambda: nn.PReLU(), lambda: (_x(4, 5),))],
    "LogSoftmax": [(lambda: nn.LogSoftmax(1), lambda: (_x(4, 5),)),
                   (lambda: nn.LogSoftmax(dim=-1), lambda: (_x(2, 3, 5),))],
    "BatchNorm3d": [(lambda: nn.BatchNorm3d(3, eps=1e-3, momentum=None),
                     lambda: (_x(2, 3, 2, 3, 2),)),
                    (lambda: nn.BatchNorm3d(3, bias=False).eval(), lambda: (_x(2, 3, 2, 3, 2),))],
    "GroupNorm": [(lambda: nn.GroupNorm(2, 6, eps=1e-3), lambda: (_x(3, 6, 5),)),
                  (lambda: nn.GroupNorm(3, 6, affine=False), lambda: (_x(2, 6, 2, 3),))],
    "InstanceNorm1d": [(lambda: nn.InstanceNorm1d(4, affine=True, track_running_stats=True,
                                                  momentum=0.3), lambda: (_x(3, 4, 5),)),
                       (lambda: nn.InstanceNorm1d(4), lambda: (_x(4, 6),))],
    "InstanceNorm2d": [(lambda: nn.InstanceNorm2d(3, affine=True, bias=False),
                        lambda: (_x(2, 3, 4, 5),)),
                       (lambda: nn.InstanceNorm2d(3, track_running_stats=True).eval(),
                        lambda: (_x(2, 3, 4, 5),))],
    "InstanceNorm3d": [(lambda: nn.InstanceNorm3d(3, affine=True, eps=1e-3),
                        lambda: (_x(2, 3, 2, 3, 2),))],
    "Dropout1d": [(lambda: nn.Dropout1d(0.3).eval(), lambda: (_x(3, 4, 5),))],
    "Dropout2d": [(lambda: nn.Dropout2d(0.0, inplace=True), lambda: (_x(2, 3, 4, 5),))],
    "Dropout3d": [(lambda: nn.Dropout3d(0.4).eval(), lambda: (_x(2, 3, 2, 2, 2),))],
    "AlphaDropout": [(lambda: nn.AlphaDropout(0.2).eval(), lambda: (_x(4, 5),))],
    "FeatureAlphaDropout": [(lambda: nn.FeatureAlphaDropout(0.2).eval(), lambda: (_x(3, 4, 5),))],
}

# issue 21: the recurrent cells, LSTM's projection and MultiheadAttention's options
ROUND_TRIP_CASES.update({
    "RNNCell": [(lambda: nn.RNNCell(5, 4, bias=False, nonlinearity="relu"),
                 lambda: (_x(3, 5), _x(3, 4)))],
    "LSTMCell": [(lambda: nn.LSTMCell(5, 4), lambda: (_x(3, 5),))],
    "GRUCell": [(lambda: nn.GRUCell(5, 4), lambda: (_x(5,), _x(4,)))],
})
ROUND_TRIP_CASES["LSTM"] += [(lambda: nn.LSTM(5, 6, 2, proj_size=3, bidirectional=True),
                              lambda: (_x(4, 3, 5),))]
ROUND_TRIP_CASES["MultiheadAttention"] += [
    (lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True, kdim=5, vdim=3),
     lambda: (_x(3, 2, 8), _x(4, 2, 5), _x(4, 2, 3)))]

# issue 21: raft's F.unfold, as nn.Unfold and its adjoint nn.Fold
ROUND_TRIP_CASES.update({
    "Unfold": [(lambda: nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=(2, 1)),
                lambda: (_x(2, 3, 7, 9),))],
    "Fold": [(lambda: nn.Fold((6, 11), 2, stride=(1, 3)), lambda: (_x(2, 3 * 4, 20),))],
})


def _round_trip_cases():
    from bptorch.convert import TWIN_NAMES

    return [pytest.param(name, i, id=f"{name}-{i}") for name in TWIN_NAMES
            for i in range(len(ROUND_TRIP_CASES.get(name, [None])))]


def test_every_twin_has_a_round_trip_case():
    from bptorch.convert import TWIN_NAMES

    assert set(ROUND_TRIP_CASES) == set(TWIN_NAMES)


def _outputs_and_grads(module, inputs, gs=None):
    """The module's outputs (every tensor of a nested result) and the gradients of the
    floating inputs and every parameter under a random upstream gradient ``gs``."""
    leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    # a non-leaf copy: inplace=True layers may write into their input
    out = torch.utils._pytree.tree_leaves(module(*[x * 1 if x.is_floating_point() else x
                                                   for x in leaves]))
    floating = [o for o in out if o.is_floating_point() and o.requires_grad]
    if gs is None:
        gs = [torch.randn_like(o) for o in floating]
    wrt = [x for x in leaves if x.requires_grad] + [p for p in module.parameters()
                                                     if p.requires_grad]
    grads = torch.autograd.grad(floating, wrt, gs, allow_unused=True)
    return [o.detach() for o in out], grads, gs


@pytest.mark.parametrize("name,case", _round_trip_cases())
def test_round_trip_of_every_twin(name, case):
    """torch.nn.X → from_torch_nn → bptorch.nn.X → to_torch_nn → torch.nn.X: the same
    type, constructor arguments, state_dict (keys and values), requires_grad flags and
    mode, and the original's outputs and gradients (float64, random upstream gradient),
    exactly, since both sides run torch's own layer on the same tensors."""
    from bptorch.convert import _torch_arguments, from_torch_nn

    make, inputs = ROUND_TRIP_CASES[name][case]
    torch.manual_seed(0)
    original = make().double()
    with torch.no_grad():  # values a fresh layer would not have: zero biases, unit stats
        for t in (*original.parameters(), *original.buffers()):
            t.uniform_(0.5, 1.5) if t.is_floating_point() else t.fill_(3)
    ps = list(original.parameters())
    if len(ps) > 1:
        ps[-1].requires_grad_(False)  # a frozen parameter stays frozen
    ours = from_torch_nn(original)
    assert type(ours) is getattr(bnn, name)
    back = to_torch_nn(ours)
    assert type(back) is type(original)
    assert _torch_arguments(back) == _torch_arguments(original)
    assert back.training == original.training
    s_back, s_orig = back.state_dict(), original.state_dict()
    assert list(s_back) == list(s_orig)
    for k in s_orig:
        assert s_back[k].dtype == s_orig[k].dtype, k
        torch.testing.assert_close(s_back[k], s_orig[k], rtol=0, atol=0, msg=k)
    assert [(n, p.requires_grad) for n, p in back.named_parameters()] == \
        [(n, p.requires_grad) for n, p in original.named_parameters()]
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(back.parameters(), ps))
    xs = inputs()
    out_o, grads_o, gs = _outputs_and_grads(original, xs)
    out_b, grads_b, _ = _outputs_and_grads(back, xs, gs)
    assert len(out_b) == len(out_o) and len(grads_b) == len(grads_o)
    for a, b in zip(out_b, out_o):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(grads_b, grads_o):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for k, v in back.state_dict().items():  # running statistics after a training step
        torch.testing.assert_close(v, original.state_dict()[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_round_trip_of_a_transformer_encoder(activation):
    """A composite that from_torch_nn converts by recursing comes back whole: torch's
    layers, torch's activation function and its fused fast path, the same outputs and
    gradients in training, and in eval mode under no_grad (the fast path)."""
    from bptorch.convert import from_torch_nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, 0.0, activation, batch_first=True,
                                       dtype=torch.float64)
    original = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    back = to_torch_nn(from_torch_nn(original))
    assert [type(m) for m in back.modules()] == [type(m) for m in original.modules()]
    for a, b in zip(back.layers, original.layers):
        assert a.activation is b.activation and a.activation_relu_or_gelu == \
            b.activation_relu_or_gelu > 0
    assert back.use_nested_tensor == original.use_nested_tensor
    assert list(back.state_dict()) == list(original.state_dict())
    for k, v in original.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)
    x = _x(3, 5, 8)
    out_o, grads_o, gs = _outputs_and_grads(original, (x,))
    out_b, grads_b, _ = _outputs_and_grads(back, (x,), gs)
    for a, b in zip([*out_b, *grads_b], [*out_o, *grads_o], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    back.eval(), original.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), original(x), rtol=0, atol=0)


def test_a_bptorch_module_without_a_twin_is_named():
    """Every bptorch module that cannot be converted is named, with its place in the model,
    and nothing of bptorch comes back."""

    class MyDense(bnn.Linear):  # a subclass: its forward may be anything
        pass

    model = nn.Sequential(bnn.Linear(3, 4), nn.ModuleDict({"cost": bnn.QuadraticCost(),
                                                           "mine": MyDense(4, 2)}))
    with pytest.raises(NotImplementedError) as info:
        to_torch_nn(model)
    msg = str(info.value)
    assert "bptorch.nn.QuadraticCost (torch has no ½‖a − y‖² loss" in msg and "'1.cost'" in msg
    assert "test_a_bptorch_module_without_a_twin_is_named.<locals>.MyDense" in msg
    assert "'1.mine'" in msg and "Linear " not in msg  # that one has a twin
    with pytest.raises(NotImplementedError, match="'<root>'"):
        to_torch_nn(bnn.CrossEntropyCost())  # reduction="mean": no torch loss


def test_to_torch_nn_carries_options_it_once_dropped():
    """The modules to_torch_nn once passed through (LayerNorm, BatchNorm, Embedding, the
    recurrent layers, attention, average pooling) come back as torch's in a model."""
    torch.manual_seed(0)
    model = nn.Sequential(bnn.Embedding(10, 6), bnn.LayerNorm(6), bnn.LSTM(6, 4, batch_first=True))
    plain = to_torch_nn(model)
    assert {type(m).__module__.split(".")[0] for m in plain.modules()} == {"torch"}
    tokens = torch.tensor([[1, 2, 3], [4, 5, 9]])
    torch.testing.assert_close(plain(tokens)[0], model(tokens)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["fa", "usf"])
def test_feedback_layers_convert_with_a_warning(rule):
    """A feedback rule changes only the backward: the twin gives the same outputs, and
    a warning says where the rule was dropped."""
    torch.manual_seed(0)
    model = nn.Sequential(bnn.Conv2d(1, 2, 3, feedback=rule), bnn.Flatten(),
                          bnn.Dense(16, 3, "tanh", feedback=rule))
    with pytest.warns(UserWarning, match=rf"'{rule}' at '0', '2'"):
        plain = to_torch_nn(model)
    assert list(plain[0].state_dict()) == ["weight", "bias"]  # no feedback_weight
    x = torch.randn(2, 1, 4, 6)
    torch.testing.assert_close(plain(x), model(x))
    net = bptorch.Network([4, 3, 2], feedback="dfa")
    with pytest.warns(UserWarning, match="'dfa'"):
        seq = to_torch_nn(net)
    with torch.no_grad():
        torch.testing.assert_close(seq(x.view(-1, 4)), net(x.view(-1, 4)))


def test_copy_false_shares_and_shared_modules_stay_shared():
    lin = bnn.Linear(3, 3)
    model = nn.Sequential(lin, bnn.ReLU(), lin, bnn.BatchNorm1d(3))
    plain = to_torch_nn(model, copy=False)
    assert plain[0] is plain[2] and type(plain[0]) is nn.Linear
    assert plain[0].weight.data_ptr() == lin.weight.data_ptr()
    assert plain[3].running_mean.data_ptr() == model[3].running_mean.data_ptr()
    copied = to_torch_nn(model)
    assert copied[0].weight.data_ptr() != lin.weight.data_ptr()
    lin.register_forward_hook(lambda *args: None)
    with pytest.warns(UserWarning, match=r"hooks on 0 \(Linear\) are not carried over"):
        to_torch_nn(model)


@pytest.mark.parametrize("cost,loss,target", [
    (bnn.LogLikelihoodCost(logits=True), nn.CrossEntropyLoss, "index"),
    (bnn.LogLikelihoodCost(logits=True, reduction="none"), nn.CrossEntropyLoss, "soft"),
    (bnn.LogLikelihoodCost(logits=True, reduction="sum"), nn.CrossEntropyLoss, "soft"),
    (bnn.CrossEntropyCost(logits=True, reduction="sum"), nn.BCEWithLogitsLoss, "soft"),
    (bnn.CrossEntropyCost(reduction="sum"), nn.BCELoss, "soft"),
])
def test_costs_with_a_torch_loss_convert(cost, loss, target):
    """Where a torch loss computes the book's cost ((N, C) rows), the cost converts to it:
    the same value and gradient (float64, random upstream gradient for reduction='none')."""
    plain = to_torch_nn(cost)
    assert type(plain) is loss and plain.reduction == cost.reduction
    z = _x(5, 4)
    out = z.sigmoid() if type(plain) is nn.BCELoss else z
    y = _ints(5, high=4) if target == "index" else torch.rand(5, 4, dtype=torch.float64)
    got = plain(out.requires_grad_(), y)
    want = cost(out, y)
    g = torch.randn_like(want)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, out, g), torch.autograd.grad(want, out, g))


@pytest.mark.parametrize("cost,act", [("quadratic", "sigmoid"), ("cross_entropy", "relu"),
                                      ("log_likelihood", "leaky_relu")])
def test_network_to_sequential_is_the_copy_the_scripts_made(cost, act):
    """The one plain-torch copy of a Network gives what experiments/mnist.py's and
    benchmarks/run.py's copies gave: the same layers and weights, the same outputs, and
    the same state of torch's generator afterwards (each nn.Linear draws its init before
    taking the Network's weights, so later shuffles are unchanged)."""
    from bptorch.convert import network_to_sequential

    def the_scripts_copy(net):  # experiments/mnist.py's native_model before the merge
        acts = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}
        mods = []
        for l, (n_in, n_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
            last = l == len(net.sizes) - 2
            out = (nn.Softmax(-1) if net.cost == "log_likelihood" else nn.Sigmoid()) if last \
                else acts[net.activation]()
            mods += [nn.Linear(n_in, n_out), out]
        model = nn.Sequential(*mods).to(next(net.parameters()))
        model.load_state_dict(network_state_dict_to_sequential(net.state_dict()))
        return model

    copies, draws = [], []
    for make in (the_scripts_copy, network_to_sequential):
        torch.manual_seed(3)
        net = bptorch.Network([7, 6, 5, 4], act, cost)
        copies.append(make(net))
        draws.append(torch.rand(3))
    ours, theirs = copies[1], copies[0]
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert [m.negative_slope for m in ours if isinstance(m, nn.LeakyReLU)] == \
        [m.negative_slope for m in theirs if isinstance(m, nn.LeakyReLU)]
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)
    torch.testing.assert_close(draws[1], draws[0], rtol=0, atol=0)
    x = torch.randn(5, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    torch.testing.assert_close(ours(x), net(x).detach(), rtol=0, atol=0)


def test_twin_with_an_argument_torch_lacks(monkeypatch):
    """A bptorch twin's own argument converts while it is at its default and is named as
    the reason otherwise (its forward would differ from torch's)."""

    class Flatten(bnn.Flatten):  # a twin with an argument torch.nn.Flatten lacks
        def __init__(self, start_dim: int = 1, end_dim: int = -1, scale: float = 1.0):
            super().__init__(start_dim, end_dim)
            self.scale = scale

    monkeypatch.setattr(bnn, "Flatten", Flatten)
    assert type(to_torch_nn(Flatten(2))) is nn.Flatten
    with pytest.raises(NotImplementedError, match=r"no argument 'scale' \(here scale=2.0\)"):
        to_torch_nn(nn.Sequential(Flatten(scale=2.0)))
