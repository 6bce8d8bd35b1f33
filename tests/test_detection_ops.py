"""The ops torchvision's detection models compute their losses with, written out and routed:
the elementwise larger and smaller of two tensors (``torch.max(a, b)`` and ``torch.min``
in generalized_box_iou_loss's box corners) and F.normalize (SSD300's L2Norm). Each against
torch in float64 (forward, backward with a random upstream gradient, broadcasting, ties),
gradcheck and gradgradcheck, create_graph and torch.func.grad, then routed in a toy
detector head (box decoding, GIoU, the focal loss, L2Norm) that equals torch and is
complete per bptorch.coverage."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch
import bptorch.functional as BF
from bptorch import routing
from bptorch.convert import from_torch_nn
from bptorch.functions import arithmetic
from bptorch.functions.arithmetic import ExtremumFunction
from bptorch.functions import vector_norm
from bptorch.functions.vector_norm import NormalizeFunction

from helpers import randn64, same_grads, same_under_cpu_autocast

D = torch.float64


# ---------------------------------------------------------------- maximum and minimum
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 5)), ((2, 3, 4), (3, 1))]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("larger", [True, False])
def test_extremum_equals_torch_and_gradchecks(shapes, larger):
    x, y = randn64(*shapes[0], seed=1), randn64(*shapes[1])
    ours = BF.maximum if larger else BF.minimum
    theirs = torch.maximum if larger else torch.minimum
    same_grads(ours(x, y), theirs(x, y), (x, y))
    f = lambda a, b: ExtremumFunction.apply(a, b, larger)  # noqa: E731
    assert gradcheck(f, (x, y)) and gradgradcheck(f, (x, y))


def test_extremum_at_ties_halves_the_gradient_as_torch():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], dtype=D, requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 5.0], [0.5, -1.0, 2.0]], dtype=D, requires_grad=True)
    for ours, theirs in ((BF.maximum, torch.maximum), (BF.minimum, torch.minimum)):
        same_grads(ours(x, y), theirs(x, y), (x, y))
    # a tensor against itself: the whole δ, half by each path, as torch's
    same_grads(BF.maximum(x, x), torch.maximum(x, x), (x,))


def test_extremum_create_graph_and_torch_func():
    x, y = randn64(3, 4, seed=2), randn64(1, 4)
    g = torch.randn(3, 4, dtype=D)
    ours = torch.autograd.grad(BF.maximum(x, y) * x, (x, y), g, create_graph=True)
    theirs = torch.autograd.grad(torch.maximum(x, y) * x, (x, y), g, create_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    same_grads(ours[0].pow(2).sum(), theirs[0].pow(2).sum(), (x, y))
    f = lambda a: (BF.minimum(a, y.detach()) ** 2).sum()  # noqa: E731
    t = lambda a: (torch.minimum(a, y.detach()) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(x.detach()), torch.func.grad(t)(x.detach()))


def test_extremum_forward_mode_equals_torch():
    x, y = torch.randn(3, 4, dtype=D), torch.randn(4, dtype=D)
    dx, dy = torch.randn(3, 4, dtype=D), torch.randn(4, dtype=D)
    _, ours = torch.func.jvp(lambda a, b: BF.maximum(a, b), (x, y), (dx, dy))
    _, theirs = torch.func.jvp(torch.maximum, (x, y), (dx, dy))
    torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- normalize
NORMALIZE = [((3, 5), 2.0, 1), ((3, 5), 2.0, 0), ((2, 4, 3, 5), 2.0, 1), ((4, 6), 1.0, -1),
             ((4, 6), 3.0, 1), ((2, 3, 5), 2.5, 2)]


@pytest.mark.parametrize("shape,p,dim", NORMALIZE)
def test_normalize_equals_torch_and_gradchecks(shape, p, dim):
    x = randn64(*shape, seed=3)
    same_grads(BF.normalize(x, p, dim), nn.functional.normalize(x, p, dim), (x,))
    f = lambda a: NormalizeFunction.apply(a, p, dim % len(shape), 1e-12)  # noqa: E731
    assert gradcheck(f, (x,)) and gradgradcheck(f, (x,))


def test_normalize_below_eps_as_torch():
    """A slice with ‖x‖ ≤ ε is divided by ε, a constant: δ / ε, as torch's."""
    x = torch.randn(3, 4, dtype=D)
    x[1] = 0.0
    x[2] = 1e-4
    x.requires_grad_()
    for p in (2.0, 3.0):
        same_grads(BF.normalize(x, p, 1, eps=1e-2), nn.functional.normalize(x, p, 1, eps=1e-2),
                    (x,))


def test_normalize_create_graph_and_torch_func():
    x = randn64(3, 5, seed=4)
    g = torch.randn(3, 5, dtype=D)
    ours = torch.autograd.grad(BF.normalize(x), x, g, create_graph=True)[0]
    theirs = torch.autograd.grad(nn.functional.normalize(x), x, g, create_graph=True)[0]
    torch.testing.assert_close(ours, theirs)
    same_grads(ours.pow(2).sum(), theirs.pow(2).sum(), (x,))
    w = torch.randn(3, 5, dtype=D)
    f = lambda a: (BF.normalize(a, 3.0, 0) * w).sum()  # noqa: E731
    t = lambda a: (nn.functional.normalize(a, 3.0, 0) * w).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(x.detach()), torch.func.grad(t)(x.detach()))


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(3, 4, dtype=D)
    with pytest.raises(TypeError, match="two tensors"):
        BF.maximum(x, 1.0)
    with pytest.raises(RuntimeError):
        BF.minimum(x, torch.randn(5, dtype=D))
    with pytest.raises(NotImplementedError, match="finite order p"):
        BF.normalize(x, p=float("inf"))
    with pytest.raises(IndexError, match="out of range"):
        BF.normalize(x, dim=2)


def test_autocast_on_the_cpu_gives_torch_dtypes():
    x, y = torch.rand(3, 4, requires_grad=True), torch.rand(4, requires_grad=True)
    pairs = [(lambda a, b: BF.maximum(a.bfloat16(), b),
              lambda a, b: torch.maximum(a.bfloat16(), b)),
             (lambda a, b: BF.normalize(a.bfloat16()),
              lambda a, b: nn.functional.normalize(a.bfloat16()))]
    same_under_cpu_autocast(pairs, x, y)


@pytest.mark.parametrize("mutant", ["tie", "through_d"])
def test_a_wrong_derivative_is_caught(monkeypatch, mutant):
    """Planted bugs: the tie gets the whole δ on both sides; normalize drops the term
    through the norm. The comparison with torch must reject each."""
    if mutant == "tie":
        right = arithmetic.extremum_bwd

        def wrong(delta, x, y, larger, need):
            gx, gy = right(delta, x, y, larger, need)
            return gx + delta * (x == y), gy
        monkeypatch.setattr(arithmetic, "extremum_bwd", wrong)
        x = torch.tensor([1.0, 2.0, 3.0], dtype=D, requires_grad=True)
        y = torch.tensor([1.0, 5.0, 3.0], dtype=D, requires_grad=True)
        with pytest.raises(AssertionError):
            same_grads(BF.maximum(x, y), torch.maximum(x, y), (x, y))
    else:
        monkeypatch.setattr(vector_norm, "normalize_bwd",
                            lambda delta, x, p, dim, eps: delta / torch.linalg.vector_norm(
                                x, p, dim, keepdim=True).clamp_min(eps))
        x = randn64(3, 5, seed=5)
        with pytest.raises(AssertionError):
            same_grads(BF.normalize(x), nn.functional.normalize(x), (x,))


# ---------------------------------------------------------------- routed
def test_what_the_mode_sees_is_routed():
    a, b = randn64(3, 4, seed=6), randn64(4)
    with routing.RouteMode() as mode:
        ext = [torch.max(a, b), a.max(b), torch.maximum(a, b), a.maximum(b),
               torch.min(a, b), a.min(other=b), torch.minimum(a, b), a.minimum(b)]
        norm = nn.functional.normalize(a, dim=0)
    assert {type(t.grad_fn).__name__ for t in ext} == {"ExtremumFunctionBackward"}
    assert type(norm.grad_fn).__name__ == "NormalizeFunctionBackward"
    assert not mode.fallbacks


def test_the_reductions_of_max_and_min_fall_back_to_torch():
    """torch.max(a), a.max(dim) and torch.min(a, 1) are reductions, not the elementwise
    form: torch answers them, counted as fallbacks, with torch's values."""
    a = randn64(3, 4, seed=7)
    with routing.RouteMode() as mode:
        whole, along, low = torch.max(a), a.max(dim=1), torch.min(a, 1)
    torch.testing.assert_close(whole, a.detach().max())
    torch.testing.assert_close(along.values, a.detach().amax(1))
    torch.testing.assert_close(low.indices, a.detach().argmin(1))
    assert set(mode.fallbacks) == {"max", "min"}


class DetectorHead(nn.Module):
    """A detector's loss by hand, as torchvision's RetinaNet, FCOS and SSD write it: an L2Norm
    (SSD300), boxes decoded from regression deltas (BoxCoder), the GIoU loss, the focal
    loss and a smooth-L1 box loss."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(4) + 0.5)
        self.pre = nn.Linear(4, 4)
        self.cls = nn.Linear(4, 3)
        self.reg = nn.Linear(4, 4)
        self.coder = torchvision.models.detection._utils.BoxCoder((10.0, 10.0, 5.0, 5.0))

    def forward(self, x, anchors, gt_boxes, gt_labels):
        h = self.scale * nn.functional.normalize(self.pre(x), dim=1)  # (K, 4)
        logits, deltas = self.cls(h), self.reg(h)  # (K, 3), (K, 4)
        boxes = self.coder.decode_single(deltas, anchors)
        giou = torchvision.ops.generalized_box_iou_loss(boxes, gt_boxes, reduction="sum")
        focal = torchvision.ops.sigmoid_focal_loss(logits, gt_labels, reduction="sum")
        l1 = nn.functional.smooth_l1_loss(boxes, gt_boxes, beta=1 / 9, reduction="sum")
        return {"giou": giou / 5, "focal": focal, "l1": l1 / max(1, len(boxes))}


def test_a_routed_detector_loss_equals_torch_and_is_complete():
    torch.manual_seed(8)
    model = DetectorHead().to(D)
    ours = from_torch_nn(model, strict=True)
    x = torch.randn(6, 4, dtype=D)
    anchors = torch.tensor([[0, 0, 10, 12], [5, 5, 20, 18], [2, 8, 12, 30], [0, 0, 4, 4],
                            [10, 2, 30, 12], [3, 3, 9, 15]], dtype=D)
    gt_boxes = anchors + torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=D)
    gt_boxes[3] = torch.tensor([20.0, 20.0, 25.0, 26.0], dtype=D)  # no overlap: the hull term
    gt_labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0, 2]), 3).to(D)
    args = (x, anchors, gt_boxes, gt_labels)
    out_b, out_t = ours(*args), model(*args)
    keys = sorted(out_t)
    gs = [torch.randn_like(out_t[k]) for k in keys]
    g_b = torch.autograd.grad([out_b[k] for k in keys], list(ours.parameters()), gs)
    g_t = torch.autograd.grad([out_t[k] for k in keys], list(model.parameters()), gs)
    for k in keys:
        torch.testing.assert_close(out_b[k], out_t[k])
    for a, b in zip(g_b, g_t):
        torch.testing.assert_close(a, b)
    found = bptorch.coverage(ours, *args, verbose=False)
    assert found.complete, found.report()
    for name in ("ExtremumFunction", "NormalizeFunction", "DivFunction", "PointwiseFunction"):
        assert found.bptorch[name] > 0, found.report()
