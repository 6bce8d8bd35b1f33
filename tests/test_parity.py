"""Parity with torch.nn (issue 10, item 1): every ``bptorch.nn`` module against its
``torch.nn`` twin on hypothesis-drawn constructor calls, shapes, layouts, dtypes and modes.

Each example builds both modules from the same call (positional prefix and keywords in
torch's order) under the same seed, gives bptorch's torch's state_dict, feeds the same
input and backpropagates the same *random* upstream gradient. Compared: the output, the
gradient of the input and of every parameter, and the input after the call (in-place
modules). A call torch refuses must be refused by bptorch too. Beyond the forward and
backward: constructor signatures, init under one seed, state_dict keys both ways,
deepcopy / pickle / torch.save round trips, the meta device, repr, and the costs against
torch's losses scaled the book's way (sum over outputs, mean over positions).

Tolerances are torch.testing.assert_close's defaults for the dtype (bfloat16 included);
a bfloat16 value outside them still passes where it is no further from the float64 answer
than torch's own (see ``close``). Arguments bptorch deliberately leaves out must raise
NotImplementedError naming them (only those in ``MAY_BE_UNSUPPORTED``).

The cases live in ``tests/parity_cases.py``; ``test_the_checks_reject_planted_bugs``
shows the comparison failing on a gradient off by 1% and on a mismatched twin.
``BPTORCH_PARITY_EXAMPLES=200`` searches deeper (slow); ``--hypothesis-show-statistics``
lists what was drawn.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import io
import os
import pickle

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from torch import nn as tnn

import bptorch.nn as bnn
from parity_cases import (
    AXES, COSTS, MAY_BE_UNSUPPORTED, MODULES, TWINS, UNBATCHED, Case, cases, cost_case,
    params_of, run, torch_parameters, upstream,
)

# torch's own warnings, raised alike by both twins
pytestmark = [
    pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax:UserWarning"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
]

settings.register_profile(
    "bptorch-parity",
    derandomize=True,  # the same examples on every run and machine
    deadline=None,
    # BPTORCH_PARITY_EXAMPLES=200 for a deeper (slower) search; 15 keeps the file ~1 min
    max_examples=int(os.environ.get("BPTORCH_PARITY_EXAMPLES", "15")),
    database=None,  # write no .hypothesis/ folder into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.filter_too_much],
)
PARITY = settings.get_profile("bptorch-parity")
# fewer examples for the checks that depend little on the draw
FEW = settings(PARITY, max_examples=max(6, PARITY.max_examples // 3))


def _event(message: str) -> None:
    """hypothesis.event inside a hypothesis test; nothing outside one (the planted bugs)."""
    try:
        event(message)
    except Exception:  # noqa: BLE001 - hypothesis refuses events outside a test
        pass


def _non_default(case: Case) -> set[str]:
    defaults = {p.name: p.default for p in torch_parameters(TWINS[case.name])}
    return {k for k, v in case.bound().items() if k in defaults and v != defaults[k]}


def build_ours(case: Case, device: str | None = None) -> tnn.Module | None:
    """bptorch's module; None where it declares a permitted argument unsupported
    (NotImplementedError naming it, see MAY_BE_UNSUPPORTED)."""
    try:
        return case.build_bp(device)
    except NotImplementedError as e:
        allowed = MAY_BE_UNSUPPORTED.get(case.name, set()) & _non_default(case)
        if not any(arg in str(e) for arg in allowed):
            raise
        _event(f"{case.name}: NotImplementedError for {sorted(allowed)}")
        return None


def twins(case: Case, device: str | None = None):
    """(bptorch's, torch's) built under one seed, bptorch's loaded with torch's
    state_dict; None when torch refuses the call (bptorch must refuse it too) or when
    bptorch declares a permitted argument unsupported."""
    note(repr(case))
    torch.manual_seed(case.seed)
    try:
        theirs = case.build_torch(device)
    except Exception as e:  # noqa: BLE001 - any refusal by torch
        note(f"torch refuses the call: {e!r}")
        _event(f"torch refuses the call: {type(e).__name__}")
        with pytest.raises(Exception):
            case.build_bp(device)
        return None
    torch.manual_seed(case.seed)
    ours = build_ours(case, device)
    if ours is None:
        return None
    if device != "meta":
        ours.load_state_dict(params_of(case, theirs).state_dict())
    return ours, theirs


def close(what: str, got, expected, reference=None) -> None:
    """assert_close with the dtype's default tolerances. For bfloat16, a mismatch is
    accepted where bptorch is elementwise no further from the float64 answer (``reference()``,
    the same bfloat16 values computed in float64) than torch, or within the default bfloat16
    tolerance of it: torch rounds its sums in bfloat16 (MaxPool2d's overlapping windows,
    BCEWithLogits), bptorch sometimes in float32, and neither is the "right" bfloat16 answer."""
    try:
        torch.testing.assert_close(got, expected, msg=lambda m: f"{what}: {m}")
    except AssertionError:
        if (reference is None or not isinstance(got, torch.Tensor)
                or got.dtype != torch.bfloat16 or expected.dtype != torch.bfloat16
                or got.shape != expected.shape):
            raise
        ref = reference().double()
        err_ours, err_theirs = (got.double() - ref).abs(), (expected.double() - ref).abs()
        allowed = torch.maximum(err_theirs, 1e-5 + 1.6e-2 * ref.abs())
        if not bool((err_ours <= allowed).all()):
            raise
        _event(f"bfloat16 {what}: not torch's rounding, but as close to float64")


def reference64(case: Case, theirs: tnn.Module):
    """torch's twin run in float64 on the bfloat16 case's (rounded) values."""
    ref_case = dataclasses.replace(case, dtype=torch.float64, round_to=case.dtype,
                                   dtype_in_ctor=False)
    return run(ref_case, copy.deepcopy(theirs).double())


def compare(case: Case, ours: tnn.Module, theirs: tnn.Module) -> None:
    """Outputs, input and parameter gradients, and the fed input afterwards."""
    try:
        r_t = run(case, theirs)
    except Exception as e:  # noqa: BLE001
        note(f"torch refuses the input: {e!r}")
        _event(f"torch refuses the input: {type(e).__name__}")
        with pytest.raises(Exception):
            run(case, ours)
        return
    r_b = run(case, ours)
    ref = functools.cache(lambda: reference64(case, theirs))
    if isinstance(r_t.output, tuple):  # MaxPool2d(return_indices=True): (output, indices)
        assert isinstance(r_b.output, tuple) and len(r_b.output) == len(r_t.output)
        close("output", r_b.output[0], r_t.output[0], lambda: ref().output[0])
        close("indices", r_b.output[1:], r_t.output[1:])
    else:
        close("output", r_b.output, r_t.output, lambda: ref().output)
    assert r_b.grads.keys() == r_t.grads.keys(), "parameter names differ"
    for name in r_t.grads:
        close(f"grad of {name}", r_b.grads[name], r_t.grads[name],
              lambda name=name: ref().grads[name])
    close("input after the call", r_b.input_after, r_t.input_after, lambda: ref().input_after)
    if case.inplace:
        assert r_b.aliases_input == r_t.aliases_input, "inplace=True: output must be the input"


# ---------------------------------------------------------------- signatures
@pytest.mark.parametrize("name", list(TWINS))
def test_signature_matches_torch(name):
    """torch's parameters in torch's order, kinds and defaults (*args/**kwargs where torch
    has them, e.g. Identity's); bptorch's extras keyword-only."""
    P = inspect.Parameter

    def params(cls):
        return list(inspect.signature(cls.__init__).parameters.values())[1:]

    def describe(ps):
        return [(p.name, p.kind, p.default) for p in ps]

    theirs, ours = params(TWINS[name]), params(getattr(bnn, name))
    positional = lambda ps: [p for p in ps if p.kind is not P.KEYWORD_ONLY]  # noqa: E731
    assert describe(positional(ours)) == describe(positional(theirs))
    their_kw = {p.name: p for p in theirs if p.kind is P.KEYWORD_ONLY}
    our_kw = [p for p in ours if p.kind is P.KEYWORD_ONLY]
    assert describe(p for p in our_kw if p.name in their_kw) == describe(their_kw.values())


# ---------------------------------------------------------------- forward and backward
@pytest.mark.parametrize(
    "name,axis",
    [(n, a) for n in MODULES for a in AXES if a != "unbatched" or n in UNBATCHED],
)
@PARITY
@given(data=st.data())
def test_matches_torch(name, axis, data):
    case = data.draw(cases(name, axis))
    if name in TWINS:  # what was drawn, for --hypothesis-show-statistics
        _event("non-default: " + (", ".join(sorted(_non_default(case))) or "none"))
    else:
        _event(f"activation={case.kwargs['activation']}")
    _event(f"{case.layout}, {'train' if case.training else 'eval'}, {len(case.shape)}-d")
    pair = twins(case)
    if pair is not None:
        compare(case, *pair)


@pytest.mark.parametrize("name", ["Linear", "Conv2d"])
@PARITY
@given(data=st.data())
def test_init_matches_torch_under_one_seed(name, data):
    case = data.draw(cases(name, data.draw(st.sampled_from(["core", "bfloat16"]))))
    note(repr(case))
    torch.manual_seed(case.seed)
    theirs = case.build_torch()
    torch.manual_seed(case.seed)
    ours = build_ours(case)
    if ours is not None:
        torch.testing.assert_close(dict(ours.state_dict()), dict(theirs.state_dict()))


@pytest.mark.parametrize("name", MODULES)
@FEW
@given(data=st.data())
def test_state_dict_loads_both_ways(name, data):
    case = data.draw(cases(name))
    pair = twins(case)
    if pair is None:
        return
    ours, theirs = pair[0], params_of(case, pair[1])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():  # make the two differ, then load each into the other
        for p in ours.parameters():
            p.add_(1)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(dict(theirs.state_dict()), dict(ours.state_dict()),
                               rtol=0, atol=0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(2)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.testing.assert_close(dict(ours.state_dict()), dict(theirs.state_dict()),
                               rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 1.0])
@FEW
@given(seed=st.integers(0, 2**16),
       shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_dropout_same_seed_same_mask_and_identity_in_eval(p, seed, shape, dtype):
    """Train: one seed, torch's mask (bit for bit, on the CPU); eval: the input itself."""
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    torch.manual_seed(seed)
    ours = bnn.Dropout(p)(x)
    torch.manual_seed(seed)
    theirs = tnn.Dropout(p)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert p < 1 or bool((ours == 0).all())
    for m in (bnn.Dropout(p).eval(), bnn.Dropout(p, inplace=True).eval()):
        torch.testing.assert_close(m(x), x, rtol=0, atol=0)


# ---------------------------------------------------------------- copies and serialisation
def _saved_and_loaded(m: tnn.Module) -> tnn.Module:
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


ROUND_TRIPS = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _saved_and_loaded,
}


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
@pytest.mark.parametrize("name", MODULES)
@FEW
@given(data=st.data())
def test_round_trip_gives_identical_outputs(name, how, data):
    case = data.draw(cases(name))
    pair = twins(case)
    if pair is None:
        return
    ours = pair[0]
    before = run(case, ours)
    copied = ROUND_TRIPS[how](ours)
    assert type(copied) is type(ours) and copied.training == ours.training
    after = run(case, copied)
    torch.testing.assert_close(after.output, before.output, rtol=0, atol=0)
    torch.testing.assert_close(after.grads, before.grads, rtol=0, atol=0)


@pytest.mark.parametrize("module", [tnn.Linear(3, 2), bnn.Linear(3, 2)],
                         ids=["torch.nn", "bptorch.nn"])
def test_weights_only_load_refuses_pickled_modules(module):
    """torch ≥ 2.6 loads with weights_only=True by default: a pickled module, torch's own
    included, is refused; its state_dict loads. Save state_dicts, or pass weights_only=False
    for a trusted file."""
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(buf)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf)
    torch.testing.assert_close(dict(loaded), dict(module.state_dict()), rtol=0, atol=0)


# ---------------------------------------------------------------- meta device, repr
@pytest.mark.parametrize("name", MODULES)
@FEW
@given(data=st.data())
def test_meta_device(name, data):
    """Built with device="meta" (or without parameters), forward a meta tensor: the
    output's shape and dtype are torch's."""
    case = data.draw(cases(name, data.draw(st.sampled_from(["core", "bfloat16"]))))
    pair = twins(case, device="meta")
    if pair is None:
        return
    ours, theirs = pair
    assert all(p.is_meta for p in ours.parameters())
    x = torch.empty(case.shape, dtype=case.dtype, device="meta")
    torch.manual_seed(case.seed)
    expected = theirs(x)
    torch.manual_seed(case.seed)
    got = ours(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert [(t.shape, t.dtype, t.device) for t in got] == [
        (t.shape, t.dtype, t.device) for t in expected
    ]


@pytest.mark.parametrize("name", MODULES)
@FEW
@given(data=st.data())
def test_repr(name, data):
    case = data.draw(cases(name))
    pair = twins(case)
    if pair is None:
        return
    ours, theirs = pair
    assert repr(ours).startswith(name + "(")
    if name in TWINS:  # torch's extra_repr too: the printed model reads the same
        assert repr(ours) == repr(theirs)


# ---------------------------------------------------------------- costs
def _torch_cost(c, output, target):
    """The scaled twin: per position, BCEWithLogits summed over outputs (CrossEntropyCost),
    cross_entropy (LogLikelihoodCost) or ½ Σ (a − y)² (QuadraticCost); then mean/sum/none."""
    n = c.n_out
    if c.name == "LogLikelihoodCost":
        t = target.reshape(-1) if target.dtype == torch.int64 else target.reshape(-1, n)
        per = TF.cross_entropy(output.reshape(-1, n), t, reduction="none").reshape(c.lead)
    else:
        y = TF.one_hot(target, n).to(output.dtype) if target.dtype == torch.int64 else target
        if c.name == "CrossEntropyCost":
            per = TF.binary_cross_entropy_with_logits(output, y, reduction="none").sum(-1)
        else:
            per = 0.5 * TF.mse_loss(output, y, reduction="none").sum(-1)
    reduction = c.kwargs.get("reduction", "mean")
    return {"mean": per.mean, "sum": per.sum, "none": lambda: per}[reduction]()


def _cost_inputs(c):
    g = torch.Generator().manual_seed(c.seed)
    shape = (*c.lead, c.n_out)
    storage, view = shape, (lambda t: t)
    if c.layout == "sliced":
        storage, view = (*c.lead, 2 * c.n_out), (lambda t: t[..., ::2])
    elif c.layout == "transposed" and c.lead:
        storage, view = (*c.lead[:-1], c.n_out, c.lead[-1]), (lambda t: t.transpose(-1, -2))
    x = (torch.randn(storage, generator=g, dtype=torch.float64) * c.scale).to(c.dtype)
    if c.target == "index":
        y = torch.randint(0, c.n_out, c.lead, generator=g)
    elif c.target == "one_hot":
        y = TF.one_hot(torch.randint(0, c.n_out, c.lead, generator=g), c.n_out).to(c.dtype)
    elif c.name == "LogLikelihoodCost":  # soft: rows that sum to 1
        y = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), -1).to(c.dtype)
    elif c.name == "CrossEntropyCost":  # soft: per-output probabilities, not one-hot
        y = torch.rand(shape, generator=g, dtype=torch.float64).to(c.dtype)
    else:
        y = torch.randn(shape, generator=g, dtype=torch.float64).to(c.dtype)
    return x, view, y


def _cost_run(c, fn, in_float64: bool = False):
    """(value, grads of output and float target); ``in_float64``: the same (rounded)
    values computed in float64, the reference for a bfloat16 case."""
    x, view, y = _cost_inputs(c)
    if in_float64:
        x, y = x.double(), (y.double() if y.is_floating_point() else y)
    x = x.requires_grad_()
    float_target = y.is_floating_point()
    if float_target:
        y = y.clone().requires_grad_()
    value = fn(view(x), y)
    wrt = [x, y] if float_target else [x]
    g = upstream(value, c.seed, c.dtype if in_float64 else None)
    grads = torch.autograd.grad(value, wrt, g)
    return value.detach(), grads


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", None])
@pytest.mark.parametrize("name", COSTS)
@PARITY
@given(data=st.data())
def test_cost_matches_scaled_torch_loss(name, reduction, data):
    c = data.draw(cost_case(name, reduction))
    note(repr(c))
    _event(f"reduction={c.kwargs.get('reduction', 'mean')}, {len(c.lead) + 1}-d, "
           f"{c.target} target, scale {c.scale}")
    cost = getattr(bnn, name)(**c.kwargs)
    twin = lambda a, y: _torch_cost(c, a, y)  # noqa: E731
    expected, expected_grads = _cost_run(c, twin)
    got, got_grads = _cost_run(c, cost)
    ref = functools.cache(lambda: _cost_run(c, twin, in_float64=True))
    close("value", got, expected, lambda: ref()[0])
    for i, what in enumerate(["output", "target"][: len(expected_grads)]):
        close(f"grad of {what}", got_grads[i], expected_grads[i], lambda i=i: ref()[1][i])


# ---------------------------------------------------------------- the checks can fail
def _scale_grad(t, factor: float):
    """t itself, but the gradient flowing back through it scaled by ``factor``."""
    return t + (factor - 1) * (t - t.detach())


class _GradOffByOnePercent(bnn.Linear):
    def forward(self, input):
        return _scale_grad(super().forward(input), 1.01)


class _PoolGradOffByFivePercent(bnn.MaxPool2d):
    def forward(self, input):
        return _scale_grad(super().forward(input), 1.05)


def test_the_checks_reject_planted_bugs():
    case = Case("Linear", (5, 3), {}, (4, 5), torch.float32, seed=3)
    torch.manual_seed(0)
    theirs = case.build_torch()
    ours = _GradOffByOnePercent(5, 3)
    ours.load_state_dict(theirs.state_dict())
    with pytest.raises(AssertionError, match="grad of input"):
        compare(case, ours, theirs)

    # bfloat16: the float64 fallback of `close` does not excuse a 5% error
    case = Case("MaxPool2d", (2,), {}, (2, 3, 4, 4), torch.bfloat16, seed=1)
    with pytest.raises(AssertionError, match="grad of input"):
        compare(case, _PoolGradOffByFivePercent(2), case.build_torch())

    case = Case("LeakyReLU", (0.01,), {}, (3, 4), torch.float32, seed=4)
    with pytest.raises(AssertionError, match="output"):
        compare(case, bnn.LeakyReLU(0.02), tnn.LeakyReLU(0.01))
