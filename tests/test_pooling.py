"""AvgPool2d and AdaptiveAvgPool2d: gradcheck/gradgradcheck in float64, agreement with the
torch.nn twins under random upstream gradients (padding, ceil_mode, count_include_pad,
divisor_override, overlapping and unequal adaptive windows, unbatched inputs), bad
inputs, and a broken backward that the checks reject."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.functions.pool import AdaptiveAvgPool2dFunction, AvgPool2dFunction

F64 = torch.float64

# kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
AVG_CASES = [
    ((2, 2), (2, 2), (0, 0), False, True, None),
    ((3, 2), (2, 3), (1, 1), False, True, None),
    ((3, 3), (2, 2), (1, 1), True, True, None),   # ceil_mode: a last window over the edge
    ((3, 3), (2, 2), (1, 1), True, False, None),
    ((2, 3), (1, 2), (1, 0), False, False, None),  # overlapping windows
    ((3, 3), (3, 2), (1, 1), True, True, 4),
]
AVG_IDS = ["2x2", "pad", "ceil", "ceil-exclude-pad", "overlap-exclude-pad", "divisor"]


@pytest.mark.parametrize("case", AVG_CASES, ids=AVG_IDS)
def test_avg_pool2d_gradcheck(device, case):
    x = torch.randn(2, 3, 7, 8, dtype=F64, device=device, requires_grad=True)
    fn = lambda x: AvgPool2dFunction.apply(x, *case)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (3, 9, 6)], ids=["batched", "unbatched"])
@pytest.mark.parametrize("case", AVG_CASES, ids=AVG_IDS)
def test_avg_pool2d_matches_torch(device, case, shape):
    k, s, p, ceil, include, div = case
    ours = bnn.AvgPool2d(k, s, p, ceil, include, div)
    theirs = nn.AvgPool2d(k, s, p, ceil, include, div)
    x = torch.randn(*shape, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y1, y2 = ours(x), theirs(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(BF.avg_pool2d(x, k, s, p, ceil, include, div),
                               F.avg_pool2d(x, k, s, p, ceil, include, div))


ADAPTIVE_SIZES = [1, (1, 1), (3, 4), (5, 3), (None, 2), (7, 8), (10, 11)]
ADAPTIVE_IDS = ["global", "global-pair", "unequal", "overlap", "none-entry", "same", "upsample"]


@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=ADAPTIVE_IDS)
def test_adaptive_avg_pool2d_gradcheck(device, size):
    x = torch.randn(2, 3, 7, 8, dtype=F64, device=device, requires_grad=True)
    out = BF.adaptive_avg_pool2d(x, size).shape[-2:]
    fn = lambda x: AdaptiveAvgPool2dFunction.apply(x, tuple(out))  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (3, 9, 6)], ids=["batched", "unbatched"])
@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=ADAPTIVE_IDS)
def test_adaptive_avg_pool2d_matches_torch(device, size, shape):
    ours, theirs = bnn.AdaptiveAvgPool2d(size), nn.AdaptiveAvgPool2d(size)
    x = torch.randn(*shape, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y1, y2 = ours(x), theirs(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\)"):
        bnn.AvgPool2d(2)(torch.randn(4, 4))
    with pytest.raises(ValueError, match="at most half the kernel size"):
        bnn.AvgPool2d(2, padding=2)(torch.randn(1, 1, 6, 6))
    with pytest.raises(ValueError, match="larger than the padded input"):
        bnn.AvgPool2d(5)(torch.randn(1, 1, 3, 6))
    with pytest.raises(ValueError, match="divisor_override"):
        BF.avg_pool2d(torch.randn(1, 1, 4, 4), 2, divisor_override=0)
    with pytest.raises(TypeError, match="floating-point"):
        bnn.AdaptiveAvgPool2d(1)(torch.ones(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        bnn.AdaptiveAvgPool2d((0, 2))(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\)"):
        BF.adaptive_avg_pool2d(torch.randn(2, 1, 1, 4, 4), 1)


def test_broken_backward_is_rejected():
    """A backward that divides by k_h·k_w everywhere (ignoring count_include_pad=False at the
    border) fails gradcheck."""

    class Broken(AvgPool2dFunction):
        @staticmethod
        def backward(ctx, grad_output):
            from bptorch.functions.pool import avg_pool2d_bwd

            g = avg_pool2d_bwd(grad_output, ctx.input_shape, ctx.kernel_size, ctx.stride,
                               ctx.padding, True, None)
            return g, None, None, None, None, None, None

    x = torch.randn(1, 2, 5, 5, dtype=F64, requires_grad=True)
    fn = lambda x: Broken.apply(x, (3, 3), (2, 2), (1, 1), False, False, None)  # noqa: E731
    assert not gradcheck(fn, (x,), raise_exception=False)


def test_compose_with_torch_func():
    from torch.func import grad, vmap

    x = torch.randn(2, 3, 6, 6, dtype=F64)
    torch.testing.assert_close(grad(lambda x: BF.avg_pool2d(x, 3, 2, 1).pow(2).sum())(x),
                               grad(lambda x: F.avg_pool2d(x, 3, 2, 1).pow(2).sum())(x))
    torch.testing.assert_close(vmap(lambda x: BF.adaptive_avg_pool2d(x, (2, 3)))(x),
                               F.adaptive_avg_pool2d(x, (2, 3)))


@pytest.mark.parametrize("name,args", [("AvgPool2d", (3, 2, 1)),
                                       ("AdaptiveAvgPool2d", ((2, None),))])
def test_signature_and_repr_are_torchs(name, args):
    import inspect

    ours = inspect.signature(getattr(bnn, name).__init__).parameters.values()
    theirs = inspect.signature(getattr(nn, name).__init__).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]
    assert repr(getattr(bnn, name)(*args)) == repr(getattr(nn, name)(*args))
