"""Each module against its native torch counterpart in float32: the forward, and every
gradient under a random upstream gradient (a constant one would hide a missing
``* grad_output`` or a wrong reduction axis)."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import bptorch.nn as bnn

from helpers import away_from_zero

TOL = dict(rtol=1e-5, atol=1e-6)

NATIVE_ACT = {
    "sigmoid": tnn.Sigmoid(),
    "tanh": tnn.Tanh(),
    "relu": tnn.ReLU(),
    "leaky_relu": tnn.LeakyReLU(0.01),
    "softmax": tnn.Softmax(dim=-1),
    "identity": tnn.Identity(),
    "gelu": tnn.GELU(),
    "silu": tnn.SiLU(),
}
BP_ACT = {
    "sigmoid": bnn.Sigmoid, "tanh": bnn.Tanh, "relu": bnn.ReLU,
    "leaky_relu": bnn.LeakyReLU, "softmax": lambda: bnn.Softmax(dim=-1),
    "identity": bnn.Identity, "gelu": bnn.GELU, "silu": bnn.SiLU,
}


def grads_under_random_upstream(model, x, *params):
    """Forward, then backward with a random upstream gradient; returns (out, grads)."""
    x = x.clone().requires_grad_()
    out = model(x)
    g = torch.randn_like(out, generator=None)
    grads = torch.autograd.grad(out, (x, *params), g)
    return out, grads, g


def compare(bp_model, native_model, x, bp_params, native_params):
    torch.manual_seed(1)
    out_b, grads_b, _ = grads_under_random_upstream(bp_model, x, *bp_params)
    torch.manual_seed(1)
    out_n, grads_n, _ = grads_under_random_upstream(native_model, x, *native_params)
    torch.testing.assert_close(out_b, out_n, **TOL)
    assert len(grads_b) == len(grads_n)
    for gb, gn in zip(grads_b, grads_n):
        torch.testing.assert_close(gb, gn, **TOL)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(9,), (2, 3)], ids=["2d", "3d"])
def test_linear_matches_torch(device, bias, lead):
    native = tnn.Linear(7, 4, bias=bias, device=device)
    ours = bnn.Linear(7, 4, bias=bias, device=device)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(*lead, 7, device=device)
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


@pytest.mark.parametrize("name", list(BP_ACT))
def test_activation_module_matches_torch(device, name):
    x = away_from_zero(5, 6, device=device)
    compare(BP_ACT[name]().to(device), NATIVE_ACT[name], x, [], [])


@pytest.mark.parametrize("name", list(NATIVE_ACT))
def test_dense_matches_linear_then_activation(device, name):
    native = tnn.Sequential(tnn.Linear(7, 4, device=device), NATIVE_ACT[name])
    ours = bnn.Dense(7, 4, activation=name, device=device)
    ours.load_state_dict(native[0].state_dict())
    x = torch.randn(9, 7, device=device)
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


def test_leaky_relu_slope_and_softmax_dim(device):
    x = away_from_zero(3, 4, 5, device=device)
    compare(bnn.LeakyReLU(0.3), tnn.LeakyReLU(0.3), x, [], [])
    compare(bnn.Softmax(dim=1), tnn.Softmax(dim=1), x, [], [])
    native = tnn.Sequential(tnn.Linear(5, 3, device=device), tnn.LeakyReLU(0.2))
    ours = bnn.Dense(5, 3, "leaky_relu", negative_slope=0.2, device=device)
    ours.load_state_dict(native[0].state_dict())
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


def _native_cost(name, logits, out, y):
    n = out.shape[0]
    if name == "quadratic":
        return 0.5 * TF.mse_loss(out, y, reduction="sum") / n
    if name == "cross_entropy":
        f = TF.binary_cross_entropy_with_logits if logits else TF.binary_cross_entropy
        return f(out, y, reduction="sum") / n
    logp = TF.log_softmax(out, -1) if logits else out.log()
    return -(y * logp).sum() / n


COSTS = [
    (bnn.QuadraticCost, "quadratic", False),
    (bnn.CrossEntropyCost, "cross_entropy", False),
    (bnn.CrossEntropyCost, "cross_entropy", True),
    (bnn.LogLikelihoodCost, "log_likelihood", False),
    (bnn.LogLikelihoodCost, "log_likelihood", True),
]


@pytest.mark.parametrize("target_kind", ["indices", "soft"])
@pytest.mark.parametrize("cls,name,logits", COSTS)
def test_cost_matches_torch(device, cls, name, logits, target_kind):
    n, k = 8, 5
    raw = torch.randn(n, k, device=device)
    out = (raw if logits else torch.softmax(raw, -1) * 0.9 + 0.05).requires_grad_()
    if target_kind == "indices":
        idx = torch.randint(0, k, (n,), device=device)
        y, y_dense = idx, TF.one_hot(idx, k).float()
    else:
        y = y_dense = torch.softmax(torch.randn(n, k, device=device), -1)
    cost = cls(logits=logits) if name != "quadratic" else cls()
    g = torch.rand((), device=device) + 0.5  # a random upstream gradient for a scalar
    ours = cost(out, y)
    (gb,) = torch.autograd.grad(ours, out, g)
    native = _native_cost(name, logits, out, y_dense)
    (gn,) = torch.autograd.grad(native, out, g)
    torch.testing.assert_close(ours, native, **TOL)
    torch.testing.assert_close(gb, gn, **TOL)


def test_cost_reduction_sum_is_n_times_mean():
    out, y = torch.rand(6, 3) * 0.8 + 0.1, torch.randint(0, 3, (6,))
    mean = bnn.CrossEntropyCost()(out, y)
    total = bnn.CrossEntropyCost(reduction="sum")(out, y)
    torch.testing.assert_close(total, 6 * mean)


def test_state_dict_loads_both_ways():
    native = tnn.Sequential(tnn.Linear(6, 4), tnn.Sigmoid(), tnn.Linear(4, 3))
    ours = tnn.Sequential(bnn.Dense(6, 4), tnn.Identity(), bnn.Linear(4, 3))
    assert list(ours.state_dict()) == list(native.state_dict())
    ours.load_state_dict(native.state_dict())
    x = torch.randn(5, 6)
    torch.testing.assert_close(ours(x), native(x))
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    native2 = tnn.Sequential(tnn.Linear(6, 4), tnn.Sigmoid(), tnn.Linear(4, 3))
    native2.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(native2(x), native(x))


def test_module_dtype_device_and_optim_step(device):
    """float64 modules, a torch.optim step, and .to(): the PyTorch conventions."""
    model = tnn.Sequential(bnn.Dense(4, 3, "tanh"), bnn.Linear(3, 2)).to(device, torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == device for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(10, 4, dtype=torch.float64, device=device)
    y = torch.randint(0, 2, (10,), device=device)
    cost = bnn.LogLikelihoodCost(logits=True)
    before = cost(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        cost(model(x), y).backward()
        opt.step()
    assert cost(model(x), y).item() < before


def test_repr_looks_like_torch():
    assert repr(bnn.Linear(3, 2)) == "Linear(in_features=3, out_features=2, bias=True)"
    assert "activation='relu'" in repr(bnn.Dense(3, 2, "relu"))


def test_class_index_targets_saved_as_indices_not_one_hot():
    """Like torch's cross_entropy, the cost keeps int64 indices, not N×C one-hot floats."""
    z = torch.randn(64, 10, requires_grad=True)
    y = torch.randint(0, 10, (64,))
    from benchmarks.run import saved_bytes

    _, ours, _ = saved_bytes(lambda: bnn.LogLikelihoodCost(logits=True)(z, y))
    _, native, _ = saved_bytes(lambda: TF.cross_entropy(z, y))
    assert ours == 64 * 10 * 4 + 64 * 8  # z and the indices
    assert ours <= native


# ---- drop-in details: signatures, attributes, in place, implicit dim, pickling, meta

import copy  # noqa: E402
import inspect  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import bptorch  # noqa: E402
import bptorch.functional as BF  # noqa: E402

# (bptorch module, torch module) pairs built with the same arguments
ACT_PAIRS = {
    "sigmoid": lambda: (bnn.Sigmoid(), tnn.Sigmoid()),
    "tanh": lambda: (bnn.Tanh(), tnn.Tanh()),
    "relu": lambda: (bnn.ReLU(), tnn.ReLU()),
    "relu_inplace": lambda: (bnn.ReLU(inplace=True), tnn.ReLU(inplace=True)),
    "leaky_relu": lambda: (bnn.LeakyReLU(), tnn.LeakyReLU()),
    "leaky_relu_0.2_inplace": lambda: (bnn.LeakyReLU(0.2, True), tnn.LeakyReLU(0.2, True)),
    "leaky_relu_neg": lambda: (bnn.LeakyReLU(-0.3), tnn.LeakyReLU(-0.3)),
    "softmax_1": lambda: (bnn.Softmax(1), tnn.Softmax(1)),
    "softmax_neg": lambda: (bnn.Softmax(dim=-2), tnn.Softmax(dim=-2)),
    "identity": lambda: (bnn.Identity(3, x=4), tnn.Identity(3, x=4)),
    "gelu": lambda: (bnn.GELU(), tnn.GELU()),
    "gelu_tanh": lambda: (bnn.GELU("tanh"), tnn.GELU("tanh")),
    "silu": lambda: (bnn.SiLU(), tnn.SiLU()),
    "silu_inplace": lambda: (bnn.SiLU(inplace=True), tnn.SiLU(inplace=True)),
}
MODULE_NAMES = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "GELU",
                "SiLU", "Linear"]


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_signature_is_torchs(name):
    """Same parameter names, order, kinds and defaults as torch.nn's constructor; bptorch's
    own extras (``feedback=``, ``unfold=``) may follow, keyword-only."""
    ours = list(inspect.signature(getattr(bnn, name).__init__).parameters.values())
    theirs = list(inspect.signature(getattr(tnn, name).__init__).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
           [(p.name, p.kind, p.default) for p in theirs]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[len(theirs):])


@pytest.mark.parametrize("key", list(ACT_PAIRS))
def test_attributes_and_repr_are_torchs(key):
    ours, theirs = ACT_PAIRS[key]()
    for attr in ("inplace", "negative_slope", "dim", "approximate"):
        assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("key", list(ACT_PAIRS))
def test_activation_modules_match_torch_under_random_upstream(device, key):
    """Forward and input gradient, through a non-leaf input (in-place modules
    overwrite it), with a random upstream gradient."""
    ours, theirs = ACT_PAIRS[key]()
    x = (away_from_zero(3, 4, 5, device=device) * 2).requires_grad_()
    g = torch.randn(3, 4, 5, device=device)
    out_b, out_n = ours(x * 1), theirs(x * 1)
    torch.testing.assert_close(out_b, out_n, **TOL)
    (gb,) = torch.autograd.grad(out_b, x, g)
    (gn,) = torch.autograd.grad(out_n, x, g)
    torch.testing.assert_close(gb, gn, **TOL)


INPLACE = {
    "relu": (lambda: bnn.ReLU(True), lambda: tnn.ReLU(True)),
    "leaky_relu": (lambda: bnn.LeakyReLU(0.1, True), lambda: tnn.LeakyReLU(0.1, True)),
    "silu": (lambda: bnn.SiLU(True), lambda: tnn.SiLU(True)),
    "f.relu": (lambda: lambda t: BF.relu(t, inplace=True), lambda: lambda t: TF.relu(t, True)),
    "f.leaky_relu": (lambda: lambda t: BF.leaky_relu(t, 0.3, True),
                     lambda: lambda t: TF.leaky_relu(t, 0.3, True)),
    "f.silu": (lambda: lambda t: BF.silu(t, inplace=True), lambda: lambda t: TF.silu(t, True)),
}


@pytest.mark.parametrize("key", list(INPLACE))
def test_inplace_overwrites_and_returns_the_input(device, key):
    ours, theirs = (f() for f in INPLACE[key])
    x = (away_from_zero(4, 6, device=device)).requires_grad_()
    g = torch.randn(4, 6, device=device)
    y_b, y_n = x * 2, x * 2
    out_b, out_n = ours(y_b), theirs(y_n)
    assert out_b is y_b and out_n is y_n  # the input itself, overwritten
    assert y_b._version > 0 and y_n._version > 0  # marked as modified
    torch.testing.assert_close(y_b, y_n, **TOL)
    (gb,) = torch.autograd.grad(out_b, x, g)
    (gn,) = torch.autograd.grad(out_n, x, g)
    torch.testing.assert_close(gb, gn, **TOL)
    # and without autograd at all: plain overwrite
    z = torch.randn(4, 6, device=device)
    z_ref = z.clone()
    assert ours(z) is z
    torch.testing.assert_close(z, theirs(z_ref), **TOL)


@pytest.mark.parametrize("key", list(INPLACE))
def test_inplace_refuses_what_torch_refuses(key):
    ours, theirs = (f() for f in INPLACE[key])
    leaf = torch.randn(3, 4, requires_grad=True)
    msgs = []
    for f in (ours, theirs):
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad") as e:
            f(leaf)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    for f in (ours, theirs):
        with pytest.raises(RuntimeError, match="a view of a leaf Variable"):
            f(leaf[1:])
    with torch.no_grad():  # under no_grad torch allows it, and so do we
        out = ours(leaf)
    assert out is leaf


def test_inplace_negative_slope_backward_refused_as_torch():
    """leaky_relu_ with s < 0 cannot know z afterwards: torch refuses its backward."""
    x = torch.randn(3, 4, requires_grad=True)
    errors = []
    for f in (bnn.LeakyReLU(-0.5, True), tnn.LeakyReLU(-0.5, True)):
        out = f(x * 1)
        with pytest.raises(RuntimeError, match="negative slope") as e:
            out.sum().backward()
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    z = torch.randn(3, 4)  # the forward itself is allowed, as in torch
    torch.testing.assert_close(BF.leaky_relu(z.clone(), -0.5, True), TF.leaky_relu(z, -0.5))


@pytest.mark.parametrize("key", ["relu", "leaky_relu", "silu"])
def test_inplace_forward_ad_matches_torch(key):
    """Forward mode: the tangent is updated in place too."""
    import torch.autograd.forward_ad as fwAD

    ours, theirs = (f() for f in INPLACE[key])
    x, dx = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    tangents = []
    with fwAD.dual_level():
        for f in (ours, theirs):
            p = fwAD.make_dual(x.clone(), dx.clone())
            out = f(p)
            assert out is p
            tangents.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(*tangents)


@pytest.mark.parametrize("slope", [-0.3, -2.0, 0.0])
def test_negative_slope_matches_torch(device, slope):
    x = away_from_zero(6, 5, device=device)
    compare(bnn.LeakyReLU(slope), tnn.LeakyReLU(slope), x, [], [])
    native = tnn.Sequential(tnn.Linear(5, 3, device=device), tnn.LeakyReLU(slope))
    ours = bnn.Dense(5, 3, "leaky_relu", negative_slope=slope, device=device)
    ours.load_state_dict(native[0].state_dict())
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


def test_attributes_are_read_at_call_time_as_torch():
    ours, theirs = bnn.LeakyReLU(0.1), tnn.LeakyReLU(0.1)
    ours.negative_slope = theirs.negative_slope = -0.7
    x = torch.randn(4, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    ours, theirs = bnn.GELU(), tnn.GELU()
    ours.approximate = theirs.approximate = "tanh"
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
def test_softmax_dim_none_matches_torch(shape):
    """torch's implicit dim (0 for 0-, 1-, 3-dim input, else 1) and its warning."""
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    for ours, theirs in [(bnn.Softmax(), tnn.Softmax()),
                         (BF.softmax, TF.softmax)]:
        results = []
        for f in (ours, theirs):
            xi = x.clone().requires_grad_()
            with pytest.warns(UserWarning, match="Implicit dimension choice for softmax") as w:
                out = f(xi)
            if f is ours:
                assert w[0].filename == __file__  # the warning points at the caller
            results.append((out, torch.autograd.grad(out, xi, g)[0]))
        torch.testing.assert_close(results[0], results[1])


def test_softmax_dim_type_and_functional_dtype():
    with pytest.raises(TypeError, match="dim must be an int or None"):
        bnn.Softmax(1.0)
    x = torch.randn(3, 4)
    torch.testing.assert_close(BF.softmax(x, 1, dtype=torch.float64),
                               TF.softmax(x, 1, dtype=torch.float64))


def test_gelu_silu_functional_match_torch():
    x = (away_from_zero(5, 7, dtype=torch.float64) * 2).requires_grad_()
    g = torch.randn(5, 7, dtype=torch.float64)
    for ours, theirs in [(BF.gelu(x), TF.gelu(x)),
                         (BF.gelu(x, approximate="tanh"), TF.gelu(x, approximate="tanh")),
                         (BF.silu(x), TF.silu(x))]:
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0],
                                   torch.autograd.grad(theirs, x, g)[0])


def test_gelu_bad_approximate_is_refused():
    with pytest.raises(ValueError, match="'none' or 'tanh'"):
        bnn.GELU("exact")


def _models():
    """Every activation module, Dense with each activation, a Sequential, a Network."""
    out = {key: f()[0] for key, f in ACT_PAIRS.items()}
    for name in bptorch.ACTIVATIONS:
        out[f"dense_{name}"] = bnn.Dense(5, 4, name)
    out["dense_gelu_tanh"] = bnn.Dense(5, 4, bptorch.activations.gelu("tanh"))
    out["dense_leaky_neg"] = bnn.Dense(5, 4, "leaky_relu", negative_slope=-0.2)
    out["linear"] = bnn.Linear(5, 4)
    out["sequential"] = tnn.Sequential(bnn.Linear(5, 6), bnn.GELU(), bnn.Dense(6, 4, "silu"),
                                       bnn.LeakyReLU(-0.1), bnn.Softmax(1))
    out["network"] = bptorch.Network([5, 6, 4], activation="tanh", cost="log_likelihood")
    return out


def _roundtrips():
    def torch_save(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    return {"pickle": lambda m: pickle.loads(pickle.dumps(m)), "deepcopy": copy.deepcopy,
            "torch.save": torch_save}


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch.save"])
@pytest.mark.parametrize("key", list(_models()))
def test_roundtrip_keeps_outputs_and_gradients(key, how):
    torch.manual_seed(3)
    model = _models()[key]
    copied = _roundtrips()[how](model)
    assert type(copied) is type(model) and repr(copied) == repr(model)
    x = away_from_zero(3, 5) * 2
    g = torch.randn(3, 4 if key.startswith(("dense", "linear", "seq", "network")) else 5)
    results = []
    for m in (model, copied):
        xi = x.clone().requires_grad_()
        out = m(xi * 1)  # a non-leaf, for the in-place modules
        params = list(m.parameters())
        results.append((out, torch.autograd.grad(out, [xi, *params], g)))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    if params:  # a copy, not the same tensors
        assert all(p is not q for p, q in zip(model.parameters(), copied.parameters()))


def test_network_explicit_engine_survives_pickling():
    net = bptorch.Network([5, 6, 3], cost="cross_entropy")
    net2 = pickle.loads(pickle.dumps(net))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    assert net.backprop(x, y) == net2.backprop(x, y)
    for p, q in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


@pytest.mark.parametrize("key", list(ACT_PAIRS))
def test_activation_modules_on_meta(key):
    ours, theirs = ACT_PAIRS[key]()
    x = torch.empty(2, 3, 4, device="meta")
    a, b = ours(x.clone()), theirs(x.clone())
    assert (a.device, a.shape, a.dtype) == (b.device, b.shape, b.dtype)


@pytest.mark.parametrize("activation", bptorch.ACTIVATIONS)
def test_linear_and_dense_on_meta(activation):
    """As torch's, parameters and outputs on the meta device: shapes only, no data."""
    x = torch.empty(2, 7, 3, device="meta")
    theirs = tnn.Linear(3, 4, device="meta")(x)
    for ours in (bnn.Linear(3, 4, device="meta"), bnn.Dense(3, 4, activation, device="meta"),
                 bnn.Linear(3, 4, bias=False, device="meta")):
        assert ours.weight.is_meta
        out = ours(x)
        assert (out.device, out.shape, out.dtype) == (theirs.device, theirs.shape, theirs.dtype)
    dense = bnn.Dense(3, 4, activation, device="meta", dtype=torch.float64)
    assert dense.weight.dtype == torch.float64
    # and back to real memory, as torch's to_empty
    real = bnn.Dense(3, 4, activation).to_empty(device="cpu")
    assert real(torch.randn(2, 3)).shape == (2, 4)


def test_meta_backward():
    layer = bnn.Dense(3, 4, "gelu", device="meta")
    x = torch.empty(5, 3, device="meta", requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad.is_meta and x.grad.shape == (5, 3)


def test_import_bptorch_exposes_submodules_and_keeps_threads():
    """A fresh interpreter: every public submodule is an attribute after ``import
    bptorch``, bptorch.nn is bptorch's, and torch's thread count is left alone."""
    code = (
        "import torch; n = torch.get_num_threads(); import bptorch, sys;"
        "assert torch.get_num_threads() == n, (n, torch.get_num_threads());"
        "names = ['activations', 'convert', 'data', 'diagnostics', 'distributed',"
        " 'functional', 'functions', 'nn'];"
        "assert all(getattr(bptorch, s) is sys.modules['bptorch.' + s] for s in names);"
        "assert set(names) <= set(bptorch.__all__);"
        "assert 'torchvision' not in sys.modules;"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("key", list(ACT_PAIRS))
def test_to_torch_nn_gives_the_same_module(key):
    from bptorch.convert import to_torch_nn

    ours, theirs = ACT_PAIRS[key]()
    plain = to_torch_nn(ours)
    assert type(plain) is type(theirs)
    for attr in ("negative_slope", "dim", "approximate"):
        assert getattr(plain, attr, None) == getattr(theirs, attr, None)
