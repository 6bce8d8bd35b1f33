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
