"""DFA's convolutional feedback (bptorch.feedback.DFA(conv_feedback=...)) against BioTorch.

BioTorch 0.0.16's DFA Conv2d (biotorch/layers/dfa/conv.py, ``dfa_backward_hook``) replaces
the gradient into a conv's input by ``conv2d_input(weight_backward, loss_gradient copied over
the conv's output)``; its DFA Linear by ``loss_gradient @ weight_backward``. The oracles are
BioTorch's own layers (its hook on the same B and e), ``torch.nn.grad.conv2d_input`` and
autograd's adjoint of ``F.conv2d``, in float64 at non-square shapes with stride, padding and
dilation; then one whole LeNet-DFA step against BioTorch's DFA LeNet from the same weights
and B, the draws of B against torch's inits, the experiment's choice, and bad arguments.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from bptorch import feedback
from bptorch import nn as bnn
from experiments import feedback as exp

DTYPE = torch.float64
N_L = 7
# (C, H, W, C_out, kernel, stride, padding, dilation): non-square everywhere; the second
# and third skip rows and columns at the end (output_padding), the fourth is "same" with
# an even kernel (one extra row/column of padding at the bottom/right)
GEOMETRIES = [
    (3, 11, 9, 4, (3, 2), (1, 1), (0, 0), (1, 1)),
    (3, 11, 9, 4, (3, 2), (2, 1), (1, 2), (1, 2)),
    (2, 12, 10, 5, (5, 3), (3, 2), (2, 0), (1, 1)),
    (2, 9, 8, 3, (4, 3), (1, 1), "same", (1, 2)),
]


def _point_conv_head(c, h, w, c_out, kernel, stride, padding, dilation):
    """point (Identity: the hidden a^l) → Conv2d → flatten → Linear to n_L."""
    conv = bnn.Conv2d(c, c_out, kernel, stride=stride, padding=padding, dilation=dilation,
                      dtype=DTYPE)
    with torch.no_grad():
        n = conv(torch.zeros(1, c, h, w, dtype=DTYPE)).numel()
    return torch.nn.Sequential(OrderedDict(
        point=torch.nn.Identity(), conv=conv, flatten=bnn.Flatten(),
        out=bnn.Linear(n, N_L, dtype=DTYPE)))


def _signal(net, b, x, e):
    """The gradient DFA puts into ``point``'s output, with B = b and δ^L = e."""
    dfa = feedback.DFA(net, "out", ["point"], x[:1], conv_feedback={"point": "conv"})
    assert dfa.feedback_weight_0.shape == b.shape
    dfa.feedback_weight_0.copy_(b)
    x = x.detach().clone().requires_grad_()
    dfa(x).backward(e)  # δ^L = e at the output layer's output
    return x.grad


def _adjoint(b, x_shape, e, stride, padding, dilation):
    """Bᵀ ⋆ (e ⊗ 1) as autograd's adjoint of F.conv2d(·, B): any padding, "same" too."""
    x = torch.zeros(x_shape, dtype=DTYPE, requires_grad=True)
    z = F.conv2d(x, b, stride=stride, padding=padding, dilation=dilation)
    return torch.autograd.grad(z, x, e[:, :, None, None].expand_as(z))[0]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
def test_conv_feedback_is_the_transposed_conv_of_delta_L_copied_over_the_output(geometry):
    c, h, w, c_out, kernel, stride, padding, dilation = geometry
    torch.manual_seed(3)
    net = _point_conv_head(*geometry)
    x = torch.randn(5, c, h, w, dtype=DTYPE)
    b = torch.randn(N_L, c, *kernel, dtype=DTYPE)
    e = torch.randn(5, N_L, dtype=DTYPE)
    got = _signal(net, b, x, e)
    torch.testing.assert_close(got, _adjoint(b, x.shape, e, stride, padding, dilation))
    if padding != "same":  # torch.nn.grad.conv2d_input, BioTorch's call, takes ints only
        z_hw = net.conv(x).shape[2:]
        e_map = e[:, :, None, None].expand(-1, -1, *z_hw)
        torch.testing.assert_close(got, torch.nn.grad.conv2d_input(
            x.shape, b, e_map, stride=stride, padding=padding, dilation=dilation))


@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=lambda g: "-".join(map(str, g)))
def test_conv_feedback_equals_biotorchs_dfa_conv_hook(geometry):
    dfa_layers = pytest.importorskip("biotorch.layers.dfa")
    c, h, w, c_out, kernel, stride, padding, dilation = geometry
    torch.manual_seed(4)
    bio = dfa_layers.Conv2d(c, c_out, N_L, kernel, stride, padding, dilation,
                            layer_config={"type": "dfa"}).to(DTYPE)
    x = torch.randn(5, c, h, w, dtype=DTYPE, requires_grad=True)
    e = torch.randn(5, N_L, dtype=DTYPE)
    with pytest.warns(FutureWarning):  # BioTorch's non-full backward hook
        z = bio(x)
    bio.loss_gradient = e  # what BioModule broadcasts: ∂C/∂z^L
    z.backward(torch.randn_like(z))  # its hook discards this conv's own BP2
    bp2 = torch.nn.grad.conv2d_input(x.shape, bio.weight, torch.ones_like(z), stride=stride,
                                     padding=padding, dilation=dilation)
    assert not torch.allclose(x.grad, bp2)  # the hook fired: not the conv's own BP2

    net = _point_conv_head(*geometry)
    torch.testing.assert_close(_signal(net, bio.weight_backward.detach(), x, e), x.grad)


# -- one LeNet-DFA step against BioTorch's DFA LeNet ---------------------------------------
def _biotorch_lenet(init: str):
    """BioTorch's LeNetMNIST (biotorch/models/le_net.py) under BioModule(mode="dfa"), built
    from torch layers named as experiments.feedback.lenet's (its models package would
    import torchvision)."""
    biomodule = pytest.importorskip("biotorch.module.biomodule")
    nn = torch.nn
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 6, 5), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(6, 16, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        conv3=nn.Conv2d(16, 120, 5), relu3=nn.ReLU(), flatten=nn.Flatten(),
        fc1=nn.Linear(120, 84), relu4=nn.ReLU(), fc2=nn.Linear(84, 10)))
    config = {"type": "dfa", "options": {"constrain_weights": False, "init": init,
                                         "gradient_clip": False}}
    return biomodule.BioModule(net, mode="dfa", copy_weights=False, layer_config=config,
                               output_dim=10).to(DTYPE)


# BioTorch's layer whose weight_backward is each of our B^l, in DFA's hidden-layer order
BIOTORCH_B = {"pool1": "conv2", "pool2": "conv3", "flatten": "fc1", "fc1": "fc2"}
WEIGHTED = ("conv1", "conv2", "conv3", "fc1", "fc2")


@pytest.mark.parametrize("init", ["xavier", "torch"])
def test_lenet_dfa_step_equals_biotorchs_dfa_lenet(init):
    torch.manual_seed(5)
    bio = _biotorch_lenet("xavier" if init == "xavier" else "kaiming")
    c = _config("--rule", "dfa", "--recipe", "biotorch-adam", "--init", init)
    net, model = exp.build(c, torch.zeros(1, 1, 32, 32))
    model.to(DTYPE)
    assert list(BIOTORCH_B) == model.hidden_layers
    with torch.no_grad():
        for name in WEIGHTED:
            ours, theirs = net.get_submodule(name), bio.module.get_submodule(name)
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        for i, name in enumerate(model.hidden_layers):
            b = bio.module.get_submodule(BIOTORCH_B[name]).weight_backward
            assert getattr(model, f"feedback_weight_{i}").shape == b.shape
            getattr(model, f"feedback_weight_{i}").copy_(b)
    x = torch.randn(6, 1, 32, 32, dtype=DTYPE)
    y = torch.randint(0, 10, (6,))
    cost = bnn.LogLikelihoodCost(logits=True)  # experiments.feedback.train's
    model.train()
    with feedback.exact(model):  # backprop's conv1 gradient, for contrast
        cost(model(x), y).backward()
    bp_grad = net.conv1.weight.grad.clone()
    net.zero_grad(set_to_none=True)

    cost(model(x), y).backward()
    bio.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    with pytest.warns(FutureWarning):  # BioTorch's non-full backward hooks
        out = bio(x, y, loss_fn)  # BioModule sets every layer's loss_gradient = ∂C/∂z^L
    loss_fn(out, y).backward()  # BioTorch's training step (training/functions.py)
    for name in WEIGHTED:
        ours, theirs = net.get_submodule(name), bio.module.get_submodule(name)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, msg=name)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, msg=name)
    assert not torch.allclose(net.conv1.weight.grad, bp_grad)  # and DFA is not backprop


# -- the draws of B -----------------------------------------------------------------------
def test_b_is_drawn_as_biotorchs_weight_backward():
    """init "xavier": nn.init.xavier_uniform_ of BioTorch's weight_backward shapes; "torch":
    kaiming_uniform_(a=√5), BioTorch's other init; drawn in order from the global RNG."""
    shapes = [(10, 6, 5, 5), (10, 16, 5, 5), (10, 120), (10, 84)]
    for init, draw in (("xavier", torch.nn.init.xavier_uniform_),
                       ("torch", lambda t: torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5)))):
        torch.manual_seed(6)
        net, hidden = exp.lenet("dfa")
        state = torch.random.get_rng_state()
        dfa = feedback.DFA(net, "fc2", hidden, torch.zeros(1, 1, 32, 32), init=init,
                           conv_feedback=exp.LENET_CONV_FEEDBACK)
        torch.random.set_rng_state(state)
        for i, shape in enumerate(shapes):
            want = draw(torch.empty(shape))
            torch.testing.assert_close(getattr(dfa, f"feedback_weight_{i}"), want)


def test_default_dense_b_is_unchanged():
    """Without conv_feedback and init: (n_L, *a^l's shape), U(±1/√n_l), as before."""
    torch.manual_seed(7)
    net, hidden = exp.lenet("dfa")
    state = torch.random.get_rng_state()
    dfa = feedback.DFA(net, "fc2", hidden, torch.zeros(1, 1, 32, 32))
    torch.random.set_rng_state(state)
    for i, shape in enumerate([(6, 14, 14), (16, 5, 5), (120,), (84,)]):
        k = 1 / math.sqrt(math.prod(shape))
        want = torch.empty(10, *shape).uniform_(-k, k)
        assert torch.equal(getattr(dfa, f"feedback_weight_{i}"), want)


# -- the experiment's choice ------------------------------------------------------------------
def _config(*argv: str) -> dict:
    return exp.resolve_config(exp.build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("argv,want", [
    (("--rule", "dfa", "--recipe", "biotorch-adam"), "biotorch"),
    (("--rule", "dfa", "--recipe", "biotorch"), "biotorch"),
    (("--rule", "dfa"), "dense"),
    (("--rule", "dfa", "--recipe", "biotorch", "--dfa-feedback", "dense"), "dense"),
    (("--rule", "dfa", "--dfa-feedback", "biotorch"), "biotorch"),
    (("--rule", "fa", "--recipe", "biotorch"), None),
])
def test_experiment_builds_biotorchs_dfa_under_its_recipes(argv, want):
    c = _config(*argv)
    assert c["dfa_feedback"] == want
    net, model = exp.build(c, torch.zeros(1, 1, 32, 32))
    if want is None:
        assert model is net
        return
    shapes = [tuple(getattr(model, f"feedback_weight_{i}").shape) for i in range(4)]
    if want == "biotorch":
        assert shapes == [(10, 6, 5, 5), (10, 16, 5, 5), (10, 120), (10, 84)]
        assert model.init == c["init"]
    else:
        assert shapes == [(10, 6, 14, 14), (10, 16, 5, 5), (10, 120), (10, 84)]
        assert model.init == "torch"


# -- a broken feedback is caught; bad arguments -----------------------------------------------
def test_a_broken_conv_feedback_is_caught(monkeypatch):
    """Planted bug: the kernel flipped (correlation in place of the transposed conv). Away
    from the borders the signal is Σ_t B_t whatever the order of the taps; the border
    pixels, read by fewer taps, tell them apart (not at every geometry: GEOMETRIES[1]'s
    padding reads the taps symmetrically)."""
    geometry = GEOMETRIES[2]
    c, h, w, c_out, kernel, stride, padding, dilation = geometry
    torch.manual_seed(8)
    x = torch.randn(4, c, h, w, dtype=DTYPE)
    b = torch.randn(N_L, c, *kernel, dtype=DTYPE)
    e = torch.randn(4, N_L, dtype=DTYPE)
    right = _adjoint(b, x.shape, e, stride, padding, dilation)
    good = feedback.DFA._conv_direct
    monkeypatch.setattr(feedback.DFA, "_conv_direct",
                        lambda self, i, b, grad: good(self, i, b.flip(2, 3), grad))
    wrong = _signal(_point_conv_head(*geometry), b, x, e)
    assert not torch.allclose(wrong, right)


def test_conv_feedback_refuses_what_it_cannot_do():
    x = torch.zeros(1, 4, 8, 8)
    net = torch.nn.Sequential(OrderedDict(
        point=torch.nn.Identity(), conv=torch.nn.Conv2d(4, 4, 3, groups=2),
        flatten=torch.nn.Flatten(), out=torch.nn.Linear(144, 3)))
    with pytest.raises(ValueError, match="groups=1"):
        feedback.DFA(net, "out", ["point"], x, conv_feedback={"point": "conv"})
    with pytest.raises(ValueError, match="not one of the hidden layers"):
        feedback.DFA(net, "out", ["flatten"], x, conv_feedback={"point": "conv"})
    with pytest.raises(ValueError, match="needs a Conv2d"):
        feedback.DFA(net, "out", ["flatten"], x, conv_feedback={"flatten": "out"})
    with pytest.raises(ValueError, match="no module 'conv9'"):
        feedback.DFA(net, "out", ["point"], x, conv_feedback={"point": "conv9"})
    with pytest.raises(ValueError, match="unknown init 'he'"):
        feedback.DFA(net, "out", ["point"], x, init="he")
