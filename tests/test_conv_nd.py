"""Conv1d, Conv3d and ConvTranspose1d/2d/3d (bptorch/functions/conv.py, last section):
gradcheck and gradgradcheck in float64 for both paths (the gather/scatter-add reference and
the default written with torch's forward conv ops) and for the padding modes; each path
against torch under a random upstream gradient; the d = 2 reference against Conv2d's
unfold pair; the torch.nn twins drawn over their options (init, repr, state_dict, forward
and backward, unbatched input, train and eval); a first-order gradient with
create_graph=True and torch.func.grad against torch's; autocast; the convert round trip;
``output_size``; bad inputs; no ATen backward kernel in the backward; a broken BP4 that
gradcheck rejects."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad
from torch.utils._python_dispatch import TorchDispatchMode

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.convert import from_torch_nn, to_torch_nn
from bptorch.functions.conv import (
    ConvNdFunction, ConvTransposeNdFunction, ModePadFunction, conv2d_unfold_bwd,
    conv2d_unfold_fwd, conv_ref_fwd, conv_ref_input_grad, conv_ref_weight_grad,
)

F64 = torch.float64
PATHS = ["conv", "unfold"]
TORCH_CONV = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}
TORCH_CONV_T = {1: TF.conv_transpose1d, 2: TF.conv_transpose2d, 3: TF.conv_transpose3d}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (input shape (N, C_in, *S), C_out, kernel, stride, padding, dilation, groups): non-square
# maps and kernels, a stride that leaves end rows uncovered, dilation ≠ stride, groups,
# an even-kernel "same" (the odd padding at the end), "valid"
CONV_CASES = {
    "1d-stride-pad": ((2, 2, 7), 3, (3,), (2,), (1,), (1,), 1),
    "1d-dilation-groups": ((1, 4, 8), 2, (2,), (3,), (2,), (2,), 2),
    "1d-same-even": ((2, 3, 7), 3, (4,), (1,), "same", (1,), 3),
    "2d-uneven": ((1, 2, 7, 6), 2, (2, 3), (2, 3), (1, 1), (1, 1), 1),
    "2d-same-dilated": ((1, 2, 5, 6), 2, (2, 3), (1, 1), "same", (2, 1), 1),
    "3d-stride-pad": ((1, 2, 4, 4, 3), 1, (2, 3, 2), (2, 1, 1), (1, 0, 1), (1, 1, 1), 1),
    "3d-valid-groups": ((1, 4, 2, 4, 3), 2, (1, 2, 2), (1, 1, 2), "valid", (1, 2, 1), 2),
}
# (input shape, C_out, kernel, stride, padding, output_padding, groups, dilation); the last
# 1d case has output_padding ≥ stride (allowed below the dilation)
CONVT_CASES = {
    "1d-stride-outpad": ((2, 2, 4), 3, (3,), (2,), (1,), (1,), 1, (1,)),
    "1d-outpad-over-stride": ((1, 2, 4), 2, (2,), (1,), (0,), (1,), 1, (3,)),
    "2d-groups": ((1, 4, 2, 3), 4, (2, 3), (2, 1), (1, 0), (1, 0), 2, (1, 2)),
    "2d-pad-dilated": ((1, 2, 3, 3), 2, (3, 2), (1, 2), (1, 1), (0, 1), 1, (2, 1)),
    "3d-stride": ((1, 2, 2, 3, 2), 2, (2, 2, 3), (2, 1, 2), (0, 1, 1), (1, 0, 1), 1, (1, 1, 1)),
}


def _conv_args(case, bias=True):
    shape, c_out, k, stride, padding, dilation, groups = case
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    w = torch.randn(c_out, shape[1] // groups, *k, dtype=F64, requires_grad=True)
    b = torch.randn(c_out, dtype=F64, requires_grad=True) if bias else None
    return x, w, b, (stride, padding, dilation, groups)


def _convt_args(case, bias=True):
    shape, c_out, k, stride, padding, output_padding, groups, dilation = case
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    w = torch.randn(shape[1], c_out // groups, *k, dtype=F64, requires_grad=True)
    b = torch.randn(c_out, dtype=F64, requires_grad=True) if bias else None
    return x, w, b, (stride, padding, output_padding, groups, dilation)


def _grads(out, leaves, g):
    return torch.autograd.grad(out, [t for t in leaves if t is not None], g)


# ---------------------------------------------------------------- the Functions
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_nd_gradcheck(name, path):
    x, w, b, opts = _conv_args(CONV_CASES[name])
    fn = lambda x, w, b: ConvNdFunction.apply(x, w, b, *opts, path)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CONVT_CASES))
def test_conv_transpose_nd_gradcheck(name, path):
    x, w, b, opts = _convt_args(CONVT_CASES[name])
    fn = lambda x, w, b: ConvTransposeNdFunction.apply(x, w, b, *opts, path)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("path", PATHS)
def test_no_bias_gradcheck(path):
    x, w, _, opts = _conv_args(CONV_CASES["1d-dilation-groups"], bias=False)
    assert gradcheck(lambda x, w: ConvNdFunction.apply(x, w, None, *opts, path), (x, w))
    x, w, _, opts = _convt_args(CONVT_CASES["2d-groups"], bias=False)
    fn = lambda x, w: ConvTransposeNdFunction.apply(x, w, None, *opts, path)  # noqa: E731
    assert gradcheck(fn, (x, w))
    assert gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_nd_matches_torch(name, path):
    """Output and the input, weight and bias gradients equal torch's, random upstream δ."""
    x, w, b, opts = _conv_args(CONV_CASES[name])
    d = w.dim() - 2
    ours = ConvNdFunction.apply(x, w, b, *opts, path)
    theirs = TORCH_CONV[d](x, w, b, *opts)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(theirs)
    for o, t in zip(_grads(ours, (x, w, b), g), _grads(theirs, (x, w, b), g), strict=True):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CONVT_CASES))
def test_conv_transpose_nd_matches_torch(name, path):
    x, w, b, opts = _convt_args(CONVT_CASES[name])
    d = w.dim() - 2
    ours = ConvTransposeNdFunction.apply(x, w, b, *opts, path)
    theirs = TORCH_CONV_T[d](x, w, b, *opts)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(theirs)
    for o, t in zip(_grads(ours, (x, w, b), g), _grads(theirs, (x, w, b), g), strict=True):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-10)


def test_reference_at_two_dims_is_conv2ds_unfold_pair():
    """At d = 2 the generic gather/scatter-add reference gives what Conv2d's own
    unfold/fold reference gives: forward, BP2's factor and BP4."""
    x, w, b, (stride, padding, dilation, groups) = _conv_args(
        ((2, 4, 7, 6), 6, (3, 2), (2, 1), (1, 2), (1, 2), 2))
    z = conv_ref_fwd(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(z, conv2d_unfold_fwd(x, w, b, stride, padding, dilation, groups),
                               rtol=1e-12, atol=1e-12)
    delta = torch.randn_like(z)
    want_x, want_w, _ = conv2d_unfold_bwd(delta, x, w, stride, padding, dilation, groups,
                                          (True, True, False))
    got_x = conv_ref_input_grad(delta, w, x.shape[2:], stride, padding, dilation, groups)
    got_w = conv_ref_weight_grad(delta, x, w.shape[2:], stride, padding, dilation, groups)
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_w, want_w, rtol=1e-12, atol=1e-12)


def test_transposed_forward_is_the_adjoint_of_the_convolution():
    """⟨T a, y⟩ = ⟨a, Tᵀ y⟩: conv_transpose (Tᵀ) with the same W is conv's (T) adjoint."""
    x, w, _, (stride, padding, dilation, groups) = _conv_args(CONV_CASES["3d-stride-pad"])
    z = ConvNdFunction.apply(x, w, None, stride, padding, dilation, groups, "unfold")
    y = torch.randn_like(z)
    back = ConvTransposeNdFunction.apply(y, w, None, stride, padding, (0, 0, 0), groups,
                                         dilation, "unfold")
    back = TF.pad(back, [0, 0, 0, 0, 0, x.shape[2] - back.shape[2]])  # rows the stride skips
    torch.testing.assert_close((z * y).sum(), (x * back).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_mode_pad_gradcheck_and_matches_torch(mode):
    x = torch.randn(1, 2, 2, 4, 3, dtype=F64, requires_grad=True)
    pad = (2, 1, 0, 3, 1, 1)  # (left, right) of the last dim first, as F.pad
    fn = lambda x: ModePadFunction.apply(x, pad, mode)  # noqa: E731
    assert gradcheck(fn, (x,))
    small = torch.randn(1, 1, 3, 4, dtype=F64, requires_grad=True)
    assert gradgradcheck(lambda x: ModePadFunction.apply(x, (1, 3, 2, 0), mode), (small,))
    ours, theirs = fn(x), TF.pad(x, pad, mode=mode)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    g = torch.randn_like(theirs)
    torch.testing.assert_close(_grads(ours, (x,), g)[0], _grads(theirs, (x,), g)[0],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(BF.mode_pad(x, pad, mode), theirs, rtol=0, atol=0)


def test_empty_batch_weight_grad_is_zero():
    x = torch.randn(0, 2, 6, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 3, dtype=F64, requires_grad=True)
    z = ConvNdFunction.apply(x, w, None, (1,), (1,), (1,), 1, "conv")
    (gw,) = torch.autograd.grad(z, w, torch.randn_like(z))
    assert gw.shape == w.shape and not gw.any()


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", PATHS)
def test_backwards_call_no_aten_derivative_kernel(path):
    """No ``*_backward`` op runs in the backward of either Function or of the padding:
    the comparisons with torch compare two different computations."""
    x, w, b, opts = _conv_args(CONV_CASES["1d-stride-pad"])
    z = ConvNdFunction.apply(ModePadFunction.apply(x, (1, 2), "reflect"), w, b, *opts, path)
    y = ConvTransposeNdFunction.apply(z, torch.randn(3, 2, 2, dtype=F64, requires_grad=True),
                                      None, (2,), (0,), (1,), 1, (1,), path)
    with _OpLog() as log:
        y.backward(torch.randn_like(y))
    names = {str(op) for op in log.ops}
    assert not [n for n in names if "backward" in n], names
    assert torch.ops.aten.index_add in log.ops  # the padding's scatter-add ran
    assert x.grad is not None and w.grad is not None and b.grad is not None


def test_a_broken_bp4_is_rejected():
    """The transposed convolution's BP4 with the kernel flipped (convolution taken for
    correlation, the classic slip): gradcheck must reject it."""

    class Broken(ConvTransposeNdFunction):
        @staticmethod
        def backward(ctx, grad_output):
            grads = list(ConvTransposeNdFunction.backward(ctx, grad_output))
            grads[1] = grads[1].flip(-1)
            return tuple(grads)

    x, w, b, opts = _convt_args(CONVT_CASES["1d-stride-outpad"])
    with pytest.raises(Exception, match="Jacobian mismatch"):
        gradcheck(lambda x, w, b: Broken.apply(x, w, b, *opts, "conv"), (x, w, b))


# ---------------------------------------------------------------- the modules
MODULES = ["Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


@st.composite
def module_cases(draw, name):
    """(args, kwargs, input shape) of one module, options drawn across their values."""
    d = 1 if name.endswith("1d") else 2 if name.endswith("2d") else 3
    transposed = name.startswith("ConvTranspose")
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    tup = lambda lo, hi: tuple(draw(st.integers(lo, hi)) for _ in range(d))  # noqa: E731
    k, dilation = tup(1, 3), tup(1, 2)
    kw = {"groups": groups, "bias": draw(st.booleans())}
    if transposed:
        stride = tup(1, 2)
        padding = tuple(draw(st.integers(0, (dl * (kk - 1)) // 2))
                        for kk, dl in zip(k, dilation))
        kw["output_padding"] = tuple(draw(st.integers(0, max(s, dl) - 1))
                                     for s, dl in zip(stride, dilation))
        size = tup(1, 4)
    else:
        mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
        padding = draw(st.sampled_from(["same", "valid", "ints"]))
        stride = (1,) * d if padding == "same" else tup(1, 2)
        if padding == "ints":
            padding = tup(0, 2)
        kw["padding_mode"] = mode
        span = tuple(dl * (kk - 1) + 1 for kk, dl in zip(k, dilation))
        size = tuple(s + draw(st.integers(2, 4)) for s in span)  # reflect needs pad < size
    kw.update(stride=stride, padding=padding, dilation=dilation)
    batch = draw(st.sampled_from([(), (1,), (2,)]))  # () is unbatched
    return (c_in, c_out, k), kw, (*batch, c_in, *size)


def _same_module(name, args, kw):
    torch.manual_seed(7)
    theirs = getattr(nn, name)(*args, **kw, dtype=F64)
    torch.manual_seed(7)
    ours = getattr(bnn, name)(*args, **kw, dtype=F64)
    return ours, theirs


def _check_parity(ours, theirs, shape, **forward_kw):
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (_, p), (_, q) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # same seed, same init
    for training in (True, False):
        ours.train(training), theirs.train(training)
        x = torch.randn(*shape, dtype=F64, requires_grad=True)
        z_ours, z_theirs = ours(x, **forward_kw), theirs(x, **forward_kw)
        torch.testing.assert_close(z_ours, z_theirs, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(z_theirs)
        got = torch.autograd.grad(z_ours, (x, *ours.parameters()), g)
        want = torch.autograd.grad(z_theirs, (x, *theirs.parameters()), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MODULES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_module_matches_torch_nn(name, data):
    """Options drawn across their values (padding ints/"same"/"valid", every padding_mode,
    stride, dilation, groups, bias, output_padding, unbatched input): the same init,
    repr, state_dict and, in train and eval, the same outputs and gradients."""
    args, kw, shape = data.draw(module_cases(name))
    ours, theirs = _same_module(name, args, kw)
    _check_parity(ours, theirs, shape)
    reference = getattr(bnn, name)(*args, **kw, dtype=F64, unfold=True)
    reference.load_state_dict(theirs.state_dict())
    x = torch.randn(*shape, dtype=F64)
    torch.testing.assert_close(reference(x), theirs(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"])
def test_output_size_picks_output_padding(name):
    d = int(name[-2])
    ours, theirs = _same_module(name, (2, 3, 3), {"stride": 2, "padding": 1})
    shape = (2, 2, *(3,) * d)
    smallest = [5] * d
    for extra in (0, 1):
        size = [n + extra for n in smallest]
        _check_parity(ours, theirs, shape, output_size=size)
        _check_parity(ours, theirs, shape, output_size=[2, 3, *size])  # with (N, C)
        _check_parity(ours, theirs, shape[1:], output_size=[3, *size])  # unbatched, with C
    with pytest.raises(ValueError, match="valid sizes range"):
        ours(torch.randn(*shape, dtype=F64), output_size=[7] * d)
    with pytest.raises(ValueError, match="output_size must have"):
        ours(torch.randn(*shape, dtype=F64), output_size=[5] * (d + 1))


def test_create_graph_and_func_grad_match_torch():
    """A first-order gradient taken with create_graph=True, and torch.func.grad with
    respect to the input, equal torch's (the backward taped by the Functions' own ops)."""
    for name, args, kw, shape in [
        ("Conv1d", (2, 4, 3), {"stride": 2, "padding": 1, "padding_mode": "circular",
                               "groups": 2}, (2, 2, 7)),
        ("Conv3d", (2, 3, (2, 1, 3)), {"padding": "same", "dilation": (1, 1, 2)},
         (1, 2, 3, 4, 5)),
        ("ConvTranspose1d", (2, 3, 3), {"stride": 2, "output_padding": 1}, (2, 2, 4)),
        ("ConvTranspose2d", (4, 2, (2, 3)), {"stride": (1, 2), "groups": 2, "padding": 1},
         (2, 4, 3, 4)),
        ("ConvTranspose3d", (2, 3, 2), {"stride": (2, 1, 1), "dilation": (1, 2, 1)},
         (1, 2, 2, 3, 2)),
    ]:
        ours, theirs = _same_module(name, args, kw)
        x = torch.randn(*shape, dtype=F64, requires_grad=True)
        g = torch.randn_like(theirs(x))
        want = torch.autograd.grad(theirs(x), (x, *theirs.parameters()), g)
        got = torch.autograd.grad(ours(x), (x, *ours.parameters()), g, create_graph=True)
        for o, w in zip(got, want, strict=True):
            torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-10, msg=name)
        assert got[0].requires_grad  # taped: a second derivative can follow
        got_x = grad(lambda x: (ours(x) * g).sum())(x.detach())
        torch.testing.assert_close(got_x, want[0], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("name", MODULES)
def test_autocast_bfloat16_matches_torch(name):
    """Under CPU autocast in bfloat16: the output's dtype is torch's, the gradients come
    in float32 (the parameters' dtype) and are close to torch's to their own scale."""
    d = 1 if name.endswith("1d") else 2 if name.endswith("2d") else 3
    kw = {"stride": 2} if "Transpose" in name else {"padding": 1, "padding_mode": "reflect"}
    torch.manual_seed(3)
    theirs = getattr(nn, name)(3, 4, 3, **kw)
    ours = getattr(bnn, name)(3, 4, 3, **kw)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, *(5,) * d)
    outs, grads = [], []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = m(xi)
        g = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z.dtype)
        outs.append(z)
        grads.append(torch.autograd.grad(z, (xi, *m.parameters()), g))
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    rel = 0.05
    for a, b in zip([outs[0], *grads[0]], [outs[1], *grads[1]], strict=True):
        assert a.dtype == b.dtype
        a, b = a.detach().float(), b.detach().float()
        assert (a - b).norm() <= rel * b.norm(), name
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


@pytest.mark.parametrize("name", MODULES)
def test_convert_round_trip_and_pickle(name):
    kw = {"stride": 2, "output_padding": 1} if "Transpose" in name else \
        {"padding": 1, "padding_mode": "replicate", "groups": 2}
    d = 1 if name.endswith("1d") else 2 if name.endswith("2d") else 3
    theirs = getattr(nn, name)(2, 4, 3, **kw, dtype=F64)
    ours = from_torch_nn(theirs)
    assert type(ours) is getattr(bnn, name)
    back = to_torch_nn(ours)
    assert type(back) is type(theirs) and repr(back) == repr(theirs)
    x = torch.randn(2, 2, *(5,) * d, dtype=F64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=0)
    again = pickle.loads(pickle.dumps(ours))
    torch.testing.assert_close(again(x), ours(x), rtol=0, atol=0)
    assert repr(getattr(bnn, name)(2, 4, 3, unfold=True)).endswith("unfold=True)")


def test_bad_inputs_raise_clear_errors():
    w1 = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"conv1d: expected input of shape \(N, C_in, L\)"):
        BF.conv1d(torch.randn(2, 2, 3, 4), w1)
    with pytest.raises(ValueError, match="in_channels=2 channels"):
        BF.conv1d(torch.randn(2, 3, 7), w1)
    with pytest.raises(ValueError, match="larger than the padded input"):
        BF.conv1d(torch.randn(2, 2, 2), w1)
    with pytest.raises(ValueError, match="not supported for strided"):
        BF.conv1d(torch.randn(2, 2, 7), w1, stride=2, padding="same")
    with pytest.raises(TypeError, match="floating-point"):
        BF.conv3d(torch.ones(1, 2, 3, 3, 3, dtype=torch.long), torch.randn(1, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="expected bias of shape"):
        BF.conv3d(torch.randn(1, 2, 3, 3, 3), torch.randn(4, 2, 1, 1, 1), torch.randn(3))
    wt = torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match="output_padding must be smaller than either"):
        BF.conv_transpose1d(torch.randn(1, 2, 4), wt, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="in_channels=2 channels"):
        BF.conv_transpose1d(torch.randn(1, 3, 4), wt)
    with pytest.raises(ValueError, match="output size"):
        BF.conv_transpose1d(torch.randn(1, 2, 1), wt, padding=3)
    with pytest.raises(ValueError, match="has no 'same'"):
        BF.conv_transpose2d(torch.randn(1, 2, 4, 4), torch.randn(2, 3, 3, 3), padding="same")
    with pytest.raises(ValueError, match="reflect padding"):
        BF.mode_pad(torch.randn(1, 2, 3), (3, 0), "reflect")
    with pytest.raises(ValueError, match='Only "zeros" padding mode'):
        bnn.ConvTranspose2d(2, 3, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        bnn.Conv3d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        bnn.Conv1d(2, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="Invalid padding string"):
        bnn.Conv1d(2, 4, 3, padding="full")


@pytest.mark.parametrize("unfold", [False, True])
def test_vmap_grad_per_example_equals_loop(unfold):
    """Per-example gradients with torch.func.vmap(grad) through a padded Conv1d and a
    ConvTranspose1d equal a loop over the examples; the meta device runs too."""
    from torch.func import functional_call, vmap

    model = nn.Sequential(bnn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect", unfold=unfold),
                          bnn.Tanh(), bnn.ConvTranspose1d(3, 2, 3, stride=2, unfold=unfold))
    model = model.to(F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 2, 6, dtype=F64)

    def loss(p, xi):
        return (functional_call(model, p, (xi[None],)) ** 2).sum()

    per_example = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        for k, g in grad(loss)(params, x[i]).items():
            torch.testing.assert_close(per_example[k][i], g, rtol=1e-10, atol=1e-10)
    meta = bnn.Conv3d(2, 3, 2, padding="same", padding_mode="circular", device="meta",
                      unfold=unfold)
    assert meta(torch.empty(1, 2, 3, 4, 5, device="meta")).shape == (1, 3, 3, 4, 5)
