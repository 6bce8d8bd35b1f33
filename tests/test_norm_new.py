"""GroupNorm, InstanceNorm1d/2d/3d, BatchNorm3d, BatchNorm's empty batch, Dropout1d/2d/3d
and (Feature)AlphaDropout against their torch.nn twins: forward and backward under a
random upstream gradient in float64 at non-square shapes, options drawn across their
values, train and eval mode, running statistics; gradcheck and gradgradcheck; first-order
gradients taken with create_graph=True and with torch.func.grad equal to torch's; CPU
autocast in bfloat16; the from_torch_nn/to_torch_nn round trip; dropout masks equal to
torch's under the same seed; bad inputs; and a broken backward the checks reject."""
from __future__ import annotations

import inspect
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.convert import from_torch_nn, to_torch_nn
from bptorch.functions.normalization import GroupNormFunction

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(got, want, msg=""):
    """float64 closeness, with an absolute floor of 1e-6 of the reference's largest value:
    an entry that is zero in exact arithmetic is roundoff in both engines."""
    floor = 1e-6 * float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=1e-7, atol=max(floor, 1e-12), msg=msg)


def _randomise(module):
    """Parameters and running statistics a fresh layer would not have."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand_like(p) + 0.5 if p.dim() else p)
            if module.bias is not None and p is module.bias:
                p.normal_()
        for name, b in module.named_buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5) if name == "running_var" else b.normal_()
    return module


def _steps(theirs, shape, train=True, steps=2, seed=None):
    """Converts ``theirs``, then runs both for ``steps`` forward/backward passes (fresh
    input, random upstream gradient each), comparing outputs, the input's and every
    parameter's gradient, and the state_dict (running statistics) after each."""
    theirs.zero_grad(set_to_none=True)
    ours = from_torch_nn(theirs)
    assert type(ours) is getattr(bnn, type(theirs).__name__)
    ours.train(train), theirs.train(train)
    for step in range(steps):
        x = torch.randn(*shape, dtype=D) * 2 + 0.3
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        if seed is not None:
            torch.manual_seed(seed + step)
        y_theirs = theirs(x1)
        if seed is not None:
            torch.manual_seed(seed + step)
        y_ours = ours(x2)
        _close(y_ours, y_theirs, "output")
        g = torch.randn_like(y_theirs)
        y_theirs.backward(g)
        y_ours.backward(g)
        _close(x2.grad, x1.grad, "input grad")
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            _close(p.grad, q.grad, f"grad of {name}")
        s1, s2 = ours.state_dict(), theirs.state_dict()
        assert list(s1) == list(s2)
        for k in s1:
            if s2[k].is_floating_point():
                _close(s1[k], s2[k], k)
            else:
                assert torch.equal(s1[k], s2[k]), k
    return ours


# ---------------------------------------------------------------- gradcheck / gradgradcheck
GN_CASES = [((2, 6, 3), 3), ((2, 4, 1, 3), 2), ((3, 4), 4), ((2, 2, 3, 2), 1),
            ((1, 3, 2, 1, 3), None)]  # None: one group per channel, InstanceNorm
GN_IDS = ["NCL-G3", "NCHW-G2", "NC-G=C", "G1", "instance-3d"]


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape,groups", GN_CASES, ids=GN_IDS)
def test_group_norm_gradcheck(shape, groups, affine):
    c = shape[1]
    x = (torch.randn(*shape, dtype=D) * 2 - 0.5).requires_grad_()
    w = (torch.rand(c, dtype=D) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=D, requires_grad=True)
    args = {"both": (x, w, b), "weight": (x, w), "none": (x,)}[affine]

    def fn(x, w=None, b=None):
        return GroupNormFunction.apply(x, groups, w, b, 1e-5)[0]

    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm3d_and_instance_norm_functional_gradcheck(training):
    x = (torch.randn(2, 3, 1, 2, 3, dtype=D) * 2 + 0.5).requires_grad_()
    w = (torch.rand(3, dtype=D) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=D, requires_grad=True)
    rm, rv = torch.randn(3, dtype=D), torch.rand(3, dtype=D) + 0.5

    def bn(x, w, b):
        return BF.batch_norm(x, rm.clone(), rv.clone(), w, b, training)

    def inorm(x, w, b):
        return BF.instance_norm(x, rm.clone(), rv.clone(), w, b, training)

    for fn in (bn, inorm):
        assert gradcheck(fn, (x, w, b))
        assert gradgradcheck(fn, (x, w, b))


def test_channel_mask_and_shift_gradcheck():
    """a = z ⊙ m + b with m and b broadcast over the spatial axes (channel-wise and alpha
    dropout): ∂C/∂m and ∂C/∂b are summed over the axes they were broadcast along."""
    from bptorch.functions.dropout import AlphaDropoutFunction, DropoutFunction

    z = torch.randn(3, 2, 4, dtype=D, requires_grad=True)
    m = torch.randn(3, 2, 1, dtype=D, requires_grad=True)
    b = torch.randn(3, 2, 1, dtype=D, requires_grad=True)
    assert gradcheck(DropoutFunction.apply, (z, m))
    assert gradgradcheck(DropoutFunction.apply, (z, m))
    assert gradcheck(AlphaDropoutFunction.apply, (z, m, b))
    assert gradgradcheck(AlphaDropoutFunction.apply, (z, m, b))


# ---------------------------------------------------------------- modules against torch.nn
@pytest.mark.parametrize("kw", [{}, {"affine": False}, {"bias": False}, {"eps": 1e-2}],
                         ids=["default", "no-affine", "no-bias", "eps"])
@pytest.mark.parametrize("groups,channels,shape", [(3, 6, (4, 6, 5)), (2, 4, (3, 4, 3, 5)),
                                                   (1, 3, (2, 3, 2, 2, 3)), (5, 5, (3, 5)),
                                                   (2, 4, (0, 4, 3))],
                         ids=["NCL", "NCHW", "NCDHW-G1", "NC-G=C", "empty"])
def test_group_norm_matches_torch(groups, channels, shape, kw):
    theirs = _randomise(nn.GroupNorm(groups, channels, dtype=D, **kw))
    for train in (True, False):
        _steps(theirs, shape, train)


IN_KWARGS = [{}, {"affine": True}, {"track_running_stats": True},
             {"affine": True, "track_running_stats": True, "momentum": 0.3, "eps": 1e-3},
             {"affine": True, "bias": False}, {"track_running_stats": True, "momentum": None}]
IN_IDS = ["default", "affine", "stats", "affine-stats-momentum", "no-bias", "momentum-None"]


@pytest.mark.parametrize("kw", IN_KWARGS, ids=IN_IDS)
@pytest.mark.parametrize("name,shape", [("InstanceNorm1d", (4, 3, 5)), ("InstanceNorm1d", (3, 5)),
                                        ("InstanceNorm2d", (2, 3, 4, 5)),
                                        ("InstanceNorm2d", (3, 2, 5)),
                                        ("InstanceNorm3d", (2, 3, 2, 3, 2)),
                                        ("InstanceNorm3d", (3, 2, 3, 2))],
                         ids=["1d", "1d-unbatched", "2d", "2d-unbatched", "3d",
                              "3d-unbatched"])
def test_instance_norm_matches_torch(name, shape, kw):
    """Two training steps (outputs, gradients, running statistics updated from the
    batch's averages), then eval mode (the running statistics when tracked)."""
    theirs = _randomise(getattr(nn, name)(3, dtype=D, **kw))
    ours = _steps(theirs, shape, train=True)
    ours.eval(), theirs.eval()
    x = torch.randn(*shape, dtype=D)
    _close(ours(x), theirs(x))
    _steps(theirs, shape, train=False)


BN3D_KWARGS = [{}, {"momentum": None}, {"affine": False}, {"bias": False},
               {"track_running_stats": False}, {"momentum": 0.3, "eps": 1e-3}]


@pytest.mark.parametrize("kw", BN3D_KWARGS,
                         ids=["default", "cumulative", "no-affine", "no-bias", "no-stats",
                              "momentum-eps"])
def test_batch_norm3d_matches_torch(kw):
    theirs = _randomise(nn.BatchNorm3d(3, dtype=D, **kw))
    _steps(theirs, (2, 3, 3, 2, 4), train=True, steps=3)
    _steps(theirs, (2, 3, 3, 2, 4), train=False)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name,shape", [("BatchNorm1d", (0, 3)), ("BatchNorm1d", (0, 3, 4)),
                                        ("BatchNorm2d", (0, 3, 4, 2)),
                                        ("BatchNorm3d", (0, 3, 2, 2, 3)),
                                        ("BatchNorm2d", (2, 3, 0, 4))],
                         ids=["1d-NC", "1d-NCL", "2d", "3d", "2d-no-positions"])
def test_batch_norm_empty_batch_as_torch(name, shape, momentum):
    """An empty batch: an empty output of the input's shape, zero parameter gradients,
    the running statistics left alone and num_batches_tracked counted, as torch; then a
    real batch, and eval mode."""
    theirs = _randomise(getattr(nn, name)(3, dtype=D, momentum=momentum))
    stats = {k: v.clone() for k, v in theirs.state_dict().items()}
    ours = _steps(theirs, shape, train=True, steps=1)
    assert ours(torch.randn(*shape, dtype=D)).shape == shape
    for k in ("running_mean", "running_var"):
        assert torch.equal(ours.state_dict()[k], stats[k])
    assert int(ours.num_batches_tracked) == 2
    assert not ours.weight.grad.any() and not ours.bias.grad.any()
    full = (4, *shape[1:2], *[max(n, 2) for n in shape[2:]])
    _steps(theirs, full, train=True, steps=1)
    _steps(theirs, shape, train=False, steps=1)
    for kw in ({"track_running_stats": False}, {"affine": False}):
        _steps(getattr(nn, name)(3, dtype=D, **kw), shape, train=True, steps=1)


def test_output_strides_are_torchs():
    """channels_last input: GroupNorm and BatchNorm3d keep the layout, InstanceNorm's output
    is contiguous, as torch's (a dropout after them draws its mask over the same elements)."""
    x = torch.randn(2, 6, 3, 4, dtype=D).to(memory_format=torch.channels_last)
    x3 = torch.randn(2, 3, 2, 3, 4, dtype=D).to(memory_format=torch.channels_last_3d)
    w, b, rm, rv = torch.rand(6, dtype=D), torch.rand(6, dtype=D), torch.zeros(6, dtype=D), \
        torch.ones(6, dtype=D)
    for ours, theirs in [(BF.group_norm(x, 3, w, b), F.group_norm(x, 3, w, b)),
                         (BF.instance_norm(x, None, None, w, b),
                          F.instance_norm(x, None, None, w, b)),
                         (BF.instance_norm(x, rm, rv, w, b, False),
                          F.instance_norm(x, rm, rv, w, b, False)),
                         (BF.batch_norm(x3, None, None, training=True),
                          F.batch_norm(x3, None, None, training=True))]:
        assert ours.stride() == theirs.stride()
        _close(ours, theirs)


# ---------------------------------------------------------------- dropout
DROPOUT_CASES = [("Dropout1d", (4, 5, 6)), ("Dropout1d", (5, 6)), ("Dropout2d", (3, 4, 5, 2)),
                 ("Dropout3d", (2, 4, 3, 2, 2)), ("Dropout3d", (4, 3, 2, 2)),
                 ("FeatureAlphaDropout", (3, 4, 5)), ("AlphaDropout", (6, 7))]
DROPOUT_IDS = ["1d", "1d-unbatched", "2d", "3d", "3d-unbatched", "feature-alpha", "alpha"]


@pytest.mark.parametrize("p", [0.3, 0.0, 1.0])
@pytest.mark.parametrize("name,shape", DROPOUT_CASES, ids=DROPOUT_IDS)
def test_dropout_matches_torch_under_the_same_seed(name, shape, p):
    """The same mask as torch's from the same seed (so the same output and gradients),
    train and eval; a channel is dropped whole."""
    theirs = getattr(nn, name)(p)
    ours = _steps(theirs, shape, train=True, steps=2, seed=7)
    _steps(theirs, shape, train=False, steps=1, seed=7)
    if "Alpha" not in name and 0 < p < 1:
        torch.manual_seed(3)
        y = ours.train()(torch.ones(*shape, dtype=D))
        per_channel = y.reshape(*y.shape[:(1 if len(shape) in (2, 4) and name != "Dropout2d"
                                           else 2)], -1)
        assert (per_channel == per_channel[..., :1]).all()  # one value per channel
        assert set(y.unique().tolist()) <= {0.0, 1 / (1 - p)}


@pytest.mark.parametrize("name,shape", DROPOUT_CASES[:5], ids=DROPOUT_IDS[:5])
def test_channel_dropout_in_place_matches_torch(name, shape):
    x = torch.randn(*shape, dtype=D)
    a, b = x.clone(), x.clone()
    torch.manual_seed(11)
    out_theirs = getattr(nn, name)(0.4, inplace=True)(a)
    torch.manual_seed(11)
    out_ours = getattr(bnn, name)(0.4, inplace=True)(b)
    assert out_ours.data_ptr() == b.data_ptr()
    assert torch.equal(out_ours, out_theirs) and torch.equal(b, a)
    # through autograd: a non-leaf input, overwritten, and its gradient
    leaf = x.clone().requires_grad_()
    torch.manual_seed(11)
    y = getattr(bnn, name)(0.4, inplace=True)(leaf * 1)
    y.backward(torch.ones_like(y))
    torch.manual_seed(11)
    mask = getattr(nn, name)(0.4)(torch.ones_like(x))  # torch's m, broadcast out
    assert torch.equal(leaf.grad, mask)  # δ ⊙ m with δ = 1


def test_dropout2d_3d_input_warns_as_torch_and_drops_as_1d():
    x = torch.randn(3, 4, 5, dtype=D)
    with warnings.catch_warnings(record=True) as theirs_w:
        warnings.simplefilter("always")
        torch.manual_seed(2)
        want = F.dropout2d(x, 0.5)
    with warnings.catch_warnings(record=True) as ours_w:
        warnings.simplefilter("always")
        torch.manual_seed(2)
        got = BF.dropout2d(x, 0.5)
    assert torch.equal(got, want)
    assert [str(w.message) for w in ours_w] == [str(w.message) for w in theirs_w]
    with pytest.warns(UserWarning, match="Received a 3-D input to dropout3d"):
        torch.manual_seed(2)
        got = BF.dropout3d(x, 0.5)
    with pytest.warns(UserWarning):
        torch.manual_seed(2)
        want = F.dropout3d(x, 0.5)
    assert torch.equal(got, want)


# ---------------------------------------------------------------- create_graph and torch.func
CREATE_GRAPH = {
    "group_norm": (lambda: nn.GroupNorm(2, 6), (3, 6, 4)),
    "group_norm_no_affine": (lambda: nn.GroupNorm(3, 6, affine=False), (2, 6, 2, 3)),
    "instance_norm1d_affine": (lambda: nn.InstanceNorm1d(3, affine=True), (4, 3, 5)),
    "instance_norm2d": (lambda: nn.InstanceNorm2d(3), (2, 3, 4, 5)),
    "instance_norm3d_unbatched": (lambda: nn.InstanceNorm3d(3, affine=True), (3, 2, 3, 2)),
    "instance_norm_running_eval": (
        lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True).eval(),
        (2, 3, 4, 5)),
    "batch_norm3d": (lambda: nn.BatchNorm3d(3, track_running_stats=False), (2, 3, 2, 3, 2)),
    "batch_norm3d_eval": (lambda: nn.BatchNorm3d(3).eval(), (2, 3, 2, 3, 2)),
    "dropout1d": (lambda: nn.Dropout1d(0.4), (4, 5, 6)),
    "dropout2d": (lambda: nn.Dropout2d(0.4), (3, 4, 3, 2)),
    "dropout3d": (lambda: nn.Dropout3d(0.4), (2, 4, 2, 3, 2)),
    "alpha_dropout": (lambda: nn.AlphaDropout(0.4), (5, 6)),
}


@pytest.mark.parametrize("name", sorted(CREATE_GRAPH))
def test_first_order_grad_with_create_graph_and_torch_func_match_torch(name):
    """The gradient taken with create_graph=True (the backward taped, the path double
    backward runs) and with torch.func.grad w.r.t. the input equal torch's."""
    make, shape = CREATE_GRAPH[name]
    torch.manual_seed(0)
    theirs = _randomise(make().to(D)) if list(make().parameters()) or \
        list(make().buffers()) else make().to(D)
    ours = from_torch_nn(theirs)
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    torch.manual_seed(1)
    g = torch.randn_like(theirs(x))
    torch.manual_seed(2)
    want = torch.autograd.grad(theirs(x), (x, *theirs.parameters()), g)
    torch.manual_seed(2)
    got = torch.autograd.grad(ours(x), (x, *ours.parameters()), g, create_graph=True)
    assert got[0].requires_grad or "dropout" in name
    for w, o, what in zip(want, got, ("input", *(n for n, _ in ours.named_parameters()))):
        _close(o, w, f"{name}: {what}")
    torch.manual_seed(2)
    got_x = grad(lambda x: (ours(x) * g).sum())(x.detach())
    _close(got_x, want[0], f"{name}: torch.func.grad")


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) through the new layers: one graph (a break raises),
    eager's gradients."""
    model = nn.Sequential(bnn.GroupNorm(2, 4), bnn.Dropout2d(0.3), bnn.AlphaDropout(0.2))
    x = torch.randn(3, 4, 5, 2)

    def loss_fn(m, x):
        return (m(x) ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")  # raises on a break
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(0)
    compiled(model, x1).backward()
    torch.manual_seed(0)
    loss_fn(model, x2).backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch._dynamo.reset()


# ---------------------------------------------------------------- autocast
def _scale_close(got, want, rel=0.05):
    got, want = got.detach().float(), want.detach().float()
    assert want.norm() > 0
    assert (got - want).norm() <= rel * want.norm()
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


AUTOCAST = {
    "GroupNorm": (lambda: nn.GroupNorm(2, 6), (4, 6, 5), torch.float32),
    "GroupNorm-low": (lambda: nn.GroupNorm(3, 6), (4, 6, 5), torch.bfloat16),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 5), torch.float32),
    "InstanceNorm1d-low-stats": (
        lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), (4, 3, 6),
        torch.bfloat16),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(3), (2, 3, 2, 3, 4), torch.float32),
    "BatchNorm3d-low": (lambda: nn.BatchNorm3d(3), (2, 3, 2, 3, 4), torch.bfloat16),
    "Dropout2d-low": (lambda: nn.Dropout2d(0.3), (3, 4, 3, 2), torch.bfloat16),
}


@pytest.mark.parametrize("name", list(AUTOCAST))
def test_cpu_autocast_bfloat16_as_torch(name):
    """Under CPU autocast in bfloat16: the output in torch's dtype, and the output and
    every gradient (each in its own input's dtype) close to torch's, to scale."""
    make, shape, in_dtype = AUTOCAST[name]
    torch.manual_seed(0)
    theirs = _randomise(make())
    ours = from_torch_nn(theirs)
    x = torch.randn(*shape).to(in_dtype)
    results = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        torch.manual_seed(4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xi)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
        grads = torch.autograd.grad(y, (xi, *m.parameters()), g)
        results.append((y, grads, [b.clone() for b in m.buffers()]))
    (y1, g1, b1), (y2, g2, b2) = results
    assert y1.dtype == y2.dtype
    _scale_close(y1, y2)
    for a, b in zip(g1, g2, strict=True):
        assert a.dtype == b.dtype
        _scale_close(a, b)
    for a, b in zip(b1, b2, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)


# ---------------------------------------------------------------- the rest of the checklist
NEW = ["GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm3d",
       "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]
FIRST_ARGS = {"GroupNorm": (2, 4)}


@pytest.mark.parametrize("name", NEW)
def test_signature_repr_state_and_pickle_are_torchs(name):
    ours_cls, theirs_cls = getattr(bnn, name), getattr(nn, name)
    ours_p = inspect.signature(ours_cls.__init__).parameters.values()
    theirs_p = inspect.signature(theirs_cls.__init__).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours_p] == \
        [(p.name, p.kind, p.default) for p in theirs_p]
    args = FIRST_ARGS.get(name, (4,) if "Norm" in name else (0.3,))
    variants = [{}]
    if "Norm" in name:
        variants += [{"affine": True, "bias": False}, {"affine": False}]
        if name != "GroupNorm":
            variants.append({"track_running_stats": not theirs_cls(*args).track_running_stats})
    for kw in variants:
        torch.manual_seed(0)
        ours = ours_cls(*args, **kw)
        torch.manual_seed(0)
        theirs = theirs_cls(*args, **kw)
        assert repr(ours) == repr(theirs)
        s1, s2 = ours.state_dict(), theirs.state_dict()
        assert list(s1) == list(s2)
        for k in s1:
            assert torch.equal(s1[k], s2[k]), k
        back = pickle.loads(pickle.dumps(ours))
        assert type(back) is ours_cls and repr(back) == repr(ours)
        theirs.load_state_dict(ours.state_dict())
        ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.GroupNorm(3, 6, eps=1e-3, bias=False), (2, 6, 5)),
    (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True, momentum=0.2),
     (2, 3, 4, 5)),
    (lambda: nn.InstanceNorm1d(4), (4, 6)),
    (lambda: nn.BatchNorm3d(3, momentum=None).eval(), (2, 3, 2, 2, 3)),
    (lambda: nn.Dropout3d(0.25).eval(), (2, 3, 2, 2, 3)),
    (lambda: nn.AlphaDropout(0.2).eval(), (4, 5)),
], ids=["group", "instance2d", "instance1d-unbatched", "batch3d", "dropout3d", "alpha"])
def test_round_trip_keeps_outputs(make, shape):
    """torch → from_torch_nn → to_torch_nn: the same class, state and outputs."""
    torch.manual_seed(0)
    theirs = _randomise(make().to(D)) if list(make().parameters()) else make().to(D)
    ours = from_torch_nn(theirs)
    assert type(ours) is getattr(bnn, type(theirs).__name__)
    back = to_torch_nn(ours)
    assert type(back) is type(theirs) and repr(back) == repr(theirs)
    x = torch.randn(*shape, dtype=D)
    _close(ours(x), theirs(x))
    _close(back(x), theirs(x))
    assert back.training == theirs.training


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"num_channels \(5\) must be divisible"):
        bnn.GroupNorm(2, 5)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        BF.group_norm(torch.randn(2, 6, 3), 4)
    with pytest.raises(ValueError, match="num_features=6 channels"):
        bnn.GroupNorm(2, 6)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"shape \(N, C, \*\)"):
        BF.group_norm(torch.randn(6), 2)
    with pytest.raises(ValueError, match="more than 1 value"):
        BF.group_norm(torch.randn(1, 2), 2)
    with pytest.raises(TypeError, match="floating-point"):
        bnn.GroupNorm(1, 2)(torch.ones(2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="expects 2D or 3D input, got 4D"):
        bnn.InstanceNorm1d(3)(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="expects 5D input"):
        bnn.BatchNorm3d(3)(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        bnn.InstanceNorm1d(3)(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match=r"to match num_features \(3\)"):
        bnn.InstanceNorm1d(3, affine=True)(torch.randn(2, 4, 5))
    with pytest.warns(UserWarning, match="does not match num_features"):
        bnn.InstanceNorm1d(3)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="must be given when use_input_stats=False"):
        BF.instance_norm(torch.randn(2, 3, 4), use_input_stats=False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnn.BatchNorm3d(3)(torch.randn(1, 3, 1, 1, 1))
    with pytest.raises(ValueError, match="dropout1d expects"):
        bnn.Dropout1d()(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="at least 2 dims"), \
            pytest.warns(UserWarning, match="Received a 1-D input to dropout2d"):
        BF.dropout2d(torch.randn(5), 0.5)
    with pytest.raises(ValueError, match="must lie in"):
        bnn.Dropout2d(1.5)
    with pytest.raises(TypeError, match="floating-point"):
        BF.dropout3d(torch.ones(2, 3, 4, 5, 6, dtype=torch.long))


def test_broken_backward_is_rejected():
    """A group-norm backward that drops the x̂ ⊙ mean(∂C/∂x̂ ⊙ x̂) term (the path through
    σ²) fails gradcheck and disagrees with torch: the checks can tell."""
    from bptorch.functions import normalization as norm

    class Broken(GroupNormFunction):
        @staticmethod
        def backward(ctx, grad_output, _grad_mean, _grad_rstd):
            x, _w, mean, rstd = ctx.saved_tensors
            delta = norm._group_view(grad_output, ctx.num_groups)
            rstd = rstd.reshape(*rstd.shape, 1, 1)
            grad_input = (delta - delta.mean(norm.GROUP_DIMS, keepdim=True)) * rstd
            return grad_input.reshape(x.shape), None, None, None, None

    x = torch.randn(3, 4, 5, dtype=D, requires_grad=True)
    assert not gradcheck(lambda x: Broken.apply(x, 2, None, None, 1e-5)[0], (x,),
                         raise_exception=False)
    g = torch.randn(3, 4, 5, dtype=D)
    got = torch.autograd.grad(Broken.apply(x, 2, None, None, 1e-5)[0], x, g)[0]
    want = torch.autograd.grad(F.group_norm(x, 2), x, g)[0]
    assert not torch.allclose(got, want, atol=1e-3)
