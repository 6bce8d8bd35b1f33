"""Convolutional layers: gradcheck/gradgradcheck in float64 for each Function, the
reference (unfold) path against the fast path, agreement with the torch.nn twins under
random upstream gradients, bad inputs, and a short real-MNIST training smoke test."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.functions.conv import (
    Conv2dFunction, DropoutFunction, FlattenFunction, MaxPool2dFunction,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids oversubscription on a busy CPU (3x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# (N, C_in, H, W), (C_out, k_h, k_w), stride, padding: non-square inputs and kernels
CONV_CASES = [
    ((2, 2, 5, 4), (2, 2, 3), (1, 1), (0, 0)),
    ((1, 2, 6, 5), (2, 3, 2), (2, 1), (1, 0)),
    ((1, 2, 7, 6), (2, 2, 3), (2, 3), (1, 1)),  # stride 3 leaves the last column uncovered
]
CONV_IDS = ["plain", "stride-pad", "uneven"]


def _conv_args(case, device, bias=True, dtype=F64):
    shape, (c_out, kh, kw), stride, padding = case
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(c_out, shape[1], kh, kw, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(c_out, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, w, b, stride, padding


@pytest.mark.parametrize("unfold", [False, True], ids=["fast", "unfold"])
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_gradcheck(device, case, unfold):
    x, w, b, s, p = _conv_args(case, device)
    fn = lambda x, w, b: Conv2dFunction.apply(x, w, b, s, p, unfold)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_conv2d_no_bias_gradcheck(device):
    x, w, _, s, p = _conv_args(CONV_CASES[1], device, bias=False)
    for unfold in (False, True):
        fn = lambda x, w: Conv2dFunction.apply(x, w, None, s, p, unfold)  # noqa: E731
        assert gradcheck(fn, (x, w))
        assert gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_unfold_path_matches_fast_path(device, case):
    """The literal BP equations on patches give the fast path's numbers, gradients included."""
    x, w, b, s, p = _conv_args(case, device)
    z_fast = Conv2dFunction.apply(x, w, b, s, p, False)
    z_ref = Conv2dFunction.apply(x, w, b, s, p, True)
    torch.testing.assert_close(z_ref, z_fast)
    g = torch.randn_like(z_fast)
    grads_fast = torch.autograd.grad(z_fast, (x, w, b), g)
    grads_ref = torch.autograd.grad(z_ref, (x, w, b), g)
    for a, c in zip(grads_ref, grads_fast):
        torch.testing.assert_close(a, c)


def test_broken_conv_backward_is_rejected():
    """A backward whose BP4 forgets to sum over the examples (keeps only the first) fails."""
    from bptorch.functions.conv import conv2d_unfold_bwd

    class Broken(Conv2dFunction):
        @staticmethod
        def backward(ctx, grad_output):
            a_prev, weight = ctx.saved_tensors
            gi, _, gb = conv2d_unfold_bwd(ctx, grad_output, a_prev, weight, ctx.stride,
                                          ctx.padding)
            _, gw, _ = conv2d_unfold_bwd(ctx, grad_output[:1], a_prev[:1], weight, ctx.stride,
                                         ctx.padding)
            return gi, gw, gb, None, None, None

    x, w, b, s, p = _conv_args(CONV_CASES[0], "cpu")
    assert x.shape[0] > 1
    fn = lambda x, w, b: Broken.apply(x, w, b, s, p, True)  # noqa: E731
    assert not gradcheck(fn, (x, w, b), raise_exception=False)
    good = lambda x, w, b: Conv2dFunction.apply(x, w, b, s, p, True)  # noqa: E731
    assert gradcheck(good, (x, w, b))


@pytest.mark.parametrize("unfold", [False, True], ids=["fast", "unfold"])
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_module_matches_torch(device, case, unfold):
    shape, (c_out, kh, kw), stride, padding = case
    torch.manual_seed(3)
    ours = bnn.Conv2d(shape[1], c_out, (kh, kw), stride, padding, device=device, unfold=unfold)
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(shape[1], c_out, (kh, kw), stride, padding, device=device)
    # same init distribution drawn in the same order: identical parameters from one seed
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    x = torch.randn(*shape, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    z, z_ref = ours(x), ref(x2)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(z)
    z.backward(g)
    z_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)


def test_conv2d_state_dict_loads_both_ways():
    ours, ref = bnn.Conv2d(3, 5, (3, 2), padding=1), torch.nn.Conv2d(3, 5, (3, 2), padding=1)
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(ours(x), ref(x))
    ref2 = torch.nn.Conv2d(3, 5, (3, 2), padding=1)
    ref2.load_state_dict(bnn.Conv2d(3, 5, (3, 2), padding=1).state_dict())
    nb = bnn.Conv2d(3, 5, 3, bias=False)
    assert nb.bias is None and set(nb.state_dict()) == {"weight"}
    nb.load_state_dict(torch.nn.Conv2d(3, 5, 3, bias=False).state_dict())


# ---------------------------------------------------------------- max-pool
POOL_CASES = [((2, 2, 4, 6), (2, 2), (2, 2)), ((1, 2, 5, 6), (3, 2), (2, 1)),
              ((1, 2, 6, 7), (2, 3), (3, 2))]


@pytest.mark.parametrize("shape,k,s", POOL_CASES, ids=["2x2", "overlap", "uneven"])
def test_maxpool_gradcheck(device, shape, k, s):
    x = torch.randn(*shape, dtype=F64, device=device, requires_grad=True)  # no ties
    fn = lambda x: MaxPool2dFunction.apply(x, k, s)[0]  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("shape,k,s", POOL_CASES, ids=["2x2", "overlap", "uneven"])
def test_maxpool_matches_torch(device, shape, k, s):
    x = torch.randn(*shape, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, a_ref = bnn.MaxPool2d(k, s)(x), torch.nn.MaxPool2d(k, s)(x2)
    torch.testing.assert_close(a, a_ref, rtol=0, atol=0)
    g = torch.randn_like(a)
    a.backward(g)
    a_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    assert bnn.MaxPool2d(2).stride == (2, 2)


# ---------------------------------------------------------------- dropout
def test_dropout_gradcheck(device):
    x = torch.randn(4, 3, 5, dtype=F64, device=device, requires_grad=True)
    m = (torch.rand(4, 3, 5, dtype=F64, device=device) > 0.3).to(F64) / 0.7
    m.requires_grad_()
    assert gradcheck(DropoutFunction.apply, (x, m))
    assert gradgradcheck(DropoutFunction.apply, (x, m))


def test_dropout_same_mask_forward_and_backward(device):
    p = 0.3
    x = torch.randn(64, 50, device=device, requires_grad=True)
    a = bnn.Dropout(p)(x)
    mask = a.detach() / x.detach()  # 0 or 1/(1 − p) per unit
    kept = mask != 0
    torch.testing.assert_close(mask[kept], torch.full_like(mask[kept], 1 / (1 - p)))
    assert 0.2 < 1 - kept.float().mean().item() < 0.4
    g = torch.randn_like(a)
    a.backward(g)
    torch.testing.assert_close(x.grad, g * mask)  # δ ⊙ m, the forward's mask


def test_dropout_matches_torch_on_cpu_from_same_seed():
    x = torch.randn(8, 3, 5, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch.manual_seed(11)
    a = bnn.Dropout(0.4)(x)
    torch.manual_seed(11)
    a_ref = torch.nn.Dropout(0.4)(x2)
    torch.testing.assert_close(a, a_ref)
    g = torch.randn_like(a)
    a.backward(g)
    a_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)


def test_dropout_eval_and_seed():
    d = bnn.Dropout(0.5)
    x = torch.randn(10, 20)
    torch.manual_seed(5)
    a1 = d(x)
    torch.manual_seed(5)
    torch.testing.assert_close(d(x), a1)
    d.eval()
    assert d(x) is x
    assert BF.dropout(x, 0.5, training=False) is x


# ---------------------------------------------------------------- flatten
@pytest.mark.parametrize("start,end", [(1, -1), (0, 2), (2, 3)])
def test_flatten_matches_torch(device, start, end):
    x = torch.randn(2, 3, 4, 5, dtype=F64, device=device, requires_grad=True)
    fn = lambda x: FlattenFunction.apply(x, start, end)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))
    a, a_ref = bnn.Flatten(start, end)(x), torch.nn.Flatten(start, end)(x)
    assert a.shape == a_ref.shape
    g = torch.randn_like(a)
    (gx,) = torch.autograd.grad(a, x, g)
    (gx_ref,) = torch.autograd.grad(a_ref, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)


# ---------------------------------------------------------------- a whole conv net
def _net(lib, device):
    return torch.nn.Sequential(
        lib.Conv2d(1, 4, 5, device=device), lib.MaxPool2d(2), lib.ReLU(),
        lib.Conv2d(4, 6, (3, 2), padding=1, device=device), lib.MaxPool2d(2), lib.Sigmoid(),
        lib.Flatten(), lib.Dropout(0.3), lib.Linear(6 * 3 * 3, 10, device=device),
    )


def test_conv_net_matches_torch(device):
    """A whole net, random upstream gradient; Dropout in eval so both are deterministic."""
    torch.manual_seed(0)
    ours = _net(bnn, device)
    ref = _net(torch.nn, device)
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    x = torch.rand(5, 1, 16, 15, device=device)
    a, a_ref = ours(x), ref(x)
    torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(a)
    a.backward(g)
    a_ref.backward(g)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs():
    conv = bnn.Conv2d(3, 4, 5)
    with pytest.raises(ValueError, match=r"in_channels=3 channels, got 2"):
        conv(torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"kernel size \(5, 5\) is larger than the padded"):
        conv(torch.randn(2, 3, 4, 8))
    bnn.Conv2d(3, 4, 5, padding=1)(torch.randn(2, 3, 3, 3))  # 3 + 2 = 5 fits
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        conv(torch.randn(2, 3 * 8 * 8))
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        bnn.MaxPool2d(2)(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        conv(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point"):
        bnn.Dropout(0.5)(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="pooling window"):
        bnn.MaxPool2d(5)(torch.randn(1, 1, 4, 8))
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            bnn.Dropout(p)
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            BF.dropout(torch.randn(2, 2), p)
    with pytest.raises(ValueError, match="stride"):
        bnn.Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="bias of shape"):
        BF.conv2d(torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(5))


def test_functional_forms_match_torch():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    w, b = torch.randn(4, 3, 3, 2), torch.randn(4)
    F = torch.nn.functional
    torch.testing.assert_close(BF.conv2d(x, w, b, 2, 1), F.conv2d(x, w, b, 2, 1))
    torch.testing.assert_close(BF.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(BF.max_pool2d(x, 3, 2), F.max_pool2d(x, 3, 2))
    assert BF.flatten(x).shape == (2, 3 * 9 * 8)


# ---------------------------------------------------------------- real data
def test_conv_net_learns_mnist_subset(mnist):
    """2000 training images, one epoch of the book's simple conv net with ReLU, batch 10,
    η = 0.1: measured 84.7% on the first 1000 validation images (seed 0); chance is 10%."""
    torch.manual_seed(0)
    x, y = mnist.train[0][:2000].view(-1, 1, 28, 28), mnist.train[1][:2000]
    net = torch.nn.Sequential(
        bnn.Conv2d(1, 20, 5), bnn.MaxPool2d(2), bnn.ReLU(), bnn.Flatten(),
        bnn.Dense(20 * 12 * 12, 100, "relu"), bnn.Linear(100, 10),
    )
    cost = bnn.LogLikelihoodCost(logits=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for i in range(0, 2000, 10):
        opt.zero_grad()
        cost(net(x[i:i + 10]), y[i:i + 10]).backward()
        opt.step()
    xv, yv = mnist.validation[0][:1000].view(-1, 1, 28, 28), mnist.validation[1][:1000]
    with torch.no_grad():
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    assert acc >= 0.80, acc


def test_conv_and_pool_compose_with_torch_func():
    """generate_vmap_rule: vmap over a stack of batches, and torch.func.grad of a conv."""
    x, w, b = torch.randn(3, 2, 2, 7, 6), torch.randn(4, 2, 3, 3), torch.randn(4)
    conv = lambda x: Conv2dFunction.apply(x, w, b, (1, 1), (1, 1), False)  # noqa: E731
    ref = torch.stack([torch.nn.functional.conv2d(xi, w, b, 1, 1) for xi in x])
    torch.testing.assert_close(torch.func.vmap(conv)(x), ref)
    pool = lambda x: MaxPool2dFunction.apply(x, (2, 2), (2, 2))[0]  # noqa: E731
    ref = torch.stack([torch.nn.functional.max_pool2d(xi, 2) for xi in x])
    torch.testing.assert_close(torch.func.vmap(pool)(x), ref)
    g = torch.func.grad(
        lambda w: Conv2dFunction.apply(x[0], w, b, (1, 1), (1, 1), True).pow(2).sum())(w)
    w2 = w.clone().requires_grad_()
    torch.nn.functional.conv2d(x[0], w2, b, 1, 1).pow(2).sum().backward()
    torch.testing.assert_close(g, w2.grad, rtol=1e-4, atol=1e-4)
