"""The ops a converted model's own forward computes with, written out and routed: einsum,
div (x / y, x / 2, 2 / x), exp, log, sqrt, rsqrt, pow by a number, abs, clamp,
torchvision's roi_align and F.grid_sample. Each against torch in float64 (forward,
backward with a random upstream gradient, broadcasting), gradcheck and gradgradcheck,
then routed in a toy model that equals torch and is complete per bptorch.coverage."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch
import bptorch.functional as BF
from bptorch import routing
from bptorch.convert import from_torch_nn
from bptorch.functions import arithmetic
from bptorch.functions.arithmetic import DivFunction, PointwiseFunction
from bptorch.functions.products import EinsumFunction
from bptorch.functions.sampling import RoIAlignFunction

from helpers import same_under_cpu_autocast

D = torch.float64


def _t(*shape, positive=False, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    x = torch.rand(*shape, dtype=D) + 0.5 if positive else torch.randn(*shape, dtype=D)
    return x.requires_grad_()


def _same_grads(ours, theirs, inputs):
    """Forward equal, and the gradients of a random upstream gradient equal."""
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(theirs)
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    mine = torch.autograd.grad(ours, tensors, g, retain_graph=True)
    for a, b in zip(mine, torch.autograd.grad(theirs, tensors, g)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- einsum
EINSUM = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),  # matmul
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),  # bmm
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),  # '...' broadcast (1 against 5)
    ("bhwc,hkc->bhwk", [(2, 3, 4, 5), (3, 6, 5)]),  # maxvit's relative-position form
    ("ii->i", [(4, 4)]),  # a diagonal
    ("ii", [(4, 4)]),  # the trace
    ("iij,jk->ki", [(3, 3, 4), (4, 2)]),  # a diagonal inside a product
    ("ij->i", [(3, 4)]),  # a label only one operand has
    ("i,j->ij", [(3,), (4,)]),  # outer product
    ("ij,ij->ij", [(3, 1), (1, 4)]),  # size-1 labels broadcast
    ("ba,ac->cb", [(3, 4), (4, 2)]),  # output order other than the inputs'
    ("i,i,i->", [(5,), (5,), (5,)]),  # three operands
    ("b...,b...->b", [(2, 3, 4), (2, 3, 4)]),
]


@pytest.mark.parametrize("equation,shapes", EINSUM)
def test_einsum_equals_torch_and_gradchecks(equation, shapes):
    torch.manual_seed(0)
    ops = [_t(*s) for s in shapes]
    _same_grads(BF.einsum(equation, *ops), torch.einsum(equation, *ops), ops)
    assert gradcheck(lambda *o: EinsumFunction.apply(equation, *o), ops)
    assert gradgradcheck(lambda *o: EinsumFunction.apply(equation, *o), ops)


def test_einsum_same_tensor_twice_and_list_form():
    a = _t(3, 4, seed=1)
    _same_grads(BF.einsum("ij,ij->", [a, a]), torch.einsum("ij,ij->", a, a), [a])


def test_einsum_first_order_gradient_with_create_graph_and_torch_func():
    a, b = _t(2, 3, seed=2), _t(3, 4)
    g = torch.randn(2, 4, dtype=D)
    ours = torch.autograd.grad(BF.einsum("ij,jk->ik", a, b), (a, b), g, create_graph=True)
    theirs = torch.autograd.grad(torch.einsum("ij,jk->ik", a, b), (a, b), g, create_graph=True)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y)
    # the gradient of a function of the first-order gradient: the double backward
    _same_grads((ours[0] ** 2).sum() + ours[1].sin().sum(),
                (theirs[0] ** 2).sum() + theirs[1].sin().sum(), [a, b])
    f = lambda x: (BF.einsum("ij,jk->ik", x, b.detach()) ** 2).sum()  # noqa: E731
    t = lambda x: (torch.einsum("ij,jk->ik", x, b.detach()) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(a.detach()), torch.func.grad(t)(a.detach()))


# ---------------------------------------------------------------- div
DIVS = {
    "tensor/tensor broadcast": lambda x, y: (x, y),
    "tensor/number": lambda x, y: (x, 2.5),
    "number/tensor (rdiv)": lambda x, y: (3.0, y),
    "row/matrix": lambda x, y: (y, x.abs() + 0.5),
}


@pytest.mark.parametrize("case", DIVS)
def test_div_equals_torch_and_gradchecks(case):
    x, y = _t(3, 4, seed=3), _t(4, positive=True)
    args = DIVS[case](x, y)
    _same_grads(BF.div(*args), torch.div(*args), [t for t in (x, y) if any(
        a is t or (isinstance(a, torch.Tensor) and a.grad_fn is not None) for a in args)])
    f = lambda x, y: DivFunction.apply(*DIVS[case](x, y))  # noqa: E731
    assert gradcheck(f, (x, y)) and gradgradcheck(f, (x, y))


def test_div_create_graph_and_torch_func():
    x, y = _t(3, 4, seed=4), _t(3, 1, positive=True)
    g = torch.randn(3, 4, dtype=D)
    ours = torch.autograd.grad(BF.div(x, y), (x, y), g, create_graph=True)
    theirs = torch.autograd.grad(x / y, (x, y), g, create_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    _same_grads(ours[1].pow(2).sum(), theirs[1].pow(2).sum(), [x, y])
    f = lambda v: BF.div(1.5, v).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(y.detach()),
                               torch.func.grad(lambda v: (1.5 / v).sum())(y.detach()))


# ---------------------------------------------------------------- pointwise
POINTWISE = [
    ("exp", (), torch.exp),
    ("log", (), torch.log),
    ("sqrt", (), torch.sqrt),
    ("rsqrt", (), torch.rsqrt),
    ("pow", (3,), torch.pow),
    ("pow", (-1.5,), torch.pow),
    ("pow", (0,), torch.pow),
    ("abs", (), torch.abs),
    ("clamp", (0.8, 1.2), torch.clamp),
    ("clamp_min", (1.0,), torch.clamp_min),
    ("clamp_max", (1.0,), torch.clamp_max),
]


@pytest.mark.parametrize("name,args,theirs", POINTWISE,
                         ids=[f"{n}{a}" for n, a, _ in POINTWISE])
def test_pointwise_equals_torch_and_gradchecks(name, args, theirs):
    x = _t(3, 5, positive=True, seed=5)
    if name == "abs":
        x = (x - 1.0).detach().requires_grad_()  # both signs
    ours = getattr(BF, name)
    _same_grads(ours(x, *args), theirs(x, *args), [x])
    # gradcheck away from the kinks (clamp's bounds, abs at 0)
    assert gradcheck(lambda v: ours(v, *args), (x,))
    assert gradgradcheck(lambda v: ours(v, *args), (x,))


def test_clamp_and_abs_at_their_kinks_as_torch():
    """torch's subgradients: clamp passes δ where x equals a bound; |x|' = 0 at 0."""
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=D, requires_grad=True)
    _same_grads(BF.clamp(x, 0.0, 1.0), torch.clamp(x, 0.0, 1.0), [x])
    _same_grads(BF.abs(x), torch.abs(x), [x])
    _same_grads(BF.pow(x, 0), torch.pow(x, 0), [x])


@pytest.mark.parametrize("base", [2, 0.5, 3.7])
def test_number_to_a_tensor_power_equals_torch_and_gradchecks(base):
    """a = c^x (`2 ** x`, torch.pow(2, x)): ∂C/∂x = δ ⊙ a ln c."""
    x = _t(3, 5, seed=7)
    _same_grads(BF.pow(base, x), torch.pow(base, x), [x])
    assert gradcheck(lambda v: BF.pow(base, v), (x,))
    assert gradgradcheck(lambda v: BF.pow(base, v), (x,))
    g = torch.randn(3, 5, dtype=D)
    (ours_g,) = torch.autograd.grad(BF.pow(base, x), x, g, create_graph=True)
    (their_g,) = torch.autograd.grad(torch.pow(base, x), x, g, create_graph=True)
    torch.testing.assert_close(ours_g, their_g)
    torch.testing.assert_close(torch.func.grad(lambda v: BF.pow(base, v).sum())(x.detach()),
                               torch.func.grad(lambda v: torch.pow(base, v).sum())(x.detach()))


def test_zero_to_a_tensor_power_as_torch():
    x = torch.tensor([0.0, 0.5, 2.0], dtype=D, requires_grad=True)
    _same_grads(BF.pow(0, x), torch.pow(0, x), [x])


def test_pointwise_create_graph_and_torch_func():
    x = _t(4, 3, positive=True, seed=6)
    g = torch.randn(4, 3, dtype=D)
    for name, theirs in (("log", torch.log), ("rsqrt", torch.rsqrt), ("sqrt", torch.sqrt)):
        (ours_g,) = torch.autograd.grad(getattr(BF, name)(x), x, g, create_graph=True)
        (their_g,) = torch.autograd.grad(theirs(x), x, g, create_graph=True)
        torch.testing.assert_close(ours_g, their_g)
        _same_grads((ours_g ** 2).sum(), (their_g ** 2).sum(), [x])
        torch.testing.assert_close(
            torch.func.grad(lambda v: getattr(BF, name)(v).sum())(x.detach()),
            torch.func.grad(lambda v: theirs(v).sum())(x.detach()))


def test_a_wrong_derivative_is_caught(monkeypatch):
    """The checks can fail: log's f' as 1/x² instead of 1/x."""
    wrong = arithmetic.POINTWISE["log"]._replace(prime=lambda x, p, q: 1 / (x * x))
    monkeypatch.setitem(arithmetic.POINTWISE, "log", wrong)
    x = _t(3, 4, positive=True, seed=7)
    assert not gradcheck(lambda v: PointwiseFunction.apply(v, "log", None, None), (x,),
                         raise_exception=False)


# ---------------------------------------------------------------- roi_align
torchvision = pytest.importorskip("torchvision")

ROIS = torch.tensor([[0, 1.2, 0.5, 7.3, 6.1], [1, -2.0, -1.5, 4, 3], [1, 3, 2, 40, 30],
                     [0, 5, 5, 5.2, 5.1], [1, 8.5, 6.5, 11.5, 9.7], [0, -5, -5, -3, -2]],
                    dtype=D)  # inside, across the border, past it, tiny, at the edge, outside


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("spatial_scale,output_size", [(1.0, (2, 3)), (0.5, 3)])
def test_roi_align_equals_torchvision(sampling_ratio, aligned, spatial_scale, output_size):
    x = _t(2, 3, 9, 11, seed=8)
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    _same_grads(BF.roi_align(x, ROIS, *args), torchvision.ops.roi_align(x, ROIS, *args), [x])


def test_roi_align_boxes_as_a_list_and_gradchecks():
    x = _t(2, 1, 5, 6, seed=9)
    boxes = [torch.tensor([[0.5, 0.7, 4.2, 5.1]], dtype=D),
             torch.tensor([[1.1, 0.2, 6.3, 3.9], [-0.5, 2.0, 3.0, 7.0]], dtype=D)]
    _same_grads(BF.roi_align(x, boxes, 2, 0.9, -1, True),
                torchvision.ops.roi_align(x, boxes, 2, 0.9, -1, True), [x])
    # a small map and two boxes, one sample per bin: gradgradcheck's cost grows with both
    f = lambda v: RoIAlignFunction.apply(v, ROIS[:2], 0.5, 2, 2, 1, False)  # noqa: E731
    assert gradcheck(f, (x,)) and gradgradcheck(f, (x,))


# ---------------------------------------------------------------- routed
def test_what_the_mode_sees_is_routed():
    """`a / b`, `a / 2`, `2 / a`, `a ** 2` and the torch./Tensor. forms reach bptorch."""
    a, b = _t(3, 4, positive=True, seed=10), _t(4, positive=True)
    with routing.RouteMode() as mode:
        div = [a / b, a / 2, 2 / a, torch.div(a, b), a.div(b), torch.true_divide(a, b)]
        pointwise = [a ** 2, a.pow(3), torch.pow(a, 0.5), a.exp(), torch.log(a), a.sqrt(),
                     torch.rsqrt(a), abs(a), a.abs(), a.clamp(min=0.7), torch.clamp(a, 0.6, 1.1),
                     a.clamp_min(0.8), torch.clamp_max(a, 1.0), a.clip(0.7, 1.0),
                     2 ** a, torch.pow(0.5, a)]
        ein = torch.einsum("ij,j->i", a, b)
    assert {type(t.grad_fn).__name__ for t in div} == {"DivFunctionBackward"}
    assert {type(t.grad_fn).__name__ for t in pointwise} == {"PointwiseFunctionBackward"}
    assert type(ein.grad_fn).__name__ == "EinsumFunctionBackward"
    assert not mode.fallbacks


def test_what_bptorch_lacks_falls_back_to_torch():
    a = _t(3, 4, positive=True, seed=11)
    with routing.RouteMode() as mode:
        floor = torch.div(a, 2, rounding_mode="floor")
        power = a ** a
        bounded = a.clamp(min=torch.zeros(4, dtype=D))
        sub = torch.einsum(a, [0, 1], [1])
    torch.testing.assert_close(sub, a.sum(0))
    assert type(power.grad_fn).__name__ == "PowBackward1"
    assert type(bounded.grad_fn).__name__ == "ClampBackward0"
    assert floor.shape == a.shape
    assert set(mode.fallbacks) == {"div", "pow", "clamp"}


class OpsModel(nn.Module):
    """A forward that computes with every routed op, as raft, maxvit and torchvision's box
    code do by hand."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.rel = nn.Parameter(torch.randn(3, 6, 6))

    def forward(self, x, rois):
        h = self.fc(x)  # (2, 3, 6)
        h = torch.einsum("bid,ide->bie", h, self.rel)  # maxvit's form
        s = h.abs().clamp(min=0.1, max=3.0)
        y = torch.exp(-s) + torch.log(s) * s.sqrt() - 1 / s + s / 2 + h / s ** 2
        y = y * s.rsqrt() - (1 - torch.clamp_min(y, 0.0).clamp_max(1.5)) + y.div(s.mean())
        img = y.reshape(1, 2, 3, 6)
        pooled = torchvision.ops.roi_align(img, [rois], 2, 1.0, -1, True)
        grid = torch.tanh(h[..., :2]).reshape(1, 2, 3, 2) * 1.2  # raft's warp: points move
        warped = nn.functional.grid_sample(img, grid, align_corners=True)
        return y.sum(-1), pooled, warped


def test_a_routed_model_equals_torch_and_is_complete():
    torch.manual_seed(12)
    model = OpsModel().to(D)
    ours = from_torch_nn(model, strict=True)
    x = torch.randn(2, 3, 4, dtype=D)
    rois = torch.tensor([[0.2, 0.1, 4.5, 2.0], [1.0, 0.5, 5.0, 2.5]], dtype=D)
    outs = [ours(x, rois), model(x, rois)]
    gs = [torch.randn_like(o) for o in outs[1]]
    grads = [torch.autograd.grad(o, list(m.parameters()), gs)
             for o, m in zip(outs, (ours, model))]
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    found = bptorch.coverage(ours, x, rois, verbose=False)
    assert found.complete, found.report()
    for name in ("EinsumFunction", "DivFunction", "PointwiseFunction", "RoIAlignFunction",
                 "GridSampleFunction"):
        assert found.bptorch[name] > 0, found.report()


# ---------------------------------------------------------------- grid_sample
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_equals_torch_and_gradchecks(align_corners, padding_mode):
    x = _t(2, 3, 5, 6, seed=13)
    grid = (torch.rand(2, 4, 7, 2, dtype=D) * 2.6 - 1.3).requires_grad_()  # some outside
    _same_grads(BF.grid_sample(x, grid, "bilinear", padding_mode, align_corners),
                torch.nn.functional.grid_sample(x, grid, "bilinear", padding_mode,
                                                align_corners), [x, grid])
    xs, gs = _t(1, 2, 3, 4), (torch.rand(1, 2, 3, 2, dtype=D) * 2.4 - 1.2).requires_grad_()
    f = lambda v, g: BF.grid_sample(v, g, "bilinear", padding_mode, align_corners)  # noqa: E731
    assert gradcheck(f, (xs, gs)) and gradgradcheck(f, (xs, gs))


def test_grid_sample_routed_and_its_other_modes_fall_back():
    x = _t(1, 2, 4, 5, seed=14)
    grid = (torch.rand(1, 3, 3, 2, dtype=D) * 2 - 1).requires_grad_()
    tf = torch.nn.functional
    with routing.RouteMode() as mode:
        ours = tf.grid_sample(x, grid, align_corners=False)
        nearest = tf.grid_sample(x, grid, mode="nearest", align_corners=False)
    assert type(ours.grad_fn).__name__ == "GridSampleFunctionBackward"
    assert type(nearest.grad_fn).__name__ == "GridSampler2DBackward0"
    assert mode.fallbacks["grid_sample"] == 1


def test_grid_sample_border_at_its_bounds_as_torch():
    """Points exactly on the border (g = ±1 with align_corners) and past it: the grid's
    gradient is 0 there under "border" padding, as torch's."""
    x = _t(1, 2, 4, 5, seed=15)
    grid = torch.tensor([[[[-1.0, 0.3], [1.0, -0.2], [0.4, 1.0], [1.3, -1.2], [0.1, 0.2]]]],
                        dtype=D, requires_grad=True)
    _same_grads(BF.grid_sample(x, grid, "bilinear", "border", True),
                torch.nn.functional.grid_sample(x, grid, "bilinear", "border", True), [x, grid])


def test_autocast_on_the_cpu_gives_torch_dtypes():
    """Under CPU autocast (bfloat16): einsum in the lower precision as torch's (its bmm),
    the elementwise ops in their promoted input dtype, as torch's; gradients close."""
    x = torch.rand(3, 4, requires_grad=True)
    y = (torch.rand(3, 4) + 0.5).requires_grad_()
    pairs = [
        (lambda a, b: BF.einsum("ij,kj->ik", a, b), lambda a, b: torch.einsum("ij,kj->ik", a, b)),
        (lambda a, b: BF.div(a.bfloat16(), b), lambda a, b: a.bfloat16() / b),
        (lambda a, b: BF.exp(a.bfloat16()), lambda a, b: torch.exp(a.bfloat16())),
        (lambda a, b: BF.clamp(a.bfloat16(), 0.2, 0.8), lambda a, b: a.bfloat16().clamp(0.2, 0.8)),
    ]
    same_under_cpu_autocast(pairs, x, y)
