"""torch.func through bptorch's Functions: grad, vjp, jacrev, vmap (per-example
gradients), forward mode (jvp) and double backward (a Hessian-vector product)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

import bptorch
import bptorch.nn as bnn
from bptorch.convert import to_torch_nn
from bptorch.activations import ACTIVATIONS, get_activation
from bptorch.functions import ActivationFunction, CostFunction, DenseFunction, LinearFunction
from bptorch.functions.costs import COSTS
from helpers import away_from_zero, dense_inputs, probabilities, soft_targets

D = torch.float64
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _models():
    """Two small bptorch models that use every module kind, with a matching cost."""
    a = torch.nn.Sequential(bnn.Dense(5, 7, "tanh"), bnn.Dense(7, 4, "sigmoid")).to(D)
    b = torch.nn.Sequential(bnn.Linear(5, 6), bnn.ReLU(), bnn.Dense(6, 4, "leaky_relu"),
                            bnn.Linear(4, 3)).to(D)
    return [(a, bnn.CrossEntropyCost(), 4), (b, bnn.LogLikelihoodCost(logits=True), 3)]


def _torch_twin(model: torch.nn.Module) -> torch.nn.Module:
    return to_torch_nn(model, copy=True)


@pytest.mark.parametrize("which", [0, 1])
def test_vmap_grad_per_example_equals_loop(which):
    model, cost, n_out = _models()[which]
    x = torch.randn(9, 5, dtype=D)
    y = torch.randint(0, n_out, (9,))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb, yb):  # one example: add the batch dimension back
        return cost(functional_call(model, p, (xb[None],)), yb[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        cost(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_example[name][i], p.grad, rtol=1e-10, atol=1e-12)


def test_vmap_grad_conv_net_equals_loop():
    """The conv helper's Functions (Conv2d, MaxPool2d, Flatten) under vmap(grad)."""
    if not hasattr(bnn, "Conv2d"):
        pytest.skip("bptorch.nn.Conv2d not present")
    model = torch.nn.Sequential(bnn.Conv2d(1, 3, 3), bnn.Tanh(), bnn.MaxPool2d(2),
                                bnn.Flatten(), bnn.Dense(27, 4, "sigmoid")).to(D)
    cost = bnn.CrossEntropyCost()
    x, y = torch.randn(5, 1, 8, 8, dtype=D), torch.randint(0, 4, (5,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_example = vmap(grad(lambda p, xb, yb: cost(functional_call(model, p, (xb[None],)),
                                                   yb[None])), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        cost(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_example[name][i], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("which", [0, 1])
def test_grad_vjp_jacrev_match_torch(which):
    model, cost, n_out = _models()[which]
    twin = _torch_twin(model)
    x = torch.randn(6, 5, dtype=D)
    y = torch.randint(0, n_out, (6,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    # grad of the cost vs torch autograd on the torch.nn twin with the same cost
    g = grad(lambda p: cost(functional_call(model, p, (x,)), y))(params)
    twin_loss = cost(twin(x), y)  # bptorch cost on torch layers: only the layers differ
    twin_grads = torch.autograd.grad(twin_loss, list(twin.parameters()))
    for ours, ref in zip(g.values(), twin_grads):
        torch.testing.assert_close(ours, ref)
    # vjp with a random cotangent, and the full input Jacobian
    out, pullback = vjp(model, x)
    ct = torch.randn_like(out)
    (gx,) = pullback(ct)
    xr = x.clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(twin(xr), xr, ct)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(jacrev(model)(x), jacrev(twin)(x))
    torch.testing.assert_close(jacfwd(model)(x), jacrev(twin)(x))  # forward mode too


# -- forward mode: jvp staticmethods, checked by gradcheck against finite differences
_CHECKS = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)


def test_linear_forward_ad_and_batched_grad():
    a, w, b = dense_inputs(4, 5, 3)
    assert gradcheck(LinearFunction.apply, (a, w, b), **_CHECKS)
    x3 = torch.randn(2, 3, 5, dtype=D, requires_grad=True)  # (*, in_features)
    assert gradcheck(LinearFunction.apply, (x3, w, b), **_CHECKS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_forward_ad(name):
    act = get_activation(name)
    z = away_from_zero(4, 5, dtype=D).requires_grad_()
    assert gradcheck(lambda z: ActivationFunction.apply(z, act, None), (z,), **_CHECKS)
    dz = torch.randn_like(z)
    _, tangent = jvp(lambda z: ActivationFunction.apply(z, act, None), (z.detach(),), (dz,))
    _, ref = jvp(act.fn, (z.detach(),), (dz,))  # torch's own forward AD of σ
    torch.testing.assert_close(tangent, ref)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_forward_ad(name):
    act = get_activation(name)
    a, w, b = dense_inputs(4, 5, 3)
    assert gradcheck(lambda a, w, b: DenseFunction.apply(a, w, b, act, None), (a, w, b), **_CHECKS)


@pytest.mark.parametrize("name,logits", [(n, lg) for n, (_, z) in COSTS.items()
                                         for lg in ([False, True] if z else [False])])
def test_cost_forward_ad(name, logits):
    cost = bptorch.functions.get_cost(name, logits)
    a = (torch.randn(4, 3, dtype=D) if logits else probabilities(4, 3)).requires_grad_()
    y = soft_targets(4, 3).requires_grad_()
    assert gradcheck(lambda a, y: CostFunction.apply(a, y, cost, 0.25), (a, y), **_CHECKS)


def test_broken_jvp_is_rejected():
    class NoBiasTangent(LinearFunction):  # forgets db in dz = da Wᵀ + a dWᵀ + db
        @staticmethod
        def jvp(ctx, da, dw, db):
            a, w = ctx.saved_tensors
            return da @ w.t() + a @ dw.t()

    a, w, b = dense_inputs(4, 5, 3)
    assert not gradcheck(NoBiasTangent.apply, (a, w, b), check_forward_ad=True,
                         check_backward_ad=False, raise_exception=False)


# -- double backward: Hessian-vector products (examples/hvp.py)
def _hvp_module():
    spec = importlib.util.spec_from_file_location("hvp_example", ROOT / "examples" / "hvp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("cost,activation", [("cross_entropy", "tanh"),
                                             ("quadratic", "sigmoid"),
                                             ("log_likelihood", "relu")])
def test_hvp_example(cost, activation):
    errs = _hvp_module().max_errors(cost=cost, activation=activation)
    assert errs["max_abs_hv"] > 1e-3  # a non-trivial H v
    assert errs["vs_torch_func_hvp"] < 1e-12
    assert errs["vs_finite_difference"] < 1e-7


# -- first-order gradients taken with create_graph=True --------------------------------------
# Several backwards take another path when the backward itself is taped (LayerNorm's and
# BatchNorm's out-of-place reference, attention's recomputed P, the recurrent layers'
# rerun forward). gradgradcheck only checks that path against its own derivative, so a
# wrong first-order gradient there (an x̂ term dropped, a mask forgotten) would pass it:
# compare the gradient itself with torch's, through autograd.grad(create_graph=True) and
# through torch.func.grad (which tapes the backward too). BatchNorm without running
# statistics: torch.func refuses a forward that updates a buffer in place.
def _mha_forward(m, x):
    causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)  # True: masked
    pad = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
    pad[0, -2:] = True
    return m(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0]


CREATE_GRAPH_LAYERS = {
    "linear": (lambda: torch.nn.Linear(5, 4), (3, 2, 5), None),
    "dense_gelu": (lambda: torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.GELU()),
                   (3, 5), None),
    "conv2d": (lambda: torch.nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1), (2, 2, 7, 6), None),
    "max_pool2d": (lambda: torch.nn.MaxPool2d(2, stride=(2, 1)), (2, 3, 6, 5), None),
    "avg_pool2d": (lambda: torch.nn.AvgPool2d(3, stride=2, padding=1,
                                              count_include_pad=False), (2, 3, 7, 6), None),
    "max_pool3d": (lambda: torch.nn.MaxPool3d(2, stride=(1, 2, 2)), (1, 2, 4, 6, 5), None),
    "avg_pool1d": (lambda: torch.nn.AvgPool1d(3, stride=2, padding=1,
                                              count_include_pad=False), (2, 3, 9), None),
    "adaptive_max_pool2d": (lambda: torch.nn.AdaptiveMaxPool2d((3, 2)), (2, 3, 7, 5), None),
    "adaptive_avg_pool3d": (lambda: torch.nn.AdaptiveAvgPool3d((2, 3, 2)), (1, 2, 4, 5, 3),
                            None),
    "upsample_bilinear": (lambda: torch.nn.Upsample(scale_factor=1.5, mode="bilinear"),
                          (2, 3, 4, 5), None),
    "upsample_nearest": (lambda: torch.nn.Upsample(size=(7, 4)), (2, 3, 4, 5), None),
    "batch_norm1d": (lambda: torch.nn.BatchNorm1d(4, track_running_stats=False), (6, 4),
                     None),
    "batch_norm2d": (lambda: torch.nn.BatchNorm2d(3, track_running_stats=False),
                     (2, 3, 4, 5), None),
    "layer_norm": (lambda: torch.nn.LayerNorm(6), (3, 4, 6), None),
    "layer_norm_2d": (lambda: torch.nn.LayerNorm((4, 6)), (3, 4, 6), None),
    "mha_masked": (lambda: torch.nn.MultiheadAttention(8, 2, batch_first=True), (2, 5, 8),
                   _mha_forward),
    "rnn": (lambda: torch.nn.RNN(4, 5), (6, 3, 4), lambda m, x: m(x)[0]),
    "lstm": (lambda: torch.nn.LSTM(4, 5), (6, 3, 4), lambda m, x: m(x)[0]),
    "gru": (lambda: torch.nn.GRU(4, 5), (6, 3, 4), lambda m, x: m(x)[0]),
    "conv1d_reflect": (lambda: torch.nn.Conv1d(2, 3, 3, stride=2, padding=1,
                                               padding_mode="reflect"), (2, 2, 7), None),
    "conv3d": (lambda: torch.nn.Conv3d(2, 3, (2, 3, 2), padding=(1, 0, 1)), (2, 2, 3, 4, 3),
               None),
    "conv_transpose1d": (lambda: torch.nn.ConvTranspose1d(2, 3, 3, stride=2, output_padding=1),
                         (2, 2, 5), None),
    "conv_transpose2d": (lambda: torch.nn.ConvTranspose2d(2, 4, (3, 2), stride=(2, 1),
                                                          padding=1, groups=2),
                         (2, 2, 4, 5), None),
    "conv_transpose3d": (lambda: torch.nn.ConvTranspose3d(2, 3, 2, stride=(2, 1, 2)),
                         (1, 2, 2, 3, 2), None),
    # issue 21: the cells, LSTM's projection, MultiheadAttention's options, the decoder
    "rnn_cell": (lambda: torch.nn.RNNCell(4, 5), (3, 4), None),
    "lstm_cell": (lambda: torch.nn.LSTMCell(4, 5), (3, 4), lambda m, x: m(x)[1]),
    "gru_cell": (lambda: torch.nn.GRUCell(4, 5), (3, 4), None),
    "lstm_proj": (lambda: torch.nn.LSTM(4, 5, 2, proj_size=3, bidirectional=True), (6, 3, 4),
                  lambda m, x: m(x)[0]),
    "mha_options": (lambda: torch.nn.MultiheadAttention(8, 2, batch_first=True,
                                                        add_bias_kv=True, add_zero_attn=True),
                    (2, 5, 8), _mha_forward),
    "transformer_decoder_layer": (
        lambda: torch.nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True),
        (2, 5, 8), lambda m, x: m(x, x[:, :3])),
}


@pytest.mark.parametrize("name", sorted(CREATE_GRAPH_LAYERS))
def test_first_order_grad_with_create_graph_matches_torch(name):
    make, shape, forward = CREATE_GRAPH_LAYERS[name]
    forward = forward or (lambda m, x: m(x))
    torch.manual_seed(0)
    theirs = make().to(D)
    ours = bptorch.convert.from_torch_nn(theirs)
    assert all(type(m).__module__.startswith("bptorch") for m in ours.modules()
               if not list(m.children())), f"{name} was not converted"
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    g = torch.randn_like(forward(theirs, x))  # a random upstream gradient
    want = torch.autograd.grad(forward(theirs, x), (x, *theirs.parameters()), g)
    got = torch.autograd.grad(forward(ours, x), (x, *ours.parameters()), g, create_graph=True)
    for w, o, what in zip(want, got, ("input", *(n for n, _ in ours.named_parameters()))):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-10, msg=f"{name}: {what}")
    # torch.func.grad w.r.t. the input, which tapes the backward as create_graph does
    got_x = grad(lambda x: (forward(ours, x) * g).sum())(x.detach())
    torch.testing.assert_close(got_x, want[0], rtol=1e-10, atol=1e-10)
