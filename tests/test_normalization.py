"""BatchNorm1d/2d and LayerNorm: gradcheck/gradgradcheck in float64 (BatchNorm in train and
eval mode), agreement with the torch.nn twins under random upstream gradients over several
training steps (outputs, gradients, running statistics), eval mode, state_dicts both ways,
in-place ops on the output, bad inputs, and a broken backward that the checks reject."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.functions.normalization import BatchNormFunction, LayerNormFunction

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BN_SHAPES = [(5, 3), (4, 3, 7), (3, 2, 5, 4)]  # (N, C), (N, C, L), (N, C, H, W)
BN_IDS = ["NC", "NCL", "NCHW"]


def _bn_args(shape, device, affine=True):
    c = shape[1]
    x = (torch.randn(*shape, dtype=F64, device=device) * 2 + 0.5).requires_grad_()
    w = (torch.rand(c, dtype=F64, device=device) + 0.5).requires_grad_() if affine else None
    b = torch.randn(c, dtype=F64, device=device, requires_grad=True) if affine else None
    rm = torch.randn(c, dtype=F64, device=device)
    rv = torch.rand(c, dtype=F64, device=device) + 0.5
    return x, w, b, rm, rv


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_IDS)
def test_batch_norm_gradcheck(device, shape, training):
    x, w, b, rm, rv = _bn_args(shape, device)
    fn = lambda x, w, b: BatchNormFunction.apply(x, w, b, rm, rv, training, 1e-5)[0]  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_batch_norm_no_affine_gradcheck(device):
    x, _, _, rm, rv = _bn_args((4, 3, 5), device, affine=False)
    for training in (True, False):
        def fn(x):
            return BatchNormFunction.apply(x, None, None, rm, rv, training, 1e-5)[0]

        assert gradcheck(fn, (x,))
        assert gradgradcheck(fn, (x,))


LN_CASES = [((4, 6), (6,)), ((2, 3, 4, 5), (4, 5)), ((3, 5), (3, 5))]  # the last: no rows
LN_IDS = ["rows", "2d-trailing", "unbatched"]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape,normalized", LN_CASES, ids=LN_IDS)
def test_layer_norm_gradcheck(device, shape, normalized, bias):
    x = (torch.randn(*shape, dtype=F64, device=device) * 3 - 1).requires_grad_()
    w = (torch.rand(normalized, dtype=F64, device=device) + 0.5).requires_grad_()
    b = torch.randn(normalized, dtype=F64, device=device, requires_grad=True) if bias else None
    args = (x, w, b) if bias else (x, w)
    fn = lambda x, w, b=None: LayerNormFunction.apply(x, normalized, w, b, 1e-5)[0]  # noqa: E731
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


def test_layer_norm_no_affine_gradcheck(device):
    x = torch.randn(3, 7, dtype=F64, device=device, requires_grad=True)
    fn = lambda x: LayerNormFunction.apply(x, (7,), None, None, 1e-5)[0]  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


# ---------------------------------------------------------------- modules against torch.nn
def _pair_of(cls_name, *args, device="cpu", dtype=torch.float32, **kw):
    """The bptorch module and its torch.nn twin, with the same (non-trivial) γ and β."""
    ours = getattr(bnn, cls_name)(*args, device=device, dtype=dtype, **kw)
    theirs = getattr(nn, cls_name)(*args, device=device, dtype=dtype, **kw)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _step(ours, theirs, shape, device, dtype=torch.float32):
    """One forward/backward with the same input and a random upstream gradient; compares
    the outputs and every gradient."""
    x = (torch.randn(*shape, device=device, dtype=dtype) * 3 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_ours, y_theirs = ours(x), theirs(x2)
    torch.testing.assert_close(y_ours, y_theirs)
    g = torch.randn_like(y_theirs)
    y_ours.backward(g)
    y_theirs.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=f"grad of {name}")


def _assert_same_state(ours, theirs):
    s1, s2 = ours.state_dict(), theirs.state_dict()
    assert list(s1) == list(s2)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], msg=f"state {k}")


BN_MODULES = [("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (4, 3, 5, 6))]
BN_MODULE_IDS = ["1d-NC", "1d-NCL", "2d"]


@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"momentum": 0.3, "eps": 1e-3},
                                {"affine": False}, {"bias": False},
                                {"track_running_stats": False}],
                         ids=["default", "cumulative", "momentum-eps", "no-affine", "no-bias",
                              "no-stats"])
@pytest.mark.parametrize("name,shape", BN_MODULES, ids=BN_MODULE_IDS)
def test_batch_norm_module_matches_torch(device, name, shape, kw):
    """Three training steps (outputs, gradients, running statistics), then eval mode."""
    if "bias" in kw and "bias" not in inspect.signature(getattr(nn, name)).parameters:
        pytest.skip(f"this torch's {name} has no bias argument (torch 2.14 added it)")
    ours, theirs = _pair_of(name, shape[1], device=device, **kw)
    for _ in range(3):
        _step(ours, theirs, shape, device)
        _assert_same_state(ours, theirs)
    ours.eval(), theirs.eval()
    _step(ours, theirs, shape, device)
    _assert_same_state(ours, theirs)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"elementwise_affine": False},
                                {"eps": 1e-2}], ids=["default", "no-bias", "no-affine", "eps"])
@pytest.mark.parametrize("shape,normalized", [((5, 6), 6), ((2, 3, 4, 5), (4, 5))],
                         ids=["rows", "2d-trailing"])
def test_layer_norm_module_matches_torch(device, shape, normalized, kw):
    ours, theirs = _pair_of("LayerNorm", normalized, device=device, **kw)
    _step(ours, theirs, shape, device)
    _assert_same_state(ours, theirs)


def test_layer_norm_parameter_grads_without_input_grad(device):
    """An input that needs no gradient (a first layer on data): ∂C/∂γ and ∂C/∂β alone,
    as torch's."""
    ours, theirs = _pair_of("LayerNorm", 6, device=device)
    x = torch.randn(4, 5, 6, device=device) * 3 + 1
    g = torch.randn(4, 5, 6, device=device)
    got = torch.autograd.grad(ours(x), [ours.weight, ours.bias], g)
    want = torch.autograd.grad(theirs(x), [theirs.weight, theirs.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"elementwise_affine": False}],
                         ids=["default", "no-bias", "no-affine"])
def test_layer_norm_row_blocks_match_torch(device, kw, monkeypatch):
    """The CPU backward runs the rows in blocks of ``BLOCK_ELEMENTS`` values; with 60, the
    2·7 rows of 20 here make five blocks of 3 rows, the last one short. ∂C/∂γ sums across
    blocks. (On CUDA all rows go at once.)"""
    import bptorch.functions.normalization as norm

    monkeypatch.setattr(norm, "BLOCK_ELEMENTS", 60)
    ours, theirs = _pair_of("LayerNorm", (4, 5), device=device, **kw)
    _step(ours, theirs, (2, 7, 4, 5), device)


def test_state_dicts_load_both_ways():
    for ours, theirs in [(bnn.BatchNorm2d(4), nn.BatchNorm2d(4)),
                         (bnn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(3, affine=False)),
                         (bnn.BatchNorm1d(3, track_running_stats=False),
                          nn.BatchNorm1d(3, track_running_stats=False)),
                         (bnn.LayerNorm([2, 3], bias=False), nn.LayerNorm([2, 3], bias=False))]:
        with torch.no_grad():
            for t in theirs.state_dict().values():
                t.copy_(torch.randint_like(t, 1, 9))
        ours.load_state_dict(theirs.state_dict())
        _assert_same_state(ours, theirs)
        fresh = type(theirs)(*([ours.num_features] if hasattr(ours, "num_features")
                               else [ours.normalized_shape]),
                             **({"affine": ours.affine,
                                 "track_running_stats": ours.track_running_stats}
                                if hasattr(ours, "affine") else {"bias": False}))
        fresh.load_state_dict(ours.state_dict())
        _assert_same_state(ours, fresh)
    old = nn.BatchNorm2d(2).state_dict()
    del old["num_batches_tracked"]  # a state_dict from before torch tracked it
    old._metadata[""]["version"] = 1
    bnn.BatchNorm2d(2).load_state_dict(old)


def test_in_place_ops_on_the_output(device):
    """`out += identity` and ReLU(inplace=True) after BatchNorm, as torchvision's ResNet
    does: the output is not saved, so the backward is unaffected."""
    ours, theirs = _pair_of("BatchNorm2d", 3, device=device)
    x = torch.randn(4, 3, 5, 5, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    identity = torch.randn(4, 3, 5, 5, device=device)
    outs = []
    for bn, inp in ((ours, x), (theirs, x2)):
        out = bn(inp)
        out += identity
        outs.append(torch.relu_(out))
    g = torch.randn_like(outs[1])
    outs[0].backward(g)
    outs[1].backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


def test_functional_forms_match_torch(device):
    x = torch.randn(5, 3, 4, device=device, requires_grad=True)
    w, b = torch.rand(3, device=device) + 0.5, torch.randn(3, device=device)
    rm1, rv1 = torch.zeros(3, device=device), torch.ones(3, device=device)
    rm2, rv2 = rm1.clone(), rv1.clone()
    for training in (True, False):
        y1 = BF.batch_norm(x, rm1, rv1, w, b, training, 0.2, 1e-4)
        y2 = F.batch_norm(x, rm2, rv2, w, b, training, 0.2, 1e-4)
        torch.testing.assert_close(y1, y2)
        torch.testing.assert_close((rm1, rv1), (rm2, rv2))
    torch.testing.assert_close(BF.batch_norm(x, None, None, training=True),
                               F.batch_norm(x, None, None, training=True))
    w, b = torch.rand(3, 4, device=device), torch.randn(3, 4, device=device)
    torch.testing.assert_close(BF.layer_norm(x, (3, 4), w, b, 1e-3),
                               F.layer_norm(x, (3, 4), w, b, 1e-3))
    torch.testing.assert_close(BF.layer_norm(x, 4), F.layer_norm(x, (4,)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_features=3 channels"):
        bnn.BatchNorm2d(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="expects 4D input, got 3D"):
        bnn.BatchNorm2d(3)(torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match="2D or 3D input, got 4D"):
        bnn.BatchNorm1d(3)(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnn.BatchNorm1d(3)(torch.randn(1, 3))
    bnn.BatchNorm1d(3).eval()(torch.randn(1, 3))  # fine with running statistics
    with pytest.raises(TypeError, match="floating-point"):
        bnn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 4, 5\)"):
        bnn.LayerNorm([4, 5])(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 6\)"):
        BF.layer_norm(torch.randn(2, 5), 6)
    with pytest.raises(ValueError, match="weight of shape normalized_shape"):
        BF.layer_norm(torch.randn(2, 5), 5, torch.ones(4))
    with pytest.raises(ValueError, match="must be given when training=False"):
        BF.batch_norm(torch.randn(2, 5), None, None)


def test_broken_backward_is_rejected():
    """A backward that drops the x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂) term (the path through σ²) fails
    gradcheck: the check can tell."""

    class Broken(BatchNormFunction):
        @staticmethod
        def backward(ctx, grad_output, _grad_mean, _grad_rstd):
            x, weight, mean, rstd = ctx.saved_tensors
            delta, rstd = grad_output, rstd.reshape(1, -1, 1)
            grad_input = (delta - delta.mean((0, 2), keepdim=True)) * rstd  # μ's path only
            return grad_input, None, None, None, None, None, None

    x = torch.randn(4, 3, 5, dtype=F64, requires_grad=True)
    fn = lambda x: Broken.apply(x, None, None, None, None, True, 1e-5)[0]  # noqa: E731
    assert not gradcheck(fn, (x,), raise_exception=False)


def test_compose_with_torch_func():
    from torch.func import grad, jacrev, vmap

    x = torch.randn(4, 3, 5, dtype=F64)
    w, b = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    torch.testing.assert_close(vmap(lambda r: BF.layer_norm(r, 5, w, b))(x),
                               F.layer_norm(x, (5,), w, b))
    torch.testing.assert_close(grad(lambda w: BF.layer_norm(x, 5, w, b).pow(2).sum())(w),
                               grad(lambda w: F.layer_norm(x, (5,), w, b).pow(2).sum())(w))
    torch.testing.assert_close(jacrev(lambda x: BF.batch_norm(x, None, None, training=True))(x),
                               jacrev(lambda x: F.batch_norm(x, None, None, training=True))(x))


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "LayerNorm"])
def test_signature_and_repr_are_torchs(name):
    ours = inspect.signature(getattr(bnn, name).__init__).parameters.values()
    theirs = inspect.signature(getattr(nn, name).__init__).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]
    for kw in ({}, {"bias": False}):
        assert repr(getattr(bnn, name)(4, **kw)) == repr(getattr(nn, name)(4, **kw))


# ---------------------------------------------------------------- fast paths vs the reference
NEEDS = [(True, True, True), (True, False, False), (False, True, True), (False, False, True)]


@pytest.mark.parametrize("block", [None, 7], ids=["one-block", "blocks-of-7"])
@pytest.mark.parametrize("shape,normalized", LN_CASES, ids=LN_IDS)
def test_layer_norm_fast_paths_match_the_reference(device, shape, normalized, block,
                                                   monkeypatch):
    """The in-place forward and the blocked in-place backward against norm_fwd/norm_bwd,
    at every LayerNorm test shape, for every combination of gradients asked for."""
    import bptorch.functions.normalization as norm

    if block is not None:
        monkeypatch.setattr(norm, "BLOCK_ELEMENTS", block)
    x = torch.randn(*shape, dtype=F64, device=device) * 2 + 0.5
    g, b = torch.rand(normalized, dtype=F64, device=device) + 0.5, torch.randn(
        normalized, dtype=F64, device=device)
    dims = tuple(range(x.dim() - len(normalized), x.dim()))
    rows = tuple(range(x.dim() - len(normalized)))
    mean, rstd = norm.stats(x, dims, 1e-5)
    y, mean_f, rstd_f = norm.layer_norm_fwd(x, dims, 1e-5, g, b)
    torch.testing.assert_close(y, norm.norm_fwd(x, mean, rstd, g, b))
    torch.testing.assert_close((mean_f, rstd_f), (mean, rstd))
    delta = torch.randn_like(x)
    for need in NEEDS:
        ref = norm.norm_bwd(delta, x, mean, rstd, g, dims, rows, need)
        fast = norm.layer_norm_bwd(delta, x, mean, rstd, g, dims, need)
        for r, f in zip(ref, fast):
            assert (r is None) == (f is None), need
            if r is not None:
                torch.testing.assert_close(f.reshape(r.shape), r, msg=str(need))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_IDS)
def test_batch_norm_fast_paths_match_the_reference(device, shape, training):
    """BatchNorm's one-pass forward and its γ-factored backward against norm_fwd/norm_bwd,
    at every BatchNorm test shape, batch statistics and running ones."""
    import bptorch.functions.normalization as norm

    x, w, b, rm, rv = (t.detach() if t is not None else t for t in _bn_args(shape, device))
    view = (1, -1, *([1] * (x.dim() - 2)))
    dims = (0, *range(2, x.dim()))
    if training:
        mean, rstd = norm.stats(x, dims, 1e-5)
    else:
        mean, rstd = rm.reshape(view), torch.rsqrt(rv.reshape(view) + 1e-5)
    y = BatchNormFunction.apply(x, w, b, rm, rv, training, 1e-5)[0]
    torch.testing.assert_close(y, norm.norm_fwd(x, mean, rstd, w.reshape(view),
                                                b.reshape(view)))
    delta = torch.randn_like(x)
    for need in NEEDS:
        ref = norm.norm_bwd(delta, x, mean, rstd, w.reshape(view), dims, dims, need,
                            fixed_stats=not training)
        fast = norm.batch_norm_bwd(delta, x, mean, rstd, w.reshape(view), training, need)
        for r, f in zip(ref, fast):
            assert (r is None) == (f is None), need
            if r is not None:
                torch.testing.assert_close(f, r, msg=str(need))
