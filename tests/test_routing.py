"""Routing a converted model's own functional calls to bptorch (bptorch.routing), and
bptorch.coverage, the tool that says which gradient came from where."""
from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import bptorch
from bptorch import routing
from bptorch.convert import from_torch_nn, to_torch_nn

D = torch.float64


class Functional(nn.Module):
    """A model whose forward calls functions itself, as torchvision's do: F.relu,
    F.max_pool2d, torch.flatten, F.linear on a submodule's weight (swin), softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 3 * 4, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        x = TF.max_pool2d(TF.relu(self.conv(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.tanh(TF.linear(x, self.fc.weight, self.fc.bias))
        return torch.log_softmax(self.head(x), dim=1) + x.sigmoid().sum(1, keepdim=True)


class LayerNorm2d(nn.LayerNorm):
    """convnext's: a subclass of a torch layer with a forward of its own."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = TF.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CumProd(nn.LayerNorm):
    """A subclass whose forward computes with a function bptorch does not route."""

    def forward(self, x):
        return torch.cumprod(TF.layer_norm(x, self.normalized_shape, self.weight, self.bias), -1)


def _input(*shape):
    return torch.randn(*shape, dtype=D, requires_grad=True)


def _grads(model, x, g):
    out = model(x)
    return [out, *torch.autograd.grad(out, [x, *model.parameters()], g)]


@pytest.mark.parametrize("make,shape", [(Functional, (4, 2, 9, 10)),
                                        (lambda: nn.Sequential(LayerNorm2d(3),
                                                               nn.Conv2d(3, 2, 1)),
                                         (2, 3, 5, 4))])
def test_routed_model_equals_torch_and_every_gradient_is_bptorchs(make, shape):
    torch.manual_seed(0)
    model = make().to(D)
    routed = from_torch_nn(model)
    assert routing.installed(routed)
    x = _input(*shape)
    g = torch.randn_like(model(x))
    for a, b in zip(_grads(routed, x, g), _grads(model, x, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    found = bptorch.coverage(routed, x, verbose=False)
    assert found.complete, found.report()
    assert found.share == 1.0 and not found.params_unused
    assert not found.torch and sum(found.bptorch.values()) >= 2


def test_without_routing_the_same_model_reports_torchs_nodes_and_parameters():
    torch.manual_seed(0)
    routed = from_torch_nn(Functional().to(D))
    plain = routing.uninstall(copy.deepcopy(routed))
    found = routing.coverage(plain, _input(4, 2, 9, 10), verbose=False)
    assert not found.complete
    # F.relu, F.max_pool2d, F.linear, torch.tanh, log_softmax and sigmoid stay torch's
    assert {"ReluBackward0", "TanhBackward0", "LogSoftmaxBackward0"} <= set(found.torch)
    assert "fc.weight" in found.params_torch and "head.weight" in found.params_bptorch
    assert 0 < found.share < 1


def test_coverage_of_a_torch_model_counts_torchs_nodes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(D)
    found = bptorch.coverage(model, _input(5, 3), verbose=False)
    assert found.share == 0.0 and not found.bptorch
    assert found.params_torch == ["0.weight", "0.bias", "2.weight", "2.bias"]
    text = str(found)
    assert "AddmmBackward0" in text and "0/4 (0.0%)" in text


def test_coverage_prints_its_report(capsys):
    model = from_torch_nn(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    found = bptorch.coverage(model, torch.randn(2, 3), loss_fn=lambda out: out.square().sum())
    printed = capsys.readouterr().out
    assert "LinearFunction" in printed and "2/2 (100.0%)" in printed
    assert found.params_bptorch == ["0.weight", "0.bias"]
    assert model[0].weight.grad is not None  # the backward ran


def test_coverage_needs_a_graph():
    with pytest.raises(ValueError, match="no autograd graph"):
        bptorch.coverage(nn.Identity(), torch.randn(2, 3), verbose=False)


def test_unused_parameters_are_listed():
    model = from_torch_nn(nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(3, 2)}))
    found = bptorch.coverage(model["a"], torch.randn(2, 3), verbose=False)
    assert found.params_bptorch == ["weight", "bias"] and not found.params_unused


def test_a_subclass_that_computes_in_torch_is_reported_by_strict():
    with pytest.raises(NotImplementedError, match=r"CumProd \(a subclass of torch.nn.LayerNorm "
                       r"whose forward calls torch.cumprod"):
        from_torch_nn(nn.Sequential(CumProd(4)))
    with pytest.warns(UserWarning, match="CumProd"):
        loose = from_torch_nn(nn.Sequential(CumProd(4)), strict=False)
    # and on its first forward, what stays torch's, exactly
    with pytest.warns(UserWarning, match=r"part of this model's backward is torch's:"
                      r"(.|\n)*CumprodBackward0"):
        loose(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose(torch.randn(2, 4))  # once


def test_strict_models_do_not_warn_at_forward():
    model = from_torch_nn(Functional())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 2, 9, 10))


def test_calls_that_need_no_gradient_stay_torchs():
    seen = []
    table = routing.routes()
    original = table[TF.relu]
    table[TF.relu] = lambda *a, **k: seen.append(1) or original(*a, **k)
    try:
        model = from_torch_nn(Functional())
        with torch.no_grad():
            model(torch.randn(2, 2, 9, 10))
        assert seen == []
        model(torch.randn(2, 2, 9, 10))
        assert seen == [1]
        # integer tensors and tensors that need no grad are not routed either
        with routing.RouteMode():
            assert TF.relu(torch.tensor([-1, 2])).tolist() == [0, 2]
        assert seen == [1]
    finally:
        table[TF.relu] = original


def test_a_declined_call_falls_back_to_torch_and_coverage_says_so():
    table = routing.routes()
    original = table[TF.relu]

    def declines(*args, **kwargs):
        raise NotImplementedError("an option bptorch lacks")
    table[TF.relu] = declines
    try:
        model = from_torch_nn(Functional())
        found = bptorch.coverage(model, torch.randn(2, 2, 9, 10), verbose=False)
    finally:
        table[TF.relu] = original
    assert found.fallbacks == {"relu": 1}
    assert "ReluBackward0" in found.torch and not found.complete


def test_the_mode_is_popped_when_the_forward_raises():
    model = from_torch_nn(Functional())
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(2, 5, 9, 10))  # wrong channel count
    assert not model.__dict__.get("_bptorch_modes")
    assert torch.overrides._get_current_function_mode_stack() == []


def test_routed_models_pickle_copy_and_export():
    torch.manual_seed(0)
    model = from_torch_nn(Functional().to(D))
    x = _input(3, 2, 9, 10)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                  torch.load(buf, weights_only=False)):
        assert routing.installed(other)
        torch.testing.assert_close(other(x), model(x))
        assert bptorch.coverage(other, x, verbose=False).complete
    back = to_torch_nn(model)
    assert not routing.installed(back) and routing.installed(model)
    assert not any(type(m).__module__.startswith("bptorch") for m in back.modules())
    torch.testing.assert_close(back(x), model(x), rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the routing hooks are not the user's hooks
        to_torch_nn(model)


def test_a_converted_twin_at_the_root_is_not_wrapped():
    assert not routing.installed(from_torch_nn(nn.Linear(3, 2)))


def test_the_swapped_mnist_script_is_complete_per_coverage():
    from test_dropin import BPTORCH_IMPORTS, SCRIPT
    namespace: dict = {}
    exec(SCRIPT.format(imports=BPTORCH_IMPORTS), namespace)
    model = namespace["Net"]().double()
    nll = namespace["F"].nll_loss
    target = torch.tensor([1, 2, 3])
    found = bptorch.coverage(model, torch.randn(3, 1, 14, 12, dtype=D), verbose=False,
                             loss_fn=lambda out: nll(out, target))
    assert found.complete and found.share == 1.0, found.report()
    assert dict(found.moves) == {"ViewBackward0": 1}  # torch.flatten: a view
