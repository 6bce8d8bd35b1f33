"""Issue 21's activations against their torch.nn twins: ReLU6, Hardtanh, Hardswish,
Hardsigmoid, ELU, SELU, Softplus, Mish, PReLU (a learned slope, its own BP4) and LogSoftmax.

Each case is one module with its options; every check runs over every case in float64 at
non-square shapes with a random upstream gradient: forward and backward parity (train and
eval), gradcheck and gradgradcheck away from the kinks, a first-order gradient taken with
``create_graph=True`` (and its own gradient), ``torch.func.grad`` with respect to the input,
autocast in bfloat16 on the CPU, repr/state_dict/pickling, the from_torch_nn/to_torch_nn
round trip, and the errors. σ' itself is checked in tests/test_activations.py, whose
ELEMENTWISE table has these σ too."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import bptorch
import bptorch.functional as F
import bptorch.nn as bnn
from bptorch.activations import get_activation, softplus
from bptorch.convert import from_torch_nn, to_torch_nn
from bptorch.functions.linear import PReLUFunction, prelu_alpha

F64 = torch.float64

# name: (module args, kwargs, input shape, the kinks of σ to keep inputs away from)
CASES = {
    "ReLU6": ("ReLU6", (), {}, (4, 7), (0.0, 6.0)),
    "ReLU6-inplace": ("ReLU6", (), {"inplace": True}, (3, 5, 2), (0.0, 6.0)),
    "Hardtanh": ("Hardtanh", (), {}, (4, 7), (-1.0, 1.0)),
    "Hardtanh--2-3": ("Hardtanh", (-2.0, 3.0), {}, (5, 3), (-2.0, 3.0)),
    "Hardtanh-inplace": ("Hardtanh", (-0.5,), {"max_val": 2.5, "inplace": True}, (6, 4),
                         (-0.5, 2.5)),
    "Hardswish": ("Hardswish", (), {}, (4, 7), (-3.0, 3.0)),
    "Hardswish-inplace": ("Hardswish", (True,), {}, (2, 3, 5), (-3.0, 3.0)),
    "Hardsigmoid": ("Hardsigmoid", (), {}, (4, 7), (-3.0, 3.0)),
    "Hardsigmoid-inplace": ("Hardsigmoid", (), {"inplace": True}, (7,), (-3.0, 3.0)),
    "ELU": ("ELU", (), {}, (4, 7), (0.0,)),
    "ELU-0.3": ("ELU", (0.3,), {}, (5, 2, 3), (0.0,)),
    "ELU-2-inplace": ("ELU", (2.0, True), {}, (4, 7), (0.0,)),
    "ELU-neg": ("ELU", (), {"alpha": -0.5}, (4, 7), (0.0,)),
    "SELU": ("SELU", (), {}, (4, 7), (0.0,)),
    "SELU-inplace": ("SELU", (True,), {}, (3, 4, 5), (0.0,)),
    "Softplus": ("Softplus", (), {}, (4, 7), ()),
    "Softplus-2-1": ("Softplus", (2.0, 1.0), {}, (5, 6), (0.5,)),  # βz > 1 past z = 0.5
    "Softplus-0.5-3": ("Softplus", (), {"beta": 0.5, "threshold": 3.0}, (3, 8), (6.0,)),
    "Mish": ("Mish", (), {}, (4, 7), ()),
    "Mish-inplace": ("Mish", (), {"inplace": True}, (2, 7, 3), ()),
    "PReLU": ("PReLU", (), {}, (4, 7), (0.0,)),
    "PReLU-channels": ("PReLU", (3, 0.1), {}, (2, 3, 2, 2), (0.0,)),
    "PReLU-channels-2d": ("PReLU", (), {"num_parameters": 6, "init": -0.3}, (5, 6), (0.0,)),
    "PReLU-1d": ("PReLU", (), {}, (7,), (0.0,)),  # unbatched, one slope
    "PReLU-3d-one": ("PReLU", (1, 0.6), {}, (2, 4, 3), (0.0,)),
    "LogSoftmax": ("LogSoftmax", (1,), {}, (4, 7), ()),
    "LogSoftmax-last": ("LogSoftmax", (), {"dim": -1}, (2, 3, 5), ()),
    "LogSoftmax-0": ("LogSoftmax", (0,), {}, (6,), ()),
}


def kink_free(shape, kinks, scale: float = 4.0, margin: float = 0.05,
              dtype=F64) -> torch.Tensor:
    """Values across the kinks (×``scale``) but at least ``margin`` from each, so finite
    differences never straddle one."""
    x = torch.randn(*shape, dtype=dtype) * scale
    for k in kinks:
        near = (x - k).abs() < margin
        x = torch.where(near, k + torch.where(x >= k, margin, -margin) * 2, x)
    return x


def make(key: str):
    """(bptorch module, torch module, input), the two modules with the same weights."""
    name, args, kwargs, shape, kinks = CASES[key]
    torch.manual_seed(0)
    ours = getattr(bnn, name)(*args, **kwargs).double()
    torch.manual_seed(0)
    theirs = getattr(tnn, name)(*args, **kwargs).double()
    if name == "PReLU":  # slopes that differ per channel, a negative one among them
        with torch.no_grad():
            w = torch.linspace(-0.4, 0.9, ours.weight.numel(), dtype=F64)
            ours.weight.copy_(w)
            theirs.weight.copy_(w)
    return ours, theirs, kink_free(shape, kinks)


def run(module, x, g):
    """Output and gradients (input, every parameter) under upstream ``g``; the input goes in
    as a non-leaf copy, as an in-place layer needs."""
    xi = x.clone().requires_grad_()
    out = module(xi * 1)
    grads = torch.autograd.grad(out, [xi, *module.parameters()], g)
    return out, grads


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("key", list(CASES))
def test_parity_forward_backward(key, training):
    ours, theirs, x = make(key)
    ours.train(training)
    theirs.train(training)
    g = torch.randn_like(theirs(x.clone()))
    out_o, grads_o = run(ours, x, g)
    out_t, grads_t = run(theirs, x, g)
    torch.testing.assert_close(out_o, out_t)
    assert len(grads_o) == len(grads_t)
    for a, b in zip(grads_o, grads_t):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("key", [k for k in CASES if "inplace" in k])
def test_inplace_overwrites_and_returns_the_input_as_torch(key):
    ours, theirs, x = make(key)
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        z = xi * 1
        ptr = z.data_ptr()
        out = m(z)
        assert out.data_ptr() == ptr and z._version > 0
        torch.testing.assert_close(z, theirs(x.clone()))
    leaf = x.clone().requires_grad_()  # a leaf that requires grad is refused, as torch
    for m in (ours, theirs):
        with pytest.raises(RuntimeError, match="leaf Variable"):
            m(leaf)
    plain = x.clone()  # no grad anywhere: the plain in-place op
    out = ours(plain)
    assert out.data_ptr() == plain.data_ptr()


@pytest.mark.parametrize("key", list(CASES))
def test_gradcheck_gradgradcheck(key):
    ours, _, x = make(key)
    params = list(ours.parameters())
    x = x.requires_grad_()

    def fn(x, *ps):
        if ps:
            return F.prelu(x * 1, ps[0])
        return ours(x * 1)

    assert gradcheck(fn, (x, *params))
    assert gradgradcheck(fn, (x, *params))


@pytest.mark.parametrize("key", list(CASES))
def test_create_graph_gradient_and_its_own_gradient_equal_torch(key):
    """The first-order gradient taken with create_graph=True equals torch's, and so does
    the gradient of ⟨that gradient, v⟩ (the path of double backward a user takes)."""
    ours, theirs, x = make(key)
    if CASES[key][0] == "Hardsigmoid":  # torch's has no double backward: its composition
        theirs = torch.nn.Sequential()
        theirs.forward = lambda x: TF.relu6(x + 3) / 6
    results = []
    for m in (ours, theirs):
        torch.manual_seed(1)
        xi = x.clone().requires_grad_()
        out = m(xi * 1)
        g = torch.randn_like(out).requires_grad_()  # the upstream gradient on the graph too
        wrt = [xi, *m.parameters()]
        first = torch.autograd.grad(out, wrt, g, create_graph=True)
        v = [torch.randn_like(t) for t in first]
        s = sum((f * w).sum() for f, w in zip(first, v))
        second = torch.autograd.grad(s, [*wrt, g], allow_unused=True, materialize_grads=True)
        results.append((out, first, second))
    (o1, f1, s1), (o2, f2, s2) = results
    torch.testing.assert_close(o1, o2)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(a, b)
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("key", list(CASES))
def test_torch_func_grad_wrt_input_equals_torch(key):
    ours, theirs, x = make(key)
    g = torch.randn_like(theirs(x.clone()))
    ref = torch.func.grad(lambda x: (theirs(x * 1) * g).sum())(x)
    got = torch.func.grad(lambda x: (ours(x * 1) * g).sum())(x)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("low_input", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("key", list(CASES))
def test_autocast_bfloat16_on_cpu(key, low_input):
    """Under torch.autocast("cpu", bfloat16): the output dtype is torch's (PReLU is on
    torch's lower-precision list, the others on none), and the input and slope gradients are
    torch's to bfloat16's scale, in the dtypes of the tensors they belong to."""
    ours, theirs, x = make(key)
    ours, theirs = ours.float(), theirs.float()
    x = x.float()
    if low_input:
        x = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = theirs(x.clone())
    g = torch.randn(ref.shape).to(ref.dtype)
    res = []
    for m in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, grads = run(m, x, g)
        res.append((out, grads))
    (o1, g1), (o2, g2) = res
    assert o1.dtype == o2.dtype
    tol = 2e-2 if (low_input or key.startswith("PReLU")) else 1e-5
    o1, o2 = o1.detach().float(), o2.detach().float()
    scale = max(float(o2.abs().max()), 1.0)
    assert float((o1 - o2).abs().max()) <= tol * scale
    for a, b in zip(g1, g2):
        assert a.dtype == b.dtype
        scale = max(float(b.float().abs().max()), 1.0)
        assert float((a.float() - b.float()).abs().max()) <= tol * scale


@pytest.mark.parametrize("key", list(CASES))
def test_repr_state_dict_pickle_and_round_trip(key):
    """torch.nn's repr and state_dict keys; pickling keeps outputs; torch.nn.X →
    from_torch_nn(strict=True) → bptorch.nn.X → to_torch_nn → torch.nn.X with equal outputs
    and gradients."""
    ours, theirs, x = make(key)
    name = CASES[key][0]
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    copied = pickle.loads(pickle.dumps(ours))
    g = torch.randn_like(theirs(x.clone()))
    torch.testing.assert_close(run(copied, x, g), run(ours, x, g), rtol=0, atol=0)
    converted = from_torch_nn(theirs, strict=True)
    assert type(converted) is getattr(bnn, name)
    assert repr(converted) == repr(theirs)
    back = to_torch_nn(converted)
    assert type(back) is type(theirs)
    for m in (converted, back):
        out, grads = run(m, x, g)
        ref_out, ref_grads = run(theirs, x, g)
        torch.testing.assert_close(out, ref_out)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)


def test_prelu_init_and_weights_equal_torch_and_load_both_ways():
    torch.manual_seed(3)
    ours = bnn.PReLU(5, init=0.2, dtype=F64)
    theirs = tnn.PReLU(5, init=0.2, dtype=F64)
    torch.testing.assert_close(ours.weight, theirs.weight)
    assert ours.weight.shape == (5,) and ours.weight.dtype == F64 and ours.init == 0.2
    theirs.weight.data.uniform_()
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight, theirs.weight)
    theirs.load_state_dict(ours.state_dict())


def test_prelu_weight_gradient_is_the_slopes_bp4():
    """∂C/∂α_c = Σ_{n, positions} g ⊙ min(z, 0) over channel c, written out by hand."""
    z = kink_free((4, 3, 5), (0.0,))
    w = torch.tensor([0.1, -0.2, 0.3], dtype=F64, requires_grad=True)
    g = torch.randn(4, 3, 5, dtype=F64)
    (gw,) = torch.autograd.grad(F.prelu(z, w), w, g)
    torch.testing.assert_close(gw, (g * z.clamp(max=0)).sum((0, 2)))
    torch.testing.assert_close(prelu_alpha(z, w.detach()).shape, torch.Size([3, 1]))


def test_prelu_forward_mode_equals_torch():
    z = kink_free((3, 4, 2), (0.0,)).requires_grad_()
    w = torch.tensor([0.1, -0.2, 0.3, 0.5], dtype=F64, requires_grad=True)
    assert gradcheck(PReLUFunction.apply, (z, w), check_forward_ad=True,
                     check_batched_grad=True)
    dz, dw = torch.randn_like(z), torch.randn_like(w)
    _, ours = torch.func.jvp(PReLUFunction.apply, (z.detach(), w.detach()), (dz, dw))
    _, ref = torch.func.jvp(TF.prelu, (z.detach(), w.detach()), (dz, dw))
    torch.testing.assert_close(ours, ref)


def test_a_broken_prelu_backward_is_rejected():
    """The slope's BP4 with max(z, 0)·g in place of min(z, 0)·g: gradcheck must say no."""

    class Broken(PReLUFunction):
        @staticmethod
        def backward(ctx, grad_output):
            z, weight = ctx.saved_tensors
            grad_input = torch.where(z > 0, grad_output, prelu_alpha(z, weight) * grad_output)
            return grad_input, (grad_output * z.clamp(min=0)).sum((0, 2))

    z = kink_free((3, 2, 4), (0.0,)).requires_grad_()
    w = torch.tensor([0.1, 0.4], dtype=F64, requires_grad=True)
    assert gradcheck(PReLUFunction.apply, (z, w))
    assert not gradcheck(Broken.apply, (z, w), raise_exception=False)


@pytest.mark.parametrize("name,torch_act", [
    ("relu6", tnn.ReLU6()), ("hardtanh", tnn.Hardtanh()), ("hardswish", tnn.Hardswish()),
    ("hardsigmoid", tnn.Hardsigmoid()), ("elu", tnn.ELU()), ("selu", tnn.SELU()),
    ("softplus", tnn.Softplus()), ("mish", tnn.Mish()),
])
def test_dense_with_each_new_activation_equals_linear_then_torch_module(name, torch_act):
    torch.manual_seed(0)
    dense = bnn.Dense(6, 4, name, dtype=F64)
    seq = tnn.Sequential(tnn.Linear(6, 4, dtype=F64), torch_act)
    seq[0].load_state_dict(dense.state_dict())
    x = torch.randn(5, 3, 6, dtype=F64) * 3
    g = torch.randn(5, 3, 4, dtype=F64)
    out_o, grads_o = run(dense, x, g)
    out_t, grads_t = run(seq, x, g)
    torch.testing.assert_close(out_o, out_t)
    for a, b in zip(grads_o, grads_t):
        torch.testing.assert_close(a, b)
    back = to_torch_nn(dense)  # Dense → nn.Sequential(nn.Linear, the torch.nn σ)
    assert type(back[1]) is type(torch_act)


def test_parametrised_activations_by_keyword_and_as_objects():
    x = torch.randn(4, 5, dtype=F64) * 3
    assert get_activation("hardtanh", min_val=-2, max_val=0.5) is \
        bptorch.activations.hardtanh(-2.0, 0.5)
    for act, ref in [(get_activation("elu", alpha=0.2), TF.elu(x, 0.2)),
                     (get_activation("softplus", beta=3.0, threshold=2.0),
                      TF.softplus(x, 3.0, 2.0)),
                     (get_activation("hardtanh", min_val=-2, max_val=0.5),
                      TF.hardtanh(x, -2, 0.5))]:
        torch.testing.assert_close(F.apply_activation(x, act), ref)
        dense = bnn.Dense(5, 3, act)
        assert pickle.loads(pickle.dumps(dense)).activation is act
        twin = to_torch_nn(dense)[1]
        torch.testing.assert_close(twin(x), ref)


def test_softplus_prime_reaches_one_past_the_threshold():
    """prime_max = 1: σ' = 1 exactly where βz > threshold (z > 20 by default), beyond the
    grid of test_activations' prime_max test."""
    act = softplus()
    z = torch.linspace(-30, 30, 60001, dtype=F64).requires_grad_()
    (dz,) = torch.autograd.grad(TF.softplus(z).sum(), z)
    assert float(dz.abs().max()) == act.prime_max == 1.0
    torch.testing.assert_close(act.prime(z.detach()), dz)


def test_logsoftmax_implicit_dim_warns_as_torch():
    x = torch.randn(2, 3, 4, dtype=F64)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        ours = bnn.LogSoftmax()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tnn.LogSoftmax()(x)
    torch.testing.assert_close(ours, theirs)


def test_functional_forms_match_torch_signatures():
    x = kink_free((3, 4), (0.0, 6.0, -1.0, 1.0, 3.0, -3.0))
    w = torch.tensor([0.25, 0.1, -0.1, 0.5], dtype=F64)
    pairs = [
        (F.relu6(x), TF.relu6(x)), (F.hardtanh(x, -0.5, 2.0), TF.hardtanh(x, -0.5, 2.0)),
        (F.hardswish(x), TF.hardswish(x)), (F.hardsigmoid(x), TF.hardsigmoid(x)),
        (F.elu(x, alpha=0.4), TF.elu(x, alpha=0.4)), (F.selu(x), TF.selu(x)),
        (F.softplus(x, beta=2, threshold=3), TF.softplus(x, beta=2, threshold=3)),
        (F.mish(x), TF.mish(x)), (F.prelu(x, w), TF.prelu(x, w)),
        (F.log_softmax(x, 1), TF.log_softmax(x, 1)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="max_val > min_val"):
        bnn.Hardtanh(1.0, -1.0)
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        F.hardtanh(x, 2.0, 1.0)
    with pytest.raises(NotImplementedError, match="not implemented for 'Long'"):
        bnn.ELU()(torch.arange(6))  # torch's own error for integer input (test_integer_inputs)
    with pytest.raises(ValueError, match="3 channel"):
        bnn.PReLU(4)(x)
    with pytest.raises(ValueError, match="scalar or 1-D"):
        F.prelu(x, torch.ones(1, 3))
    with pytest.raises(TypeError):
        bnn.Softplus(inplace=True)  # torch's Softplus has no in-place form either
    with pytest.warns(FutureWarning, match="min_value"):
        m = bnn.Hardtanh(min_value=-2.0)
    assert m.min_val == -2.0


def test_elu_negative_alpha_in_place_backward_raises_as_torch():
    """With α < 0, σ' needs z (a > 0 on both sides), which an in-place op overwrote: torch
    refuses the backward with its own words, and bptorch refuses alike."""
    for m in (bnn.ELU(-0.5, inplace=True), tnn.ELU(-0.5, inplace=True)):
        x = torch.randn(5, requires_grad=True)
        out = m(x * 1)
        with pytest.raises(RuntimeError, match="In-place elu backward"):
            out.sum().backward()


@pytest.mark.parametrize("make_module", [lambda: bnn.SiLU(inplace=True),
                                         lambda: bnn.GELU()], ids=["SiLU-inplace", "GELU"])
def test_in_place_copy_of_z_stays_on_the_graph_for_double_backward(make_module):
    """The copy of z an in-place σ keeps for σ'(z) (SiLU's too) is taken on the graph, so
    gradgradcheck reaches z through σ'(z)."""
    m = make_module()
    x = kink_free((3, 4), ()).requires_grad_()
    assert gradcheck(lambda x: m(x * 1), (x,))
    assert gradgradcheck(lambda x: m(x * 1), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_softplus_runs_in_float32_under_cuda_autocast_as_torch():
    """softplus is on torch's CUDA float32 list: the module and Dense(..., "softplus") give
    float32 out of bfloat16 input, as nn.Softplus and nn.Linear → nn.Softplus do."""
    x = torch.randn(4, 6, device="cuda")
    dense = bnn.Dense(6, 3, "softplus").cuda()
    seq = tnn.Sequential(tnn.Linear(6, 3), tnn.Softplus()).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert bnn.Softplus()(x.bfloat16()).dtype == tnn.Softplus()(x.bfloat16()).dtype
        assert dense(x).dtype == seq(x).dtype == torch.float32
