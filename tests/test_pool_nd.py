"""The pools over 1 and 3 spatial dims, the adaptive max pools and Upsample/interpolate
(issue 21): parity with the torch.nn twins under random upstream gradients in float64
(non-square shapes, options drawn across their values, unbatched inputs, ties),
gradcheck and gradgradcheck, first-order gradients taken with create_graph=True and with
torch.func.grad equal to torch's, autocast on the CPU in bfloat16, the from_torch_nn /
to_torch_nn round trip, pickling, the d-generic references against the 2-d fast paths,
the interpolation matrices against torch's kernel, bad inputs, and broken backwards that
the checks reject."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.convert import from_torch_nn, to_torch_nn
from bptorch.functions import pool as P
from bptorch.functions import upsample as U

F64 = torch.float64

# name: (class name in torch.nn and bptorch.nn, args, kwargs, input shape). Shapes are
# non-square and small (gradgradcheck runs on each).
LAYERS = {
    "max1d": ("MaxPool1d", (3,), dict(stride=2, padding=1, dilation=2, ceil_mode=True),
              (2, 3, 11)),
    "max1d-indices-unbatched": ("MaxPool1d", (2,), dict(return_indices=True), (3, 9)),
    "max1d-overlap": ("MaxPool1d", (4,), dict(stride=1, padding=2), (2, 2, 8)),
    "max3d": ("MaxPool3d", ((2, 3, 2),), dict(stride=(1, 2, 2), padding=(1, 1, 0),
                                               ceil_mode=True), (1, 2, 4, 7, 5)),
    "max3d-dilation-unbatched": ("MaxPool3d", (2,), dict(dilation=(1, 2, 1),
                                                         return_indices=True), (2, 4, 6, 5)),
    "avg1d": ("AvgPool1d", (3,), dict(stride=2, padding=1, ceil_mode=True,
                                      count_include_pad=False), (2, 3, 10)),
    "avg1d-pad-unbatched": ("AvgPool1d", (4,), dict(stride=3, padding=2), (3, 11)),
    "avg3d": ("AvgPool3d", ((3, 2, 3),), dict(stride=(2, 1, 2), padding=(1, 1, 1),
                                               ceil_mode=True), (1, 2, 5, 4, 6)),
    "avg3d-exclude-pad": ("AvgPool3d", ((3, 2, 3),), dict(stride=(2, 1, 2), padding=(1, 0, 1),
                                                           count_include_pad=False),
                          (1, 2, 5, 4, 6)),
    "avg3d-divisor-unbatched": ("AvgPool3d", (2,), dict(stride=1, divisor_override=3),
                                (2, 3, 4, 5)),
    "adaptive-avg1d": ("AdaptiveAvgPool1d", (4,), {}, (2, 3, 10)),
    "adaptive-avg1d-global-unbatched": ("AdaptiveAvgPool1d", (1,), {}, (3, 10)),
    "adaptive-avg3d": ("AdaptiveAvgPool3d", ((2, None, 3),), {}, (1, 2, 5, 4, 7)),
    "adaptive-avg3d-overlap": ("AdaptiveAvgPool3d", ((4, 3, 5),), {}, (1, 2, 3, 5, 4)),
    "adaptive-avg3d-global-unbatched": ("AdaptiveAvgPool3d", (1,), {}, (2, 3, 4, 5)),
    "adaptive-max1d": ("AdaptiveMaxPool1d", (4, True), {}, (2, 3, 10)),
    "adaptive-max2d": ("AdaptiveMaxPool2d", ((3, 4),), {}, (2, 3, 7, 9)),
    "adaptive-max2d-none-unbatched": ("AdaptiveMaxPool2d", ((None, 4),),
                                      dict(return_indices=True), (3, 5, 9)),
    "adaptive-max3d": ("AdaptiveMaxPool3d", ((2, 3, 2),), {}, (1, 2, 5, 7, 4)),
    "nearest-scale": ("Upsample", (), dict(scale_factor=(1.7, 2.0)), (2, 3, 4, 5)),
    "nearest-size": ("Upsample", (), dict(size=(7, 11)), (2, 3, 5, 6)),
    "nearest-down": ("Upsample", (), dict(size=(3, 4)), (2, 3, 7, 9)),
    "nearest-1d": ("Upsample", (), dict(scale_factor=2.5), (2, 3, 5)),
    "nearest-3d": ("Upsample", (), dict(size=(3, 5, 4)), (1, 2, 2, 3, 4)),
    "nearest-exact": ("Upsample", (), dict(scale_factor=1.5, mode="nearest-exact"),
                      (2, 3, 5, 4)),
    "bilinear-size": ("Upsample", (), dict(size=(7, 11), mode="bilinear"), (2, 3, 5, 6)),
    "bilinear-align": ("Upsample", (), dict(scale_factor=2.5, mode="bilinear",
                                            align_corners=True), (2, 2, 3, 4)),
    "bilinear-scale": ("Upsample", (), dict(scale_factor=(1.6, 2.3), mode="bilinear",
                                            align_corners=False), (2, 2, 4, 3)),
    "bilinear-down": ("Upsample", (), dict(size=(4, 3), mode="bilinear"), (2, 3, 9, 7)),
    "bilinear-recompute": ("Upsample", (), dict(scale_factor=1.7, mode="bilinear",
                                                recompute_scale_factor=True), (2, 2, 4, 5)),
    "linear": ("Upsample", (), dict(scale_factor=1.5, mode="linear"), (2, 3, 7)),
    "linear-align": ("Upsample", (), dict(size=9, mode="linear", align_corners=True),
                     (2, 3, 4)),
    "trilinear": ("Upsample", (), dict(size=(3, 5, 4), mode="trilinear", align_corners=True),
                  (1, 2, 2, 3, 5)),
    "area": ("Upsample", (), dict(size=(3, 4), mode="area"), (2, 3, 7, 9)),
    "upsampling-nearest2d": ("UpsamplingNearest2d", (), dict(scale_factor=2), (2, 3, 3, 4)),
    "upsampling-bilinear2d": ("UpsamplingBilinear2d", (), dict(size=(5, 7)), (2, 3, 3, 4)),
}
IDS = sorted(LAYERS)


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    cls, args, kwargs, _ = LAYERS[name]
    return getattr(bnn, cls)(*args, **kwargs), getattr(nn, cls)(*args, **kwargs)


def _input(name: str, dtype=F64) -> torch.Tensor:
    return torch.randn(*LAYERS[name][3], dtype=dtype, requires_grad=True)


def _out(y):
    """The output that carries a gradient, and the indices (or None)."""
    return (y[0], y[1]) if isinstance(y, tuple) else (y, None)


@pytest.mark.parametrize("name", IDS)
def test_matches_torch(name):
    ours, theirs = _pair(name)
    for training in (True, False):  # no pool depends on the mode; both are checked
        ours.train(training), theirs.train(training)
        x = _input(name)
        x2 = x.detach().clone().requires_grad_()
        (y1, i1), (y2, i2) = _out(ours(x)), _out(theirs(x2))
        torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
        if i2 is not None:
            assert torch.equal(i1, i2)
        g = torch.randn_like(y2)  # a random upstream gradient
        y1.backward(g)
        y2.backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("name", IDS)
def test_gradcheck(name):
    ours, _ = _pair(name)
    shape = LAYERS[name][3]  # one example, one channel: the spatial shape is what matters
    lead = 1 if "unbatched" in name else 2
    x = torch.randn(*(1,) * lead, *shape[lead:], dtype=F64, requires_grad=True)
    fn = lambda x: _out(ours(x))[0]  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("name", IDS)
def test_first_order_grad_with_create_graph_and_func_grad(name):
    """The gradient taken with create_graph=True, and with torch.func.grad (which tapes the
    backward too), equals torch's."""
    from torch.func import grad

    ours, theirs = _pair(name)
    x = _input(name)
    g = torch.randn_like(_out(theirs(x))[0]).requires_grad_()  # so a linear map's is taped
    (want,) = torch.autograd.grad(_out(theirs(x))[0], x, g)
    (got,) = torch.autograd.grad(_out(ours(x))[0], x, g, create_graph=True)
    assert got.requires_grad  # the backward was taped
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got_x = grad(lambda x: (_out(ours(x))[0] * g.detach()).sum())(x.detach())
    torch.testing.assert_close(got_x, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["max1d", "max3d", "adaptive-max2d", "avg3d",
                                  "adaptive-avg1d", "bilinear-size", "nearest-3d"])
def test_vmap_of_grad(name):
    """Per-example input gradients under vmap(grad) equal torch's."""
    from torch.func import grad, vmap

    ours, theirs = _pair(name)
    x = _input(name).detach()
    g = torch.randn_like(_out(theirs(x))[0][:1])

    def loss(m):
        return lambda xi: (_out(m(xi[None]))[0] * g).sum()

    torch.testing.assert_close(vmap(grad(loss(ours)))(x), vmap(grad(loss(theirs)))(x))


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("low_input", [False, True], ids=["float32", "bfloat16"])
def test_autocast_bfloat16(name, low_input):
    """Under CPU autocast the output dtype is torch's (float32 for the 3-d pools, which
    torch's fp32 list names; the input's dtype for the rest), and the gradient is close to
    torch's, to the scale of bfloat16."""
    ours, theirs = _pair(name)
    x = torch.randn(*LAYERS[name][3])
    x = x.bfloat16() if low_input else x
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y1, _), (y2, _) = _out(ours(x1)), _out(theirs(x2))
    assert y1.dtype == y2.dtype
    torch.testing.assert_close(y1, y2, rtol=1e-2, atol=1e-2)
    g = torch.randn(y2.shape).to(y2.dtype)
    y1.backward(g)
    y2.backward(g)
    assert x1.grad.dtype == x2.grad.dtype == x.dtype
    scale = x2.grad.abs().max().item() + 1e-6
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), rtol=0, atol=2e-2 * scale)


@pytest.mark.parametrize("name", IDS)
def test_convert_round_trip_and_pickle(name):
    ours, theirs = _pair(name)
    model = nn.Sequential(theirs)
    converted = from_torch_nn(model, strict=True)
    assert type(converted[0]) is type(ours)
    back = to_torch_nn(converted)
    assert type(back[0]) is type(theirs)
    assert repr(back) == repr(model) and repr(converted[0]) == repr(theirs)
    x = _input(name).detach()
    for m in (converted, back, pickle.loads(pickle.dumps(converted))):
        (y, i), (want, want_i) = _out(m(x)), _out(model(x))
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        if want_i is not None:
            assert torch.equal(i, want_i)
    assert list(converted.state_dict()) == list(model.state_dict()) == []


@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_ties_route_delta_as_torch(d):
    """Integer-valued inputs make many ties inside a window: δ goes where torch's index
    says, and overlapping windows that share a winner sum their δs."""
    x = torch.randint(0, 3, (2, 3, *(7, 6, 5)[:d])).to(F64).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    ours = getattr(bnn, f"MaxPool{d}d")(3, stride=1, padding=1, return_indices=True)
    theirs = getattr(nn, f"MaxPool{d}d")(3, stride=1, padding=1, return_indices=True)
    (y1, i1), (y2, i2) = ours(x), theirs(x2)
    assert torch.equal(i1, i2)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
    amax = getattr(BF, f"adaptive_max_pool{d}d")(x.detach(), 3, True)[1]
    assert torch.equal(amax, getattr(TF, f"adaptive_max_pool{d}d")(x.detach(), 3, True)[1])


# the 2-d average pool cases of tests/test_pooling.py, plus wider windows
AVG2D_CASES = [
    ((2, 2), (2, 2), (0, 0), False, True, None),
    ((3, 2), (2, 3), (1, 1), False, True, None),
    ((3, 3), (2, 2), (1, 1), True, True, None),
    ((3, 3), (2, 2), (1, 1), True, False, None),
    ((2, 3), (1, 2), (1, 0), False, False, None),
    ((3, 3), (3, 2), (1, 1), True, True, 4),
    ((5, 4), (2, 3), (2, 2), True, False, None),
]


@pytest.mark.parametrize("case", AVG2D_CASES)
def test_generic_avg_backward_equals_the_2d_fast_path(case):
    """avg_pool_bwd (one 1-d fold per axis, any d) == avg_pool2d_bwd (one 2-d fold)."""
    k, s, p, ceil, include, div = case
    x = torch.randn(2, 3, 9, 8, dtype=F64)
    delta = torch.randn_like(TF.avg_pool2d(x, k, s, p, ceil, include, div))
    want = P.avg_pool2d_bwd(delta, x.shape, k, s, p, include, div)
    got = P.avg_pool_bwd(delta, x.shape, k, s, p, include, div)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (5, 3), (7, 8), (10, 11)])
def test_generic_adaptive_backward_equals_the_2d_form(size):
    x = torch.randn(2, 3, 7, 8, dtype=F64)
    delta = torch.randn(2, 3, *size, dtype=F64)
    torch.testing.assert_close(P.adaptive_avg_pool_bwd(delta, x.shape, 2),
                               P.adaptive_avg_pool2d_bwd(delta, x.shape),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode,align", [("nearest", None), ("nearest-exact", None),
                                        ("linear", False), ("linear", True)])
def test_interpolation_matrices_match_torch(mode, align, dtype):
    """a = z Mᵀ with the matrices of the backward equals torch's kernel, over output sizes
    and scale factors that land between, on and past the pixel grid."""
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for n in (1, 2, 3, 5, 7, 12, 31, 100):
        x = torch.randn(1, 2, n, dtype=dtype)
        for o in (1, 2, 3, 4, 6, 9, 13, 26, 33, 63, 99, 101, 255):
            torch.testing.assert_close(U.interpolate_ref(x, (o,), None, mode, align),
                                       TF.interpolate(x, size=o, mode=mode, align_corners=align),
                                       rtol=tol, atol=tol, msg=f"n={n} size={o}")
        for s in (0.3, 0.5, 0.999, 1.1, 1.5, 2.0, 2.05, 2.5, 1 / 3, 3.3, 7.0):
            o = int(n * s)
            if o >= 1:
                want = TF.interpolate(x, scale_factor=s, mode=mode, align_corners=align,
                                      recompute_scale_factor=False)
                torch.testing.assert_close(U.interpolate_ref(x, (o,), (s,), mode, align), want,
                                           rtol=tol, atol=tol, msg=f"n={n} scale={s}")



@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_forward_sources_equal_the_formula(mode, dtype):
    """The backward's nearest sources (read off the forward on a ramp) are the formula's,
    with and without a scale factor."""
    for n in (1, 3, 5, 12, 31, 100):
        for o in (1, 4, 9, 33, 99, 101):
            assert torch.equal(U.forward_source(n, o, None, mode, dtype, "cpu"),
                               U.nearest_source(n, o, None, mode == "nearest-exact", dtype,
                                                "cpu")), (n, o)
        for s in (0.5, 0.999, 1.1, 2.05, 1 / 3, 3.3):
            o = int(n * s)
            if o >= 1:
                assert torch.equal(U.forward_source(n, o, s, mode, dtype, "cpu"),
                                   U.nearest_source(n, o, s, mode == "nearest-exact", dtype,
                                                    "cpu")), (n, s)

def test_functional_forms_match_torch():
    """Torch's functional names, with positional arguments in torch's order."""
    x1 = torch.randn(2, 3, 10, dtype=F64)
    x2 = torch.randn(2, 3, 6, 7, dtype=F64)
    x3 = torch.randn(1, 2, 4, 5, 6, dtype=F64)
    pairs = [
        (BF.max_pool1d(x1, 3, 2, 1, 1, True, True), TF.max_pool1d(x1, 3, 2, 1, 1, True, True)),
        (BF.max_pool3d(x3, 2, 1, 1), TF.max_pool3d(x3, 2, 1, 1)),
        (BF.avg_pool1d(x1, 3, 2, 1, True, False), TF.avg_pool1d(x1, 3, 2, 1, True, False)),
        (BF.avg_pool3d(x3, 3, 2, 1, False, True, 5), TF.avg_pool3d(x3, 3, 2, 1, False, True, 5)),
        (BF.adaptive_avg_pool1d(x1, 4), TF.adaptive_avg_pool1d(x1, 4)),
        (BF.adaptive_avg_pool3d(x3, (2, None, 4)), TF.adaptive_avg_pool3d(x3, (2, None, 4))),
        (BF.adaptive_max_pool1d(x1, 3, True), TF.adaptive_max_pool1d(x1, 3, True)),
        (BF.adaptive_max_pool2d(x2, (4, 3)), TF.adaptive_max_pool2d(x2, (4, 3))),
        (BF.adaptive_max_pool3d(x3, 2, True), TF.adaptive_max_pool3d(x3, 2, True)),
        (BF.interpolate(x2, None, 2, "bilinear", True), TF.interpolate(x2, None, 2, "bilinear",
                                                                        True)),
        (BF.interpolate(x3, (5, 3, 7), None, "trilinear"),
         TF.interpolate(x3, (5, 3, 7), None, "trilinear")),
        (BF.upsample(x2, scale_factor=1.5), TF.interpolate(x2, scale_factor=1.5)),
        (BF.upsample_nearest(x2, (9, 9)), TF.interpolate(x2, (9, 9))),
        (BF.upsample_bilinear(x2, scale_factor=2),
         TF.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=True)),
        (BF.upsample(x2, None, 1.7, "bilinear", None, True),
         TF.interpolate(x2, None, 1.7, "bilinear", None, True)),
        (BF.max_pool2d_with_indices(x2, 3, 2, 1), TF.max_pool2d_with_indices(x2, 3, 2, 1)),
        (BF.max_pool1d_with_indices(x1, 2), TF.max_pool1d_with_indices(x1, 2)),
        (BF.max_pool3d_with_indices(x3, 2), TF.max_pool3d_with_indices(x3, 2)),
        (BF.adaptive_max_pool1d_with_indices(x1, 3), TF.adaptive_max_pool1d_with_indices(x1, 3)),
        (BF.adaptive_max_pool2d_with_indices(x2, 3), TF.adaptive_max_pool2d_with_indices(x2, 3)),
        (BF.adaptive_max_pool3d_with_indices(x3, 3), TF.adaptive_max_pool3d_with_indices(x3, 3)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_grad_fns_are_bptorch():
    """The backward of each new functional form is bptorch's Function, not torch's kernel."""
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    x1, x3 = torch.randn(2, 3, 8, requires_grad=True), torch.randn(1, 2, 4, 5, 6,
                                                                   requires_grad=True)
    names = {
        BF.max_pool1d(x1, 2).grad_fn.name(): "MaxPool1dFunctionBackward",
        BF.max_pool3d(x3, 2).grad_fn.name(): "MaxPool3dFunctionBackward",
        BF.avg_pool1d(x1, 2).grad_fn.name(): "AvgPool1dFunctionBackward",
        BF.avg_pool3d(x3, 2).grad_fn.name(): "AvgPool3dFunctionBackward",
        BF.adaptive_avg_pool3d(x3, 2).grad_fn.name(): "AdaptiveAvgPool3dFunctionBackward",
        BF.adaptive_max_pool2d(x, 2).grad_fn.name(): "AdaptiveMaxPool2dFunctionBackward",
        BF.interpolate(x, scale_factor=2, mode="bilinear").grad_fn.name():
            "InterpolateFunctionBackward",
    }
    for got, want in names.items():
        assert got == want


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, L\) or \(C, L\)"):
        bnn.MaxPool1d(2)(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\) or \(C, D, H, W\)"):
        bnn.AvgPool3d(2)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="at most half of kernel size"):
        bnn.MaxPool3d(3, padding=2)(torch.randn(1, 1, 6, 6, 6))
    with pytest.raises(ValueError, match="larger than the input"):
        bnn.MaxPool1d(5)(torch.randn(1, 1, 3))
    with pytest.raises(ValueError, match="must be >= 1"):
        BF.max_pool3d(torch.randn(1, 1, 4, 4, 4), 2, stride=0)
    with pytest.raises(ValueError, match="tuple of 3"):
        BF.max_pool3d(torch.randn(1, 1, 4, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="divisor_override"):
        BF.avg_pool3d(torch.randn(1, 1, 4, 4, 4), 2, divisor_override=0)
    with pytest.raises(TypeError, match="floating-point"):
        bnn.AdaptiveMaxPool2d(2)(torch.ones(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        bnn.AdaptiveAvgPool3d((0, 2, 2))(torch.randn(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="tuple of 1"):
        bnn.AdaptiveAvgPool1d((2, 2))(torch.randn(1, 1, 4))
    with pytest.raises(NotImplementedError, match="linear mode needs 3D input"):
        bnn.Upsample(scale_factor=2, mode="linear")(torch.randn(1, 1, 4, 4))
    with pytest.raises(NotImplementedError, match="'bicubic' has no written-out backward"):
        bnn.Upsample(scale_factor=2, mode="bicubic")(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="align_corners option"):
        BF.interpolate(torch.randn(1, 1, 4, 4), scale_factor=2, align_corners=True)
    with pytest.raises(ValueError, match="only one of size or scale_factor"):
        BF.interpolate(torch.randn(1, 1, 4, 4), size=3, scale_factor=2)
    with pytest.raises(ValueError, match="either size or scale_factor"):
        BF.interpolate(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, L\), \(N, C, H, W\) or \(N, C, D, H, W\)"):
        BF.interpolate(torch.randn(4, 4), size=3)
    with pytest.raises(ValueError, match="must be >= 1 along every axis"):
        BF.interpolate(torch.randn(1, 1, 4, 4), scale_factor=0.1)
    with pytest.raises(NotImplementedError, match="antialias"):
        BF.interpolate(torch.randn(1, 1, 4, 4), size=3, mode="bilinear", antialias=True)


def _rejected(fn, x) -> bool:
    return not gradcheck(fn, (x,), raise_exception=False)


def test_broken_backwards_are_rejected():
    """A backward with a term dropped or the transpose confused fails gradcheck: the checks
    above can fail."""

    class MaxOneWinner(P.MaxPool1dFunction):  # scatter, not scatter_add: overlaps lost
        @staticmethod
        def backward(ctx, grad_output, _):
            (indices,) = ctx.saved_tensors
            n, c, length = ctx.input_shape
            g = grad_output.new_zeros(n, c, length).scatter(2, indices, grad_output)
            return g, None, None, None, None, None, None

    class AvgNoDivisor(P.AvgPool3dFunction):  # n_j dropped
        @staticmethod
        def backward(ctx, grad_output):
            g = P.avg_pool_bwd(grad_output, ctx.input_shape, ctx.kernel_size, ctx.stride,
                               ctx.padding, ctx.count_include_pad, 1)
            return g, None, None, None, None, None, None

    class BilinearUntransposed(U.InterpolateFunction):  # a reversed interpolation, not Mᵀ
        @staticmethod
        def backward(ctx, grad_output):
            g = U.interpolate_fwd(grad_output, tuple(ctx.input_shape[2:]), None, ctx.mode,
                                  ctx.align_corners)
            return g, None, None, None, None

    x1 = torch.randn(1, 2, 8, dtype=F64, requires_grad=True)
    assert _rejected(lambda x: MaxOneWinner.apply(x, (3,), (1,), (1,), (1,), False)[0], x1)
    x3 = torch.randn(1, 1, 4, 3, 4, dtype=F64, requires_grad=True)
    assert _rejected(lambda x: AvgNoDivisor.apply(x, (2, 2, 2), (1, 1, 1), (0, 0, 0),
                                                  False, True, None), x3)
    x2 = torch.randn(1, 1, 3, 4, dtype=F64, requires_grad=True)
    assert _rejected(lambda x: BilinearUntransposed.apply(x, (5, 7), None, "bilinear",
                                                          False), x2)
