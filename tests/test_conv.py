"""Convolutional layers: gradcheck/gradgradcheck in float64 for each Function and each
backward path (written-out, unfold reference, opt-in fused kernel), agreement with the
torch.nn twins under random upstream gradients, torch's signatures and attributes, bad
inputs, and a short real-MNIST training smoke test."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.convert import to_torch_nn
from bptorch.functions.conv import Conv2dFunction
from bptorch.functions.dropout import DropoutFunction, FlattenFunction
from bptorch.functions.pool import MaxPool2dFunction

F64 = torch.float64
PATHS = ["conv", "unfold", "fused"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids oversubscription on a busy CPU (3x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (N, C_in, H, W), (C_out, k_h, k_w), stride, padding, dilation, groups:
# non-square inputs and kernels
CONV_CASES = [
    ((2, 2, 5, 4), (2, 2, 3), (1, 1), (0, 0), (1, 1), 1),
    ((1, 2, 6, 5), (2, 3, 2), (2, 1), (1, 0), (1, 1), 1),
    ((1, 2, 7, 6), (2, 2, 3), (2, 3), (1, 1), (1, 1), 1),  # stride 3 leaves a column uncovered
    ((2, 2, 9, 8), (3, 2, 3), (1, 2), (1, 2), (3, 2), 1),  # dilation ≠ stride, uneven
    ((1, 4, 6, 7), (6, 3, 2), (2, 1), (1, 1), (1, 2), 2),  # groups
    ((2, 3, 6, 5), (3, 2, 2), (1, 1), "same", (1, 2), 3),  # even kernel: asymmetric "same"
    ((1, 2, 5, 6), (2, 3, 2), (1, 1), "valid", (2, 1), 1),
    ((2, 3, 7, 6), (4, 1, 1), (2, 2), (0, 0), (1, 1), 1),  # a ResNet shortcut: 1×1, stride 2
    ((1, 4, 5, 6), (2, 1, 1), (2, 1), (1, 0), (1, 1), 2),  # 1×1, padded, uneven, groups
]
CONV_IDS = ["plain", "stride-pad", "uneven", "dilation", "groups", "same-even", "valid",
            "1x1-stride2", "1x1-pad-groups"]


def _conv_args(case, device, bias=True, dtype=F64):
    shape, (c_out, kh, kw), stride, padding, dilation, groups = case
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(c_out, shape[1] // groups, kh, kw, dtype=dtype, device=device,
                    requires_grad=True)
    b = torch.randn(c_out, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, w, b, (stride, padding, dilation, groups)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_gradcheck(device, case, path):
    x, w, b, opts = _conv_args(case, device)
    fn = lambda x, w, b: Conv2dFunction.apply(x, w, b, *opts, path)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_conv2d_no_bias_gradcheck(device):
    x, w, _, opts = _conv_args(CONV_CASES[4], device, bias=False)
    for path in PATHS:
        fn = lambda x, w: Conv2dFunction.apply(x, w, None, *opts, path)  # noqa: E731
        assert gradcheck(fn, (x, w))
        assert gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_paths_match_torch(device, case):
    """Each path's output, input, weight and bias gradients equal torch's under a random
    upstream gradient: the written-out transposed convolution and correlation, the
    literal BP equations on patches and the fused kernel all give the same numbers."""
    x, w, b, opts = _conv_args(case, device)
    z_ref = torch.nn.functional.conv2d(x, w, b, *opts)
    g = torch.randn_like(z_ref)
    grads_ref = torch.autograd.grad(z_ref, (x, w, b), g)
    for path in PATHS:
        z = Conv2dFunction.apply(x, w, b, *opts, path)
        torch.testing.assert_close(z, z_ref, msg=path)
        for name, a, c in zip("xwb", torch.autograd.grad(z, (x, w, b), g), grads_ref):
            torch.testing.assert_close(a, c, msg=f"{path}: grad {name}")


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_bp4_forms_agree(device, case, monkeypatch):
    """The default path's two forms of BP4, the correlation and the unfolded matmul
    (``bp4_unfolded``: 1×1 kernels on the CPU, and the devices in ``BP4_UNFOLD_DEVICES``),
    each give torch's ∂C/∂W under a random upstream gradient on either device, and the
    unfolded one passes gradgradcheck."""
    import bptorch.functions.conv as conv

    x, w, b, opts = _conv_args(case, device)
    z_ref = torch.nn.functional.conv2d(x, w, b, *opts)
    g = torch.randn_like(z_ref)
    ref = torch.autograd.grad(z_ref, (x, w, b), g)
    fn = lambda x, w, b: Conv2dFunction.apply(x, w, b, *opts, "conv")  # noqa: E731
    for unfolded in (False, True):
        monkeypatch.setattr(conv, "bp4_unfolded", lambda a_prev, weight, u=unfolded: u)
        for name, a, c in zip("xwb", torch.autograd.grad(fn(x, w, b), (x, w, b), g), ref):
            torch.testing.assert_close(a, c, msg=f"BP4 unfolded={unfolded}: grad {name}")
    assert gradgradcheck(fn, (x, w, b))


def test_bp4_form_rule():
    """The unfolded BP4 for 1×1 kernels on the CPU, the correlation for the rest."""
    import bptorch.functions.conv as conv

    a = torch.zeros(2, 3, 8, 8)
    assert conv.bp4_unfolded(a, torch.zeros(4, 3, 1, 1))
    assert not conv.bp4_unfolded(a, torch.zeros(4, 3, 3, 3))
    assert not conv.bp4_unfolded(a.to("meta"), torch.zeros(4, 3, 1, 1, device="meta"))
    assert conv.bp4_unfolded(a[:0], torch.zeros(4, 3, 3, 3))  # an empty batch


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv2d_empty_batch_matches_torch(kernel):
    """A batch of 0 examples: zero gradients of the right shapes, as torch."""
    x = torch.randn(0, 3, 6, 5, requires_grad=True)
    ours = bnn.Conv2d(3, 4, kernel, padding=kernel // 2)
    theirs = torch.nn.Conv2d(3, 4, kernel, padding=kernel // 2)
    theirs.load_state_dict(ours.state_dict())
    g = torch.randn(0, 4, 6, 5)
    got = torch.autograd.grad(ours(x), (x, ours.weight, ours.bias), g)
    want = torch.autograd.grad(theirs(x), (x, theirs.weight, theirs.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def test_default_backwards_are_written_out():
    """The default conv and pool backwards call no fused backward kernel: the tests
    comparing them with torch compare two different computations."""
    x, w, b, opts = _conv_args(CONV_CASES[4], "cpu")
    z = Conv2dFunction.apply(x, w, b, *opts, "conv")
    a = MaxPool2dFunction.apply(z, (2, 2), (1, 1))[0]
    with _OpLog() as log:
        a.backward(torch.randn_like(a))
    aten = torch.ops.aten
    assert aten.convolution_backward not in log.ops
    assert aten.max_pool2d_with_indices_backward not in log.ops
    assert aten.scatter_add in log.ops and aten.convolution in log.ops
    z = Conv2dFunction.apply(x, w, b, *opts, "fused")
    with _OpLog() as log:
        z.backward(torch.randn_like(z))
    assert aten.convolution_backward in log.ops  # the opt-in path is what it says


def test_broken_conv_backward_is_rejected():
    """A backward whose BP4 forgets to sum over the examples (keeps only the first) fails."""
    from bptorch.functions.conv import conv2d_bwd

    class Broken(Conv2dFunction):
        @staticmethod
        def backward(ctx, grad_output):
            a_prev, weight = ctx.saved_tensors
            args = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups, (True, True, True))
            gi, _ = conv2d_bwd(grad_output, a_prev, weight, *args)
            _, gw = conv2d_bwd(grad_output[:1], a_prev[:1], weight, *args)
            return gi, gw, grad_output.sum((0, 2, 3)), None, None, None, None, None

    x, w, b, opts = _conv_args(CONV_CASES[0], "cpu")
    assert x.shape[0] > 1
    fn = lambda x, w, b: Broken.apply(x, w, b, *opts, "conv")  # noqa: E731
    assert not gradcheck(fn, (x, w, b), raise_exception=False)
    good = lambda x, w, b: Conv2dFunction.apply(x, w, b, *opts, "conv")  # noqa: E731
    assert gradcheck(good, (x, w, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_module_matches_torch(device, case, path):
    shape, (c_out, kh, kw), stride, padding, dilation, groups = case
    kwargs = {"unfold": path == "unfold", "fused_backward": path == "fused"}
    torch.manual_seed(3)
    ours = bnn.Conv2d(shape[1], c_out, (kh, kw), stride, padding, dilation, groups,
                      device=device, **kwargs)
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(shape[1], c_out, (kh, kw), stride, padding, dilation, groups,
                          device=device)
    # same init distribution drawn in the same order: identical parameters from one seed
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                 "dilation", "groups", "padding_mode"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
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


def test_conv2d_positional_arguments_in_torch_order():
    """Conv2d(in, out, k, stride, padding, dilation, groups, bias, padding_mode, device,
    dtype), as torch.nn.Conv2d."""
    ours = bnn.Conv2d(1, 2, 3, 1, 0, 1, 1, False)
    ref = torch.nn.Conv2d(1, 2, 3, 1, 0, 1, 1, False)
    assert ours.bias is None and ref.bias is None
    args = (4, 6, (3, 2), 2, 1, (2, 1), 2, True, "zeros", "cpu", F64)
    torch.manual_seed(0)
    ours = bnn.Conv2d(*args)
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(*args)
    assert ours.weight.dtype == F64 and ours.weight.shape == ref.weight.shape == (6, 2, 3, 2)
    assert (ours.stride, ours.padding, ours.dilation, ours.groups) == ((2, 2), (1, 1), (2, 1), 2)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    x = torch.randn(2, 4, 9, 7, dtype=F64)
    torch.testing.assert_close(ours(x), ref(x))
    assert bnn.Conv2d(2, 2, 3, padding="same").padding == "same"


def test_conv2d_same_padding_even_kernel():
    """torch's "same": output size = input size, the odd padding row at the bottom/right."""
    torch.manual_seed(1)
    ours = bnn.Conv2d(2, 3, (4, 2), padding="same", dilation=(1, 3))
    ref = torch.nn.Conv2d(2, 3, (4, 2), padding="same", dilation=(1, 3))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 2, 7, 8, requires_grad=True)
    z = ours(x)
    assert z.shape == (2, 3, 7, 8)
    torch.testing.assert_close(z, ref(x))
    torch.testing.assert_close(BF.conv2d(x, ours.weight, None, padding="same", dilation=(1, 3)),
                               torch.nn.functional.conv2d(x, ours.weight, None, 1, "same", (1, 3)))


def test_conv2d_unbatched_input():
    torch.manual_seed(2)
    ours = bnn.Conv2d(3, 4, (3, 2), 2, 1, groups=1)
    ref = torch.nn.Conv2d(3, 4, (3, 2), 2, 1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 9, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    z, z_ref = ours(x), ref(x2)
    assert z.shape == z_ref.shape == (4, 5, 5)
    torch.testing.assert_close(z, z_ref)
    g = torch.randn_like(z)
    z.backward(g)
    z_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(BF.conv2d(x, ours.weight, ours.bias, 2, 1), z)


def test_conv2d_state_dict_loads_both_ways():
    ours = bnn.Conv2d(4, 6, (3, 2), padding=1, groups=2)
    ref = torch.nn.Conv2d(4, 6, (3, 2), padding=1, groups=2)
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 6, 5)
    torch.testing.assert_close(ours(x), ref(x))
    ref2 = torch.nn.Conv2d(4, 6, (3, 2), padding=1, groups=2)
    ref2.load_state_dict(bnn.Conv2d(4, 6, (3, 2), padding=1, groups=2).state_dict())
    nb = bnn.Conv2d(3, 5, 3, bias=False)
    assert nb.bias is None and set(nb.state_dict()) == {"weight"}
    nb.load_state_dict(torch.nn.Conv2d(3, 5, 3, bias=False).state_dict())


def test_to_torch_nn_keeps_every_option():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        bnn.Conv2d(2, 4, (3, 2), 1, "same", (2, 1), 2, bias=False), bnn.ReLU(),
        bnn.MaxPool2d(3, 2, 1, 1, ceil_mode=True), bnn.Dropout(0.2, inplace=True),
        bnn.Conv2d(4, 6, 2, 2, 1, 1, 2),
    ).eval()
    plain = to_torch_nn(model)
    assert isinstance(plain[0], torch.nn.Conv2d) and plain[0].padding == "same"
    assert (plain[0].dilation, plain[0].groups, plain[4].groups) == ((2, 1), 2, 2)
    assert plain[2].ceil_mode and plain[3].inplace
    x = torch.randn(2, 2, 11, 9)
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------- max-pool
# shape, kernel, stride, padding, dilation, ceil_mode
POOL_CASES = [
    ((2, 2, 4, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 2, 5, 6), (3, 2), (2, 1), (0, 0), (1, 1), False),  # overlapping windows
    ((1, 2, 6, 7), (2, 3), (3, 2), (0, 0), (1, 1), False),
    ((2, 1, 7, 8), (3, 3), (1, 1), (1, 1), (1, 1), False),  # pixels win many windows
    ((1, 2, 8, 7), (3, 2), (2, 2), (1, 1), (2, 1), True),  # padding, dilation, ceil_mode
    ((1, 2, 5, 8), (2, 3), (2, 3), (0, 1), (1, 1), True),
]
POOL_IDS = ["2x2", "overlap", "uneven", "overlap-pad", "dilation-ceil", "ceil"]


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_maxpool_gradcheck(device, case):
    shape, *opts = case
    x = torch.randn(*shape, dtype=F64, device=device, requires_grad=True)  # no ties
    fn = lambda x: MaxPool2dFunction.apply(x, *opts)[0]  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_maxpool_matches_torch(device, case):
    shape, k, s, p, d, ceil = case
    x = torch.randn(*shape, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    (a, i) = bnn.MaxPool2d(k, s, p, d, True, ceil)(x)
    (a_ref, i_ref) = torch.nn.MaxPool2d(k, s, p, d, True, ceil)(x2)
    torch.testing.assert_close(a, a_ref, rtol=0, atol=0)
    assert torch.equal(i, i_ref)
    g = torch.randn_like(a)
    a.backward(g)
    a_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    a2 = BF.max_pool2d(x, k, s, p, d, ceil)
    torch.testing.assert_close(a2, a_ref, rtol=0, atol=0)


def test_maxpool_sums_delta_where_one_pixel_wins_many_windows():
    """3×3 windows at stride 1: the one large pixel wins all 9 windows around it and
    receives the sum of their δs."""
    x = torch.randn(1, 1, 5, 5, dtype=F64) * 0.1
    x[0, 0, 2, 2] = 10.0
    x.requires_grad_()
    a = MaxPool2dFunction.apply(x, (3, 3), (1, 1))[0]
    g = torch.randn_like(a)
    (gx,) = torch.autograd.grad(a, x, g)
    torch.testing.assert_close(gx[0, 0, 2, 2], g.sum())
    assert gx.count_nonzero() == 1


def test_maxpool_module_attributes_and_unbatched():
    pool = bnn.MaxPool2d(2)
    ref = torch.nn.MaxPool2d(2)
    for attr in ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"):
        assert getattr(pool, attr) == getattr(ref, attr), attr
    x = torch.randn(3, 7, 9, requires_grad=True)
    a = bnn.MaxPool2d(3, 2, 1, ceil_mode=True)(x)
    a_ref = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(x)
    assert a.shape == a_ref.shape == (3, 4, 5)
    torch.testing.assert_close(a, a_ref, rtol=0, atol=0)
    a, i = BF.max_pool2d(x, 2, return_indices=True)
    a_ref, i_ref = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(a, a_ref, rtol=0, atol=0)
    assert torch.equal(i, i_ref)


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


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("p", [0.4, 1.0])
def test_dropout_matches_torch_on_cpu_from_same_seed(p, inplace):
    """Same seed, same mask (p = 1: all zeros, drawing nothing, so the RNG stays in step);
    in place, the input tensor itself becomes the output, as torch's."""
    x0 = torch.randn(8, 3, 5, 4, requires_grad=True)
    x0r = x0.detach().clone().requires_grad_()
    x, x2 = x0 * 1, x0r * 1  # non-leaves, so in-place is allowed
    torch.manual_seed(11)
    a = bnn.Dropout(p, inplace)(x)
    after = torch.rand(3)
    torch.manual_seed(11)
    a_ref = torch.nn.Dropout(p, inplace)(x2)
    torch.testing.assert_close(torch.rand(3), after)
    torch.testing.assert_close(a, a_ref)
    assert (a is x) == inplace and (a_ref is x2) == inplace
    if p == 1.0:
        assert not a.any()
    g = torch.randn_like(a)
    a.backward(g)
    a_ref.backward(g)
    torch.testing.assert_close(x0.grad, x0r.grad)


def test_dropout_functional_inplace_and_leaf():
    x0 = torch.randn(6, 7, requires_grad=True)
    x = x0 * 1
    torch.manual_seed(3)
    a = BF.dropout(x, 0.5, True, True)
    torch.manual_seed(3)
    a_ref = torch.nn.functional.dropout(x0.detach() * 1, 0.5, True, True)
    assert a is x
    torch.testing.assert_close(a, a_ref)
    with pytest.raises(RuntimeError, match="leaf"):
        bnn.Dropout(0.5, inplace=True)(torch.randn(3, 3, requires_grad=True))


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
    assert bnn.Dropout(0.3, True).inplace and not bnn.Dropout().inplace


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
        lib.Conv2d(4, 6, (3, 2), padding=1, groups=2, device=device), lib.MaxPool2d(2),
        lib.Sigmoid(), lib.Flatten(), lib.Dropout(0.3), lib.Linear(6 * 3 * 3, 10, device=device),
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
    with pytest.raises(ValueError, match=r"in_channels=3 channels .*got 2"):
        conv(torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"kernel size \(5, 5\) .*larger than the padded"):
        conv(torch.randn(2, 3, 4, 8))
    with pytest.raises(ValueError, match=r"kernel size \(3, 3\) \(spanning \(5, 5\)"):
        bnn.Conv2d(3, 4, 3, dilation=2)(torch.randn(2, 3, 4, 8))
    bnn.Conv2d(3, 4, 5, padding=1)(torch.randn(2, 3, 3, 3))  # 3 + 2 = 5 fits
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) or \(C, H, W\)"):
        conv(torch.randn(2, 3 * 8 * 8))
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) or \(C, H, W\)"):
        bnn.MaxPool2d(2)(torch.randn(8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        conv(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point"):
        bnn.Dropout(0.5)(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="pooling window"):
        bnn.MaxPool2d(5)(torch.randn(1, 1, 4, 8))
    with pytest.raises(ValueError, match="at most half"):
        bnn.MaxPool2d(3, padding=2)(torch.randn(1, 1, 8, 8))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            bnn.Dropout(p)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            BF.dropout(torch.randn(2, 2), p)
    with pytest.raises(ValueError, match="stride"):
        bnn.Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="bias of shape"):
        BF.conv2d(torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(5))


def test_bad_conv_options_raise_as_torch():
    for kw, err in [({"groups": 2}, "in_channels must be divisible by groups"),
                    ({"groups": 0}, "groups must be a positive integer")]:
        with pytest.raises(ValueError, match=err):
            bnn.Conv2d(3, 4, 3, **kw)
        with pytest.raises(ValueError):
            torch.nn.Conv2d(3, 4, 3, **kw)
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        bnn.Conv2d(4, 3, 3, groups=2)
    with pytest.raises(ValueError, match="not supported for strided"):
        bnn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="not supported for strided"):
        BF.conv2d(torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="Invalid padding string 'full'"):
        bnn.Conv2d(3, 4, 3, padding="full")
    for mode in ("reflect", "replicate", "circular"):
        with pytest.raises(NotImplementedError, match=f"padding_mode='{mode}'"):
            bnn.Conv2d(3, 4, 3, padding_mode=mode)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        bnn.Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="pick one"):
        bnn.Conv2d(3, 4, 3, unfold=True, fused_backward=True)
    # functional: weight (C_out, C_in/groups, ...) must match input channels × groups
    with pytest.raises(ValueError, match=r"in_channels=6 channels .*groups=2\), got 4"):
        BF.conv2d(torch.randn(1, 4, 6, 6), torch.randn(4, 3, 3, 3), groups=2)
    with pytest.raises(ValueError, match="divisible by groups=2"):
        BF.conv2d(torch.randn(1, 4, 6, 6), torch.randn(3, 2, 3, 3), groups=2)


def test_functional_forms_match_torch():
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    w, b = torch.randn(4, 2, 3, 2), torch.randn(4)
    F = torch.nn.functional
    torch.testing.assert_close(BF.conv2d(x, w, b, 2, 1, 2, 2), F.conv2d(x, w, b, 2, 1, 2, 2))
    torch.testing.assert_close(BF.conv2d(x, w, b, 1, "valid", 1, 2),
                               F.conv2d(x, w, b, 1, "valid", 1, 2))
    torch.testing.assert_close(BF.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(BF.max_pool2d(x, 3, 2), F.max_pool2d(x, 3, 2))
    torch.testing.assert_close(BF.max_pool2d(x, 3, 2, 1, 2, True),
                               F.max_pool2d(x, 3, 2, 1, 2, True))
    assert BF.flatten(x).shape == (2, 4 * 9 * 8)


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
    opts = ((1, 1), (1, 1), (1, 1), 1)
    conv = lambda x: Conv2dFunction.apply(x, w, b, *opts, "conv")  # noqa: E731
    ref = torch.stack([torch.nn.functional.conv2d(xi, w, b, 1, 1) for xi in x])
    torch.testing.assert_close(torch.func.vmap(conv)(x), ref)
    pool = lambda x: MaxPool2dFunction.apply(x, (2, 2), (2, 2))[0]  # noqa: E731
    ref = torch.stack([torch.nn.functional.max_pool2d(xi, 2) for xi in x])
    torch.testing.assert_close(torch.func.vmap(pool)(x), ref)
    w2 = w.clone().requires_grad_()
    torch.nn.functional.conv2d(x[0], w2, b, 1, 1).pow(2).sum().backward()
    for path in PATHS:
        g = torch.func.grad(
            lambda w: Conv2dFunction.apply(x[0], w, b, *opts, path).pow(2).sum())(w)
        torch.testing.assert_close(g, w2.grad, rtol=1e-4, atol=1e-4, msg=path)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_fast_variants_match_the_reference(device, case):
    """Every fast variant against the reference pair (unfold + matmul + fold) at every
    test shape: the default path with each of BP4's two forms, the fused kernel, and each
    BP4 form alone; BP3 is one function for all."""
    import bptorch.functions.conv as conv

    x, w, b, (stride, padding, dilation, groups) = _conv_args(case, device)
    sym, (eh, ew) = conv.conv2d_padding(padding, w.shape[2:], stride, dilation)
    a_prev = torch.nn.functional.pad(x.detach(), (0, ew, 0, eh))
    z_ref = conv.conv2d_unfold_fwd(a_prev, w, b, stride, sym, dilation, groups)
    z = torch.nn.functional.conv2d(a_prev, w, b, stride, sym, dilation, groups)
    torch.testing.assert_close(z, z_ref)
    delta = torch.randn_like(z_ref)
    args = (stride, sym, dilation, groups, (True, True, True))
    gi_ref, gw_ref, gb_ref = conv.conv2d_unfold_bwd(delta, a_prev, w, *args)
    torch.testing.assert_close(conv.conv2d_bias_grad(delta), gb_ref)
    for name, fast in (("default", conv.conv2d_bwd), ("fused", conv.conv2d_fused_bwd)):
        gi, gw = fast(delta, a_prev, w, *args)
        torch.testing.assert_close(gi, gi_ref, msg=name)
        torch.testing.assert_close(gw, gw_ref, msg=name)
    for bp4 in (conv.conv2d_weight_grad, conv.conv2d_weight_grad_unfold):
        if bp4 is conv.conv2d_weight_grad and a_prev.shape[0] == 0:
            continue
        gw = bp4(delta, a_prev, w.shape[2:], stride, sym, dilation, groups)
        torch.testing.assert_close(gw, gw_ref, msg=bp4.__name__)
    # need: only what is asked for is computed
    assert conv.conv2d_unfold_bwd(delta, a_prev, w, *args[:-1], (False, True, False))[::2] \
        == (None, None)
