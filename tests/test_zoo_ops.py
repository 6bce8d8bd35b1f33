"""What torchvision's remaining zoo models needed: Unfold / Fold (F.unfold in raft's convex
upsampling; each one's backward is the other's forward), routed in a converted model's
forward, and raft's correlation lookup and upsampling in float64 equal to torch. Each
against torch in float64 with a random upstream gradient, non-square shapes, options
drawn across their values; gradcheck, gradgradcheck, create_graph, torch.func, autocast,
the conversion both ways and the errors."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch
import bptorch.functional as BF
import bptorch.nn as bnn
from bptorch import routing
from bptorch.convert import from_torch_nn, to_torch_nn
from bptorch.functions.fold import fold_bwd, fold_fwd, unfold_bwd, unfold_fwd

D = torch.float64
TF = torch.nn.functional

# (kernel_size, dilation, padding, stride) on a 7 × 9 map: non-square everything
CASES = [
    ((2, 3), 1, 0, 1),
    ((3, 2), (1, 2), (1, 0), (2, 1)),
    (3, 1, 1, 1),  # raft's 3 × 3 neighbourhood
    ((1, 4), (2, 1), (2, 1), (3, 2)),
]
SIZE = (7, 9)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _blocks(case):
    k, d, p, s = (_pair(v) for v in case)
    return [(n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, kk, dd, pp, ss in
            zip(SIZE, k, d, p, s)]


def _cols(case, n=2, c=3, seed=0):
    torch.manual_seed(seed)
    k = _pair(case[0])
    h, w = _blocks(case)
    return torch.randn(n, c * k[0] * k[1], h * w, dtype=D, requires_grad=True)


def _same(ours, theirs, inputs):
    """Forward equal, and the gradients of a random upstream gradient equal."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    g = torch.randn_like(theirs)
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("case", CASES)
def test_unfold_and_fold_equal_torch(case):
    x = torch.randn(2, 3, *SIZE, dtype=D, requires_grad=True)
    _same(BF.unfold(x, *case), TF.unfold(x, *case), [x])
    cols = _cols(case)
    _same(BF.fold(cols, SIZE, *case), TF.fold(cols, SIZE, *case), [cols])
    assert type(BF.unfold(x, *case).grad_fn).__name__ == "UnfoldFunctionBackward"
    assert type(BF.fold(cols, SIZE, *case).grad_fn).__name__ == "FoldFunctionBackward"


@pytest.mark.parametrize("case", CASES)
def test_the_reference_pair_equals_the_default(case):
    """The gather and scatter-add (conv_unfold / conv_fold) against torch's im2col and
    col2im, forward and backward, at every test shape."""
    k, d, p, s = (_pair(v) for v in case)
    x = torch.randn(2, 3, *SIZE, dtype=D)
    a_col = TF.unfold(x, k, d, p, s)
    torch.testing.assert_close(unfold_fwd(x, k, d, p, s), a_col, rtol=0, atol=0)
    delta = torch.randn_like(a_col)
    torch.testing.assert_close(unfold_bwd(delta, SIZE, k, d, p, s), TF.fold(delta, SIZE, k, d, p, s))
    cols = _cols(case).detach()
    torch.testing.assert_close(fold_fwd(cols, SIZE, k, d, p, s), TF.fold(cols, SIZE, k, d, p, s))
    delta = torch.randn(2, 3, *SIZE, dtype=D)
    torch.testing.assert_close(fold_bwd(delta, k, d, p, s), TF.unfold(delta, k, d, p, s),
                               rtol=0, atol=0)


def test_unbatched_inputs_as_torch():
    x = torch.randn(3, *SIZE, dtype=D, requires_grad=True)
    _same(BF.unfold(x, (2, 3), padding=1), TF.unfold(x, (2, 3), padding=1), [x])
    cols = torch.randn(3 * 6, 8 * 9, dtype=D, requires_grad=True)
    _same(BF.fold(cols, SIZE, (2, 3), padding=1), TF.fold(cols, SIZE, (2, 3), padding=1), [cols])


@pytest.mark.parametrize("case", CASES[1:3])
def test_gradcheck_and_gradgradcheck(case):
    x = torch.randn(1, 1, 4, 5, dtype=D, requires_grad=True)
    f = lambda v: BF.unfold(v, *case)  # noqa: E731
    assert gradcheck(f, (x,)) and gradgradcheck(f, (x,))
    cols = TF.unfold(x.detach(), *case).requires_grad_()
    g = lambda v: BF.fold(v, (4, 5), *case)  # noqa: E731
    assert gradcheck(g, (cols,)) and gradgradcheck(g, (cols,))


def test_create_graph_and_double_backward_equal_torch():
    """The first-order gradient taken with create_graph=True equals torch's, and so does
    the gradient through it (each Function's backward is the other Function)."""
    case = CASES[1]
    for ours_fn, torch_fn, make in (
            (lambda v: BF.unfold(v, *case), lambda v: TF.unfold(v, *case),
             lambda: torch.randn(2, 3, *SIZE, dtype=D, requires_grad=True)),
            (lambda v: BF.fold(v, SIZE, *case), lambda v: TF.fold(v, SIZE, *case),
             lambda: _cols(case))):
        x = make()
        out_t = torch_fn(x)
        g = torch.randn_like(out_t, requires_grad=True)
        grads = []
        for fn in (ours_fn, torch_fn):
            (gx,) = torch.autograd.grad(fn(x), x, g, create_graph=True)
            assert gx.requires_grad
            grads.append(gx)
        torch.testing.assert_close(grads[0], grads[1])
        v = torch.randn_like(grads[1])
        gg = [torch.autograd.grad(gx, g, v)[0] for gx in grads]
        torch.testing.assert_close(gg[0], gg[1])
    x = torch.randn(1, 2, 5, 6, dtype=D, requires_grad=True)
    (gx,) = torch.autograd.grad(BF.unfold(x, 3, 1, 1, 1).square().sum(), x, create_graph=True)
    assert "FoldFunction" in type(gx.grad_fn).__name__  # Unfold's backward is Fold


def test_torch_func_grad_equals_torch():
    case = CASES[3]
    w = torch.randn(2, 3 * 4, 16, dtype=D)  # a fixed upstream: L = Σ w ⊙ unfold(x)
    x = torch.randn(2, 3, *SIZE, dtype=D)
    assert TF.unfold(x, *case).shape == w.shape
    ours = torch.func.grad(lambda v: (BF.unfold(v, *case) * w).sum())(x)
    theirs = torch.func.grad(lambda v: (TF.unfold(v, *case) * w).sum())(x)
    torch.testing.assert_close(ours, theirs)
    y = torch.randn(2, 3, *SIZE, dtype=D)
    cols = TF.unfold(x, *case)
    ours = torch.func.grad(lambda v: (BF.fold(v, SIZE, *case) * y).sum())(cols)
    theirs = torch.func.grad(lambda v: (TF.fold(v, SIZE, *case) * y).sum())(cols)
    torch.testing.assert_close(ours, theirs)


def test_autocast_on_the_cpu_keeps_the_input_dtype_as_torch():
    """im2col and col2im are on none of torch's autocast lists: their input's dtype."""
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, *SIZE, dtype=dtype, requires_grad=True)
        cols = TF.unfold(x.detach(), 3, 1, 1, 1).requires_grad_()
        for ours, theirs, inp in (
                (lambda v: BF.unfold(v, 3, 1, 1, 1), lambda v: TF.unfold(v, 3, 1, 1, 1), x),
                (lambda v: BF.fold(v, SIZE, 3, 1, 1, 1), lambda v: TF.fold(v, SIZE, 3, 1, 1, 1),
                 cols)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                o, t = ours(inp), theirs(inp)
            assert o.dtype == t.dtype == dtype
            g = torch.randn_like(t)
            a, b = torch.autograd.grad(o, inp, g)[0], torch.autograd.grad(t, inp, g)[0]
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


# ---------------------------------------------------------------- the modules
def test_modules_twin_torch_and_convert_both_ways():
    theirs = nn.Sequential(nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=(2, 1)),
                           nn.Fold((6, 11), 2, stride=(1, 3)))
    ours = from_torch_nn(theirs, strict=True)
    assert isinstance(ours[0], bnn.Unfold) and isinstance(ours[1], bnn.Fold)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    back = to_torch_nn(ours)
    assert type(back[0]) is nn.Unfold and type(back[1]) is nn.Fold
    assert repr(back) == repr(theirs)
    x = torch.randn(2, 1, 7, 9, dtype=D, requires_grad=True)
    cols = torch.randn(2, 4, 5 * 4, dtype=D, requires_grad=True)  # 5 × 4 blocks of 2 × 2
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        _same(ours[0](x), theirs[0](x), [x])
        _same(ours[1](cols), theirs[1](cols), [cols])
        torch.testing.assert_close(back[1](cols), theirs[1](cols))
    same = pickle.loads(pickle.dumps(ours))
    torch.testing.assert_close(same[0](x), theirs[0](x))
    assert bnn.Unfold(3).extra_repr() == nn.Unfold(3).extra_repr()
    assert bnn.Fold(4, 3).extra_repr() == nn.Fold(4, 3).extra_repr()


@pytest.mark.parametrize("call, match", [
    (lambda: BF.unfold(torch.randn(2, 3), 2), "shape"),
    (lambda: BF.unfold(torch.randn(1, 3, 5, 6, 7), 2), "shape"),
    (lambda: BF.unfold(torch.ones(1, 3, 5, 6, dtype=torch.long), 2), "floating"),
    (lambda: BF.unfold(torch.randn(1, 3, 5, 6), 0), ">= 1"),
    (lambda: BF.unfold(torch.randn(1, 3, 5, 6), 2, stride=0), ">= 1"),
    (lambda: BF.unfold(torch.randn(1, 3, 5, 6), 2, dilation=0), ">= 1"),
    (lambda: BF.unfold(torch.randn(1, 3, 5, 6), 2, padding=-1), "padding"),
    (lambda: BF.unfold(torch.randn(1, 3, 5, 6), 7), "no block"),
    (lambda: BF.fold(torch.randn(1, 13, 20), (5, 6), 2), "divisible"),
    (lambda: BF.fold(torch.randn(1, 12, 21), (5, 6), 2), "blocks"),
    (lambda: BF.fold(torch.randn(12), (5, 6), 2), "shape"),
    (lambda: BF.fold(torch.randn(1, 12, 20), (0, 6), 2), "output_size"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---------------------------------------------------------------- raft's ops, routed
class ConvexUpsample(nn.Module):
    """raft's mask predictor and convex upsampling (torchvision's upsample_flow with a
    mask: F.unfold, softmax, a product, a sum, permute) after a conv."""

    def __init__(self):
        super().__init__()
        self.flow = nn.Conv2d(3, 2, 3, padding=1)
        self.mask = nn.Conv2d(3, 9 * 4 * 4, 1)

    def forward(self, x):
        from torchvision.models.optical_flow._utils import upsample_flow
        return upsample_flow(self.flow(x), self.mask(x), factor=4)


def test_raft_convex_upsampling_is_routed_equal_and_complete():
    pytest.importorskip("torchvision")
    torch.manual_seed(3)
    model = ConvexUpsample().to(D)
    ours = from_torch_nn(model, strict=True)
    x = torch.randn(2, 3, 3, 5, dtype=D)
    out_t = model(x)
    g = torch.randn_like(out_t)
    out_b = ours(x)
    torch.testing.assert_close(out_b, out_t)
    for a, b in zip(torch.autograd.grad(out_b, list(ours.parameters()), g),
                    torch.autograd.grad(out_t, list(model.parameters()), g)):
        torch.testing.assert_close(a, b)
    found = bptorch.coverage(ours, x, verbose=False)
    assert found.complete, found.report()
    assert found.bptorch["UnfoldFunction"] == 1, found.report()


def test_unfold_and_fold_are_routed():
    x = torch.randn(1, 2, 4, 5, dtype=D, requires_grad=True)
    with routing.RouteMode():
        a = TF.unfold(x, 2)
        b = TF.fold(a, (4, 5), 2)
        c = x.unfold(3, 2, 1)  # Tensor.unfold, a view: not F.unfold
    assert type(a.grad_fn).__name__ == "UnfoldFunctionBackward"
    assert type(b.grad_fn).__name__ == "FoldFunctionBackward"
    assert type(c.grad_fn).__name__ == "UnfoldBackward0"


# ---------------------------------------------------------------- the zoo's lean float64 run
def test_the_zoo_lean_run_shares_weights_and_compares_as_the_eager_one():
    """experiments.zoo's path for the largest models: the converted model shares torch's
    weight storage, each gradient leaves memory as it is accumulated (torch's to a file),
    and the comparison equals the eager one, a planted difference included."""
    from experiments import zoo
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 3 * 4, 5)).to(D)
    ours = zoo._convert_sharing(model)
    assert isinstance(ours[0], bnn.Conv2d) and not any(p.is_meta for p in model.parameters())
    for (k, p_t), p_b in zip(model.named_parameters(), ours.parameters()):
        assert p_b is not p_t and p_b.data_ptr() == p_t.data_ptr(), k
    assert ours[1].running_mean.data_ptr() != model[1].running_mean.data_ptr()
    x = torch.randn(2, 2, 5, 6, dtype=D)
    g = torch.randn(2, 5, dtype=D)
    eager = [torch.autograd.grad(m(x), list(m.parameters()), g) for m in (model, ours)]
    lean = zoo._LeanGrads(model, D)
    lean.keep(model)
    lean.compare(ours)
    model(x).backward(g)
    assert all(p.grad is None for p in model.parameters())
    ours(x).backward(1.5 * g)  # a planted difference: every gradient 1.5 times torch's
    assert all(p.grad is None for p in ours.parameters())
    floor, worst, where = lean.worst()
    assert floor == 1e-6 * max(float(t.abs().max()) for t in eager[0])
    for (k, _), b in zip(model.named_parameters(), eager[1]):
        assert lean.error[k] == pytest.approx(0.5 * float(b.abs().max()), rel=1e-9), k
    assert worst == pytest.approx(0.5, rel=1e-9) and where is not None
    assert lean.scale["0.weight"] == float(eager[0][0].abs().max())
