"""torch's losses and log_softmax in bptorch.functional / bptorch.nn, against torch's own:
every option combination at non-square shapes (N=5, C=3, d=(4, 2)), targets not one-hot
(soft probabilities, ignore_index present, class weights), random upstream gradients,
gradients in the input and in a probability target; gradcheck and gradgradcheck in float64;
torch.func.grad in the input; create_graph first-order gradients; autocast dtypes; the
module signatures and state_dict keys; the input checks' messages."""
from __future__ import annotations

import inspect
import itertools

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
import bptorch.nn as bnn
from bptorch.functions.costs import POINTWISE, PointwiseLoss

F64 = torch.float64
N, C, D = 5, 3, (4, 2)
REDUCTIONS = ["none", "mean", "sum"]


def _compare(bp_fn, torch_fn, inputs: list[torch.Tensor], atol=1e-10, rtol=1e-8):
    """Value, then every input's gradient under a random upstream gradient."""
    a = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    b = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    out_bp, out_t = bp_fn(*a), torch_fn(*b)
    torch.testing.assert_close(out_bp, out_t, atol=atol, rtol=rtol)
    g = torch.randn_like(out_t)
    diff = [x for x in a if x.requires_grad]
    grads_bp = torch.autograd.grad(out_bp, diff, g)
    grads_t = torch.autograd.grad(out_t, [x for x in b if x.requires_grad], g)
    for gb, gt in zip(grads_bp, grads_t):
        torch.testing.assert_close(gb, gt, atol=atol, rtol=rtol)


def _logits(*shape):
    return torch.randn(*shape, dtype=F64, requires_grad=True)


def _indices(shape, ignore_index=-100, n_ignored=3):
    t = torch.randint(0, C, shape)
    flat = t.view(-1)
    flat[torch.randperm(flat.numel())[:n_ignored]] = ignore_index
    return t


# ---------------------------------------------------------------- cross_entropy, nll_loss
CLASS_SHAPES = {"NC": (N, C), "NCd": (N, C, *D), "C": (C,)}


def _class_target(shape, kind, ignore_index):
    tshape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    if kind == "probs":
        return torch.softmax(torch.randn(shape, dtype=F64), 1 if len(shape) > 1 else 0)
    if not tshape:  # unbatched: one index, not ignored
        return torch.tensor(1)
    return _indices(tshape, ignore_index, n_ignored=min(3, N - 1) if kind == "ignored" else 0)


@pytest.mark.parametrize("shape", CLASS_SHAPES.values(), ids=CLASS_SHAPES.keys())
@pytest.mark.parametrize("kind", ["indices", "ignored", "probs"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weight"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(shape, kind, weighted, smoothing, reduction):
    ignore_index = 2 if kind == "ignored" else -100  # a class id as ignore_index, too
    target = _class_target(shape, kind, ignore_index)
    weight = torch.rand(C, dtype=F64) + 0.5 if weighted else None
    kw = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=smoothing)
    inputs = [_logits(*shape)]
    if kind == "probs":  # a probability target is differentiable in torch: compare that too
        inputs.append(target.requires_grad_())
    else:
        inputs.append(target)
    _compare(lambda z, t: BF.cross_entropy(z, t, **kw), lambda z, t: TF.cross_entropy(z, t, **kw),
             inputs)


@pytest.mark.parametrize("shape", CLASS_SHAPES.values(), ids=CLASS_SHAPES.keys())
@pytest.mark.parametrize("kind", ["indices", "ignored"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch(shape, kind, weighted, reduction):
    target = _class_target(shape, kind, -100)
    weight = torch.rand(C, dtype=F64) + 0.5 if weighted else None
    kw = dict(weight=weight, reduction=reduction)
    x = torch.log_softmax(torch.randn(shape, dtype=F64), -1).requires_grad_()
    _compare(lambda x, t: BF.nll_loss(x, t, **kw), lambda x, t: TF.nll_loss(x, t, **kw),
             [x, target])


def test_legacy_size_average_and_reduce_map_as_torch():
    z, t = _logits(N, C), torch.randint(0, C, (N,))
    for sa, red in itertools.product([None, True, False], [None, True, False]):
        if sa is None and red is None:
            continue
        with pytest.warns(UserWarning):
            want = TF.cross_entropy(z, t, size_average=sa, reduce=red)
        with pytest.warns(UserWarning):
            got = BF.cross_entropy(z, t, size_average=sa, reduce=red)
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- log_softmax
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_log_softmax_matches_torch(dim):
    _compare(lambda z: BF.log_softmax(z, dim), lambda z: TF.log_softmax(z, dim),
             [_logits(N, C, 4)])
    _compare(lambda z: bnn.LogSoftmax(dim)(z), lambda z: torch.nn.LogSoftmax(dim)(z),
             [_logits(N, C, 4)])


# ---------------------------------------------------------------- the pointwise losses
SHAPE = (N, C, 4)


def _pointwise_cases():
    """(id, bptorch call, torch call, input maker, target maker)."""
    cases = []
    for red in REDUCTIONS:
        for w in [False, True]:
            for name in ["mse_loss", "l1_loss"]:
                cases.append((f"{name}-{red}-w{w}", name, dict(reduction=red), w, "real"))
        for beta in [1.0, 0.5, 0.0]:
            cases.append((f"smooth_l1-{red}-b{beta}", "smooth_l1_loss",
                          dict(reduction=red, beta=beta), False, "real"))
        for w in [False, True]:
            cases.append((f"bce-{red}-w{w}", "binary_cross_entropy", dict(reduction=red), w,
                          "prob"))
            for pw in [False, True]:
                cases.append((f"bcel-{red}-w{w}-pw{pw}", "binary_cross_entropy_with_logits",
                              dict(reduction=red, pos_weight=pw), w, "logit"))
    for red in REDUCTIONS + ["batchmean"]:
        for lt in [False, True]:
            cases.append((f"kl-{red}-lt{lt}", "kl_div", dict(reduction=red, log_target=lt),
                          False, "logprob"))
    return cases


CASES = _pointwise_cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pointwise_loss_matches_torch(case):
    _id, name, kw, weighted, kind = case
    kw = dict(kw)
    if kw.get("pos_weight") is not None:
        kw["pos_weight"] = (torch.rand(SHAPE[-1], dtype=F64) + 0.5) if kw["pos_weight"] else None
    x = torch.randn(SHAPE, dtype=F64)
    y = torch.randn(SHAPE, dtype=F64)
    if kind == "prob":
        x, y = 0.1 + 0.8 * torch.rand(SHAPE, dtype=F64), torch.rand(SHAPE, dtype=F64)
    elif kind == "logit":
        y = torch.rand(SHAPE, dtype=F64)  # soft labels, not 0/1
    elif kind == "logprob":
        x = torch.log_softmax(x, 1)
        y = torch.log_softmax(y, 1) if kw["log_target"] else torch.softmax(y, 1)
    if name in ("mse_loss", "l1_loss") and weighted:
        kw["weight"] = torch.rand(SHAPE, dtype=F64) + 0.5
    elif weighted:
        kw["weight"] = torch.rand(SHAPE[-1], dtype=F64) + 0.5  # broadcast, as torch
    x.requires_grad_(), y.requires_grad_()
    _compare(lambda x, y: getattr(BF, name)(x, y, **kw),
             lambda x, y: getattr(TF, name)(x, y, **kw), [x, y])


# ---------------------------------------------------------------- gradcheck, gradgradcheck
GRADCHECKS = {
    "ce-ignored-weight-smooth": lambda z: BF.cross_entropy(
        z, torch.tensor([[0, 2], [1, -100], [2, 1], [-100, 0], [1, 1]]),
        weight=torch.tensor([0.5, 1.0, 2.0], dtype=F64), label_smoothing=0.1),
    "ce-probs": lambda z: BF.cross_entropy(
        z, torch.softmax(torch.arange(30, dtype=F64).reshape(5, 2, 3).transpose(1, 2) * 0.3, 1),
        reduction="none"),
    "nll": lambda x: BF.nll_loss(x[..., 0], torch.tensor([0, 2, 1, -100, 1]),
                                 weight=torch.tensor([0.5, 1.0, 2.0], dtype=F64)),
    "log_softmax": lambda z: BF.log_softmax(z, 1),
    "mse": lambda x: BF.mse_loss(x, torch.linspace(-1, 1, 30, dtype=F64).reshape(5, 3, 2)),
    "smooth_l1": lambda x: BF.smooth_l1_loss(
        x, torch.linspace(-3, 3, 30, dtype=F64).reshape(5, 3, 2), beta=0.7, reduction="sum"),
    "bce": lambda x: BF.binary_cross_entropy(
        torch.sigmoid(x), torch.linspace(0, 1, 30, dtype=F64).reshape(5, 3, 2),
        weight=torch.tensor([0.5, 2.0], dtype=F64)),
    "bce_logits": lambda x: BF.binary_cross_entropy_with_logits(
        x, torch.linspace(0, 1, 30, dtype=F64).reshape(5, 3, 2),
        weight=torch.tensor([0.5, 2.0], dtype=F64), pos_weight=torch.tensor([3.0, 0.4],
                                                                             dtype=F64)),
    "kl_div": lambda x: BF.kl_div(torch.log_softmax(x, 1), torch.softmax(
        torch.linspace(-1, 1, 30, dtype=F64).reshape(5, 3, 2), 1), reduction="batchmean"),
    "kl_div_log_target": lambda x: BF.kl_div(x, torch.linspace(-2, 0, 30, dtype=F64)
                                             .reshape(5, 3, 2), log_target=True),
}


@pytest.mark.parametrize("name", GRADCHECKS)
def test_gradcheck_and_gradgradcheck(name):
    fn = GRADCHECKS[name]
    z = torch.randn(5, 3, 2, dtype=F64)
    if name == "smooth_l1":  # away from the kinks |x − y| = β
        z = torch.linspace(-3, 3, 30, dtype=F64).reshape(5, 3, 2) + 0.3
    z.requires_grad_()
    assert gradcheck(fn, (z,))
    assert gradgradcheck(fn, (z,))


def test_gradcheck_in_a_probability_target():
    z = torch.randn(4, 3, dtype=F64)
    y = torch.softmax(torch.randn(4, 3, dtype=F64), 1).requires_grad_()
    assert gradcheck(lambda y: BF.cross_entropy(z, y, label_smoothing=0.1,
                                                weight=torch.tensor([1.0, 2.0, 0.5], dtype=F64)),
                     (y,))
    p = torch.rand(4, 3, dtype=F64).requires_grad_()
    assert gradgradcheck(lambda p: BF.binary_cross_entropy_with_logits(
        z, p, pos_weight=torch.tensor([2.0, 0.5, 1.5], dtype=F64)), (p,))


# ---------------------------------------------------------------- torch.func, create_graph
FUNC_CASES = {
    "cross_entropy": lambda f, z: f.cross_entropy(
        z, torch.tensor([0, 2, -100, 1, 1]), weight=torch.tensor([0.5, 1.0, 2.0], dtype=F64),
        label_smoothing=0.15),
    "nll_log_softmax": lambda f, z: f.nll_loss(f.log_softmax(z, 1), torch.tensor([0, 2, 1, 1, 0])),
    "bce_logits": lambda f, z: f.binary_cross_entropy_with_logits(
        z, torch.full((5, 3), 0.3, dtype=F64), pos_weight=torch.tensor([2.0, 0.5, 1.5],
                                                                       dtype=F64)),
    "kl_div": lambda f, z: f.kl_div(f.log_softmax(z, 1), torch.full((5, 3), 1 / 3, dtype=F64),
                                    reduction="batchmean"),
    "smooth_l1": lambda f, z: f.smooth_l1_loss(z, torch.zeros(5, 3, dtype=F64), beta=0.5),
}


@pytest.mark.parametrize("name", FUNC_CASES)
def test_torch_func_grad_and_create_graph_match_torch(name):
    fn = FUNC_CASES[name]
    z = torch.randn(5, 3, dtype=F64) * 2
    want = torch.func.grad(lambda z: fn(TF, z))(z)
    torch.testing.assert_close(torch.func.grad(lambda z: fn(BF, z))(z), want)
    zz = z.clone().requires_grad_()
    (got,) = torch.autograd.grad(fn(BF, zz), zz, create_graph=True)
    torch.testing.assert_close(got, want)
    v = torch.randn(5, 3, dtype=F64)  # a Hessian-vector product through the written backward
    (hv,) = torch.autograd.grad(got, zz, v)
    zt = z.clone().requires_grad_()
    (gt,) = torch.autograd.grad(fn(TF, zt), zt, create_graph=True)
    (hv_t,) = torch.autograd.grad(gt, zt, v)
    torch.testing.assert_close(hv, hv_t)


# ---------------------------------------------------------------- a broken backward is caught
def test_a_broken_backward_is_rejected(monkeypatch):
    """mse with ∂ℓ/∂x = (x − y) (the 2 dropped): the comparison must fail."""
    good = POINTWISE["mse"]
    monkeypatch.setitem(POINTWISE, "mse", PointwiseLoss(good.fn, lambda x, y, o: x - y,
                                                        good.grad_target))
    x = torch.randn(SHAPE, dtype=F64, requires_grad=True)
    y = torch.randn(SHAPE, dtype=F64)
    with pytest.raises(AssertionError):
        _compare(BF.mse_loss, TF.mse_loss, [x, y])


# ---------------------------------------------------------------- autocast
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "mse_loss",
                                  "binary_cross_entropy_with_logits", "kl_div", "log_softmax"])
def test_autocast_dtypes_follow_torch(name):
    z = torch.randn(N, C).to(torch.bfloat16).requires_grad_()
    args = {"cross_entropy": (torch.randint(0, C, (N,)),), "nll_loss": (torch.randint(0, C, (N,)),),
            "log_softmax": (1,)}.get(name, (torch.rand(N, C),))
    outs = []
    for f in (BF, TF):
        zz = z.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = getattr(f, name)(zz, *args)
        out.float().sum().backward()
        outs.append((out, zz.grad))
    (o_bp, g_bp), (o_t, g_t) = outs
    assert o_bp.dtype == o_t.dtype and g_bp.dtype == g_t.dtype == torch.bfloat16
    torch.testing.assert_close(o_bp.float(), o_t.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(g_bp.float(), g_t.float(), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- modules and signatures
LOSSES = ["CrossEntropyLoss", "NLLLoss", "MSELoss", "BCELoss", "BCEWithLogitsLoss", "L1Loss",
          "SmoothL1Loss", "KLDivLoss", "LogSoftmax"]
FUNCTIONALS = ["log_softmax", "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy",
               "binary_cross_entropy_with_logits", "l1_loss", "smooth_l1_loss", "kl_div"]


@pytest.mark.parametrize("name", FUNCTIONALS)
def test_functional_signature_is_torchs(name):
    ours = inspect.signature(getattr(BF, name)).parameters
    theirs = inspect.signature(getattr(TF, name)).parameters
    assert [(p.name, p.default) for p in ours.values()] == \
        [(p.name, p.default) for p in theirs.values()]


@pytest.mark.parametrize("name", LOSSES)
def test_module_signature_and_state_dict_are_torchs(name):
    ours, theirs = getattr(bnn, name), getattr(torch.nn, name)
    assert [(p.name, p.default) for p in inspect.signature(ours).parameters.values()] == \
        [(p.name, p.default) for p in inspect.signature(theirs).parameters.values()]
    kw = {}
    if "weight" in inspect.signature(theirs).parameters:
        kw["weight"] = torch.rand(C)
    if name == "BCEWithLogitsLoss":
        kw["pos_weight"] = torch.rand(C)
    assert list(ours(**kw).state_dict()) == list(theirs(**kw).state_dict())


def test_modules_match_torch():
    z, t = _logits(N, C, 4), _indices((N, 4))
    w = torch.rand(C, dtype=F64)
    _compare(lambda z: bnn.CrossEntropyLoss(w, label_smoothing=0.1)(z, t),
             lambda z: torch.nn.CrossEntropyLoss(w, label_smoothing=0.1)(z, t), [z])
    x = torch.randn(N, C, 4, dtype=F64, requires_grad=True)
    y = torch.rand(N, C, 4, dtype=F64)
    pw = torch.rand(4, dtype=F64) + 0.5
    for ours, theirs in [(bnn.BCEWithLogitsLoss(pos_weight=pw, reduction="sum"),
                          torch.nn.BCEWithLogitsLoss(pos_weight=pw, reduction="sum")),
                         (bnn.SmoothL1Loss(beta=0.3), torch.nn.SmoothL1Loss(beta=0.3)),
                         (bnn.MSELoss(), torch.nn.MSELoss()), (bnn.L1Loss(), torch.nn.L1Loss()),
                         (bnn.KLDivLoss(reduction="batchmean", log_target=True),
                          torch.nn.KLDivLoss(reduction="batchmean", log_target=True))]:
        _compare(lambda x: ours(x, y), lambda x: theirs(x, y), [x])
    _compare(lambda x: bnn.NLLLoss(w)(x, t), lambda x: torch.nn.NLLLoss(w)(x, t), [x])
    p = torch.rand(N, C, dtype=F64, requires_grad=True)
    _compare(lambda p: bnn.BCELoss(w)(p, y[..., 0]), lambda p: torch.nn.BCELoss(w)(p, y[..., 0]),
             [p])


# ---------------------------------------------------------------- the input checks
def test_checks_name_the_argument_and_the_expected_shape():
    z = torch.randn(N, C)
    with pytest.raises(TypeError, match="nll_loss: target must hold class indices"):
        BF.nll_loss(z, torch.rand(N, C))
    with pytest.raises(ValueError, match=r"class-index target must have shape \(5,\).*got \(5, 1\)"):
        BF.cross_entropy(z, torch.zeros(N, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"probability target must have the input's shape"):
        BF.cross_entropy(z, torch.rand(N, C + 1))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        BF.cross_entropy(z, torch.zeros(N, dtype=torch.long), weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"mse_loss: target must have the input's shape"):
        BF.mse_loss(z, torch.rand(N))
    with pytest.raises(ValueError, match="reduction must be one of"):
        BF.l1_loss(z, z, reduction="batchmean")
    with pytest.raises(ValueError, match="pos_weight must broadcast"):
        BF.binary_cross_entropy_with_logits(z, z, pos_weight=torch.ones(4))
    with pytest.raises(ValueError, match="probabilities in"):
        BF.binary_cross_entropy(z, torch.rand(N, C))
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        BF.log_softmax(torch.ones(3, dtype=torch.long), 0)
