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

BatchNorm's buffers (running_mean, running_var, num_batches_tracked) are compared after the
call; its γ, β and running statistics (and LayerNorm's γ, β) are randomized first. Where
torch and bptorch legitimately differ, exactly the documented difference is accepted:
NotImplementedError for the arguments in ``MAY_BE_UNSUPPORTED`` with the values listed
there, and MultiheadAttention's fully masked query rows (torch NaN, bptorch 0; see
``_compare_masked_attention``).

The cases live in ``tests/parity_cases.py``; ``test_the_checks_reject_planted_bugs`` and
``test_the_checks_reject_planted_bugs_in_the_new_modules`` show the comparison failing on
gradients off by 1% (Linear, BatchNorm2d) or 5% (bfloat16 MaxPool2d, LSTM), a biased
running_var, attention weights 1% off beside fully masked rows, and a mismatched twin.
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
    AXES, COSTS, FACTORY, MAY_BE_UNSUPPORTED, MODULES, OUTPUT_NAMES, SLOW, TWINS, UNBATCHED,
    Case, cases, cost_case, flatten, forward_inputs, params_of, run, torch_parameters,
    torch_signature, upstream,
)

# torch's own warnings, raised alike by both twins
pytestmark = [
    pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax:UserWarning"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
    pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last:UserWarning"),
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning"),
    pytest.mark.filterwarnings("ignore:Converting mask without torch.bool dtype:UserWarning"),
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
# the slow modules (attention, recurrent): fewer examples of each
SLOW_PARITY = settings(PARITY, max_examples=max(6, PARITY.max_examples * 2 // 3))
# (15 // 3 * 2 = 10 examples each by default; the whole file takes ~45 s on 2 shared cores)


def _event(message: str) -> None:
    """hypothesis.event inside a hypothesis test; nothing outside one (the planted bugs)."""
    try:
        event(message)
    except Exception:  # noqa: BLE001 - hypothesis refuses events outside a test
        pass


def _non_default(case: Case) -> set[str]:
    defaults = {p.name: p.default for p in torch_parameters(TWINS[case.name])}
    return {k for k, v in case.bound().items() if k in defaults and v != defaults[k]}


def _unsupported(case: Case) -> list[str]:
    """The drawn arguments bptorch may refuse (MAY_BE_UNSUPPORTED), with the values it may."""
    b = case.bound() if case.name in TWINS else {}
    return sorted(k for k, left_out in MAY_BE_UNSUPPORTED.get(case.name, {}).items()
                  if k in b and left_out(b[k], b))


def build_ours(case: Case, device: str | None = None) -> tnn.Module | None:
    """bptorch's module; None where it declares a permitted argument unsupported
    (NotImplementedError naming it, see MAY_BE_UNSUPPORTED)."""
    try:
        return case.build_bp(device)
    except NotImplementedError as e:
        allowed = _unsupported(case)
        if not any(arg in str(e) for arg in allowed):
            raise
        _event(f"{case.name}: NotImplementedError for {allowed}")
        return None


def _randomize(case: Case, m: tnn.Module) -> None:
    """Normalization layers start at γ = 1, β = 0, running (0, 1): give them seeded
    random values (γ away from 0, variances positive) so the comparison can fail."""
    if case.name not in ("BatchNorm1d", "BatchNorm2d", "LayerNorm"):
        return
    g = torch.Generator().manual_seed(case.seed + 5)
    with torch.no_grad():
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if name == "num_batches_tracked":
                t.fill_(3)
                continue
            r = torch.rand(t.shape, generator=g, dtype=torch.float64)
            r = r + 0.5 if name in ("weight", "running_var") else 2 * r - 1
            t.copy_(r.to(t.dtype))


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
        _randomize(case, theirs)
        ours.load_state_dict(params_of(case, theirs).state_dict())
    return ours, theirs


# assert_close's default rtol of the dtypes that have a float64 reference to fall back on
RTOL = {torch.bfloat16: 1.6e-2, torch.float32: 1.3e-6}


def close(what: str, got, expected, reference=None, chain: bool = False) -> None:
    """assert_close with the dtype's default tolerances. For bfloat16 and float32, a mismatch
    is accepted where bptorch is elementwise no further from the float64 answer
    (``reference()``, the same rounded values computed in float64) than torch, or within the
    dtype's default tolerance of it: torch rounds its sums in bfloat16 (MaxPool2d's
    overlapping windows, BCEWithLogits), bptorch sometimes in float32, and neither is the
    "right" bfloat16 answer. Where the exact answer is a cancellation (normalizing 1 or 2
    values) both are noise: bptorch's worst error may be twice torch's. ``chain``: a
    bfloat16 value computed through a chain of rounded steps (see below)."""
    try:
        torch.testing.assert_close(got, expected, msg=lambda m: f"{what}: {m}")
    except AssertionError:
        if (reference is None or not isinstance(got, torch.Tensor)
                or got.dtype not in RTOL or expected.dtype != got.dtype
                or got.shape != expected.shape):
            raise
        ref = reference().double()
        err_ours, err_theirs = (got.double() - ref).abs(), (expected.double() - ref).abs()
        allowed = torch.maximum(err_theirs, 1e-5 + RTOL[got.dtype] * ref.abs())
        if bool((err_ours <= allowed).all()):
            _event(f"{got.dtype} {what}: not torch's rounding, but as close to float64")
            return
        # an ill-conditioned value (BatchNorm's ∂C/∂x over 2 values per channel, LayerNorm's
        # over 1, is a cancellation whose exact answer is ~0): torch's answer is rounding
        # noise too; bptorch's worst error may be at most twice torch's worst (a planted
        # 1-5% bug is far beyond torch's error)
        if err_theirs.numel() and float(err_ours.max()) <= 2 * float(err_theirs.max()):
            _event(f"{got.dtype} {what}: ill-conditioned, error within 2x torch's")
            return
        # bfloat16 through a chain of steps (RNN/LSTM/GRU through time, attention: torch
        # keeps the gates and the softmax in float32, bptorch rounds each step to bfloat16):
        # elementwise the cancellations differ, so the tensor's error norm: within 4x
        # torch's, or 4 bfloat16 epsilons (2^-5) of the reference's norm. A 5% error is
        # rejected (the planted bugs).
        if chain and got.dtype == torch.bfloat16 and got.numel() and float(
                err_ours.norm()) <= max(4 * float(err_theirs.norm()), 2 ** -5 * float(ref.norm())):
            _event(f"bfloat16 {what}: error norm within 4x torch's")
            return
        raise


def reference64(case: Case, theirs: tnn.Module):
    """torch's twin run in float64 on the bfloat16 case's (rounded) values (``theirs``
    as it was before the compared call: BatchNorm's running stats)."""
    ref_case = dataclasses.replace(case, dtype=torch.float64, round_to=case.dtype,
                                   dtype_in_ctor=False)
    return run(ref_case, copy.deepcopy(theirs).double())


def rows_per_head(case: Case) -> torch.Tensor:
    """MultiheadAttention: (N, h, L), True for a head's queries whose every key is masked
    (key_padding_mask or attn_mask; −∞ in a float mask)."""
    _, _, kw = forward_inputs(case)
    blocked = lambda m: m if m.dtype == torch.bool else m == float("-inf")  # noqa: E731
    b = case.bound()
    n = case.shape[0 if b["batch_first"] else 1] if len(case.shape) == 3 else 1
    h, L, S = b["num_heads"], case.extra["L"], case.extra["S"]
    off = torch.zeros(n, h, L, S, dtype=torch.bool)
    if kw["key_padding_mask"] is not None:
        off = off | blocked(kw["key_padding_mask"]).reshape(n, 1, 1, S)
    mask = kw["attn_mask"]
    if mask is not None:
        off = off | blocked(mask).reshape((n, h, L, S) if mask.dim() == 3 else (1, 1, L, S))
    return off.all(-1)


def fully_masked_rows(case: Case) -> torch.Tensor | None:
    """(N, h, L) as rows_per_head, or None where no query of any head is fully masked."""
    if case.name != "MultiheadAttention":
        return None
    rows = rows_per_head(case)
    return rows if bool(rows.any()) else None


def _compare_masked_attention(case, ours, theirs, r_b, r_t, rows) -> bool:
    """The documented difference (bptorch.nn.MultiheadAttention's docstring): a head whose
    every key is masked for a query gets a zero attention row, where torch gives NaN with
    need_weights=True and 0 with need_weights=False (its SDPA path). So where torch's
    attn_output has NaN, it is compared with torch's need_weights=False call (and so are the
    gradients, both twins called with need_weights=False), and attn_weights with torch's
    per-head weights, their NaN rows (only the fully masked ones) read as 0. bptorch's
    outputs and gradients must be finite. Returns False where torch gives no NaN."""
    out_t = r_t.output[0]
    if not bool(out_t.isnan().any()):
        return False
    _event("MultiheadAttention: fully masked rows (torch NaN, bptorch the documented 0)")
    for name, t in [("attn_output", r_b.output[0]), ("attn_weights", r_b.output[1]),
                    *((f"grad of {k}", g) for k, g in r_b.grads.items())]:
        assert t is None or bool(t.isfinite().all()), f"{name}: NaN or inf"
    before = copy.deepcopy(theirs)
    no_weights = dataclasses.replace(case, extra={**case.extra, "need_weights": False})
    r_t0 = run(no_weights, copy.deepcopy(before))
    assert not bool(r_t0.output[0].isnan().any()), "torch: NaN with need_weights=False"
    ref0 = functools.cache(lambda: reference64(no_weights, before))
    close("attn_output", r_b.output[0], r_t0.output[0], lambda: ref0().output[0], True)
    _compare_grads(run(no_weights, ours), r_t0, ref0, True)
    if r_t.output[1] is not None:
        per_head = dataclasses.replace(case, extra={**case.extra, "average_attn_weights": False})
        w = run(per_head, copy.deepcopy(before)).output[1]  # (N, h, L, S) or (h, L, S)
        batched = len(case.shape) == 3
        nan_rows = w.isnan().any(-1)
        heads = rows_per_head(case)
        assert bool((nan_rows == heads.reshape(nan_rows.shape)).all()), \
            "torch's NaN rows are not the fully masked ones"
        w = w.nan_to_num(0.0)
        if case.extra["average_attn_weights"]:
            w = w.mean(1 if batched else 0)
        close("attn_weights", r_b.output[1], w)
    return True


def compare(case: Case, ours: tnn.Module, theirs: tnn.Module) -> None:
    """Outputs, input and parameter gradients, buffers (BatchNorm's running statistics)
    and the fed input after the call."""
    before = copy.deepcopy(theirs)
    try:
        r_t = run(case, theirs)
    except Exception as e:  # noqa: BLE001
        note(f"torch refuses the input: {e!r}")
        _event(f"torch refuses the input: {type(e).__name__}")
        with pytest.raises(Exception):
            run(case, ours)
        return
    r_b = run(case, ours)
    ref = functools.cache(lambda: reference64(case, before))
    chain = case.name in SLOW  # attention, recurrent: see close
    rows = fully_masked_rows(case)
    if rows is not None and _compare_masked_attention(case, ours, before, r_b, r_t, rows):
        pass  # outputs compared there; torch's NaN gradients cannot be
    elif isinstance(r_t.output, tuple):  # (output, indices), (output, (h_n, c_n)), ...
        assert isinstance(r_b.output, tuple) and len(r_b.output) == len(r_t.output)
        names = OUTPUT_NAMES.get(case.name, ())
        for i, (got, expected) in enumerate(zip(r_b.output, r_t.output)):
            what = names[i] if i < len(names) else f"output {i}"
            if expected is None or got is None:
                assert got is None and expected is None, f"{what}: None in one only"
            elif expected.is_floating_point():
                close(what, got, expected, lambda i=i: ref().output[i], chain)
            else:
                close(what, got, expected)
        _compare_grads(r_b, r_t, ref, chain)
    else:
        close("output", r_b.output, r_t.output, lambda: ref().output)
        _compare_grads(r_b, r_t, ref)
    assert r_b.buffers.keys() == r_t.buffers.keys(), "buffer names differ"
    for name in r_t.buffers:
        close(f"buffer {name} after the call", r_b.buffers[name], r_t.buffers[name],
              lambda name=name: ref().buffers[name])
    close("input after the call", r_b.input_after, r_t.input_after, lambda: ref().input_after)
    if case.inplace:
        assert r_b.aliases_input == r_t.aliases_input, "inplace=True: output must be the input"


def _compare_grads(r_b, r_t, ref, chain: bool = False) -> None:
    assert r_b.grads.keys() == r_t.grads.keys(), "parameter names differ"
    for name in r_t.grads:
        close(f"grad of {name}", r_b.grads[name], r_t.grads[name],
              lambda name=name: ref().grads[name], chain)


# ---------------------------------------------------------------- signatures
@pytest.mark.parametrize("name", list(TWINS))
def test_signature_matches_torch(name):
    """torch's parameters in torch's order, kinds and defaults (*args/**kwargs where torch
    has them, e.g. Identity's); bptorch's extras keyword-only."""
    P = inspect.Parameter

    def params(cls):
        sig = torch_signature(cls) if cls is TWINS[name] else inspect.signature(cls.__init__)
        return list(sig.parameters.values())[1:]

    def describe(ps):
        return [(p.name, p.kind, p.default) for p in ps]

    theirs, ours = params(TWINS[name]), params(getattr(bnn, name))
    positional = lambda ps: [p for p in ps if p.kind is not P.KEYWORD_ONLY]  # noqa: E731
    assert describe(positional(ours)) == describe(positional(theirs))
    their_kw = {p.name: p for p in theirs if p.kind is P.KEYWORD_ONLY}
    our_kw = [p for p in ours if p.kind is P.KEYWORD_ONLY]
    assert describe(p for p in our_kw if p.name in their_kw) == describe(their_kw.values())


# ---------------------------------------------------------------- forward and backward
def _axes(names):
    return [(n, a) for n in names for a in AXES if a != "unbatched" or n in UNBATCHED]


@pytest.mark.parametrize("name,axis", _axes(n for n in MODULES if n not in SLOW))
@PARITY
@given(data=st.data())
def test_matches_torch(name, axis, data):
    _matches_torch(name, axis, data)


@pytest.mark.parametrize("name,axis", _axes(SLOW))
@SLOW_PARITY
@given(data=st.data())
def test_matches_torch_slow_modules(name, axis, data):
    _matches_torch(name, axis, data)


def _matches_torch(name, axis, data):
    case = data.draw(cases(name, axis))
    if name in TWINS:  # what was drawn, for --hypothesis-show-statistics
        _event("non-default: " + (", ".join(sorted(_non_default(case))) or "none"))
    else:
        _event(f"activation={case.kwargs['activation']}")
    _event(f"{case.layout}, {'train' if case.training else 'eval'}, {len(case.shape)}-d")
    pair = twins(case)
    if pair is not None:
        compare(case, *pair)


@pytest.mark.parametrize("name", sorted(FACTORY - {"Dense"}))  # the modules with parameters
@PARITY
@given(data=st.data())
def test_init_matches_torch_under_one_seed(name, data):
    """torch's init draws, in torch's order (Embedding N(0, 1) and its padding row 0,
    MultiheadAttention's Xavier and out_proj, the recurrent U(−1/√H, 1/√H))."""
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
    try:
        run(case, copy.deepcopy(pair[1]))
    except Exception:  # noqa: BLE001 - torch refuses the input (compared in test_matches_torch)
        return
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
    _, args, kwargs = forward_inputs(case)
    to_meta = lambda t: t.detach().to("meta") if isinstance(t, torch.Tensor) else (  # noqa: E731
        tuple(map(to_meta, t)) if isinstance(t, tuple) else t)
    args, kwargs = to_meta(args), {k: to_meta(v) for k, v in kwargs.items()}
    if case.name == "MultiheadAttention" and not kwargs["need_weights"]:
        kwargs["need_weights"] = True  # torch's fast path reads data (.item()) when it may
    torch.manual_seed(case.seed)
    try:
        expected = theirs(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - torch refuses the shape: bptorch must too
        note(f"torch refuses the meta input: {e!r}")
        with pytest.raises(Exception):
            ours(*args, **kwargs)
        return
    torch.manual_seed(case.seed)
    got = ours(*args, **kwargs)
    describe = lambda out: [None if t is None else (t.shape, t.dtype, t.device)  # noqa: E731
                            for t in flatten(out)]
    assert describe(got) == describe(expected)


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


class _BatchNormGradOffByOnePercent(bnn.BatchNorm2d):
    def forward(self, input):
        return _scale_grad(super().forward(input), 1.01)


class _BatchNormRunningVarBiased(bnn.BatchNorm1d):
    """running_var tracking the biased σ² (n − 1)/n of 4 values instead of the unbiased."""

    def forward(self, input):
        out = super().forward(input)
        if self.training:
            with torch.no_grad():  # undo m·σ²·n/(n−1), add m·σ² instead
                m, n = self.momentum, input.numel() // input.shape[1]
                var = input.double().var(dim=(0, *range(2, input.dim())), unbiased=False)
                self.running_var.sub_((m * var * (n / (n - 1) - 1)).to(self.running_var.dtype))
        return out


class _AttentionWeightsOffByOnePercent(bnn.MultiheadAttention):
    def forward(self, *args, **kwargs):
        out, weights = super().forward(*args, **kwargs)
        return out, (weights * 1.01 if weights is not None else None)


class _LSTMCellGradOffByFivePercent(bnn.LSTM):
    def forward(self, input, hx=None):
        out, (h_n, c_n) = super().forward(input, hx)
        return out, (h_n, _scale_grad(c_n, 1.05))


def _planted(case: Case, cls: type):
    """(the bug, torch's twin) built from the case under one seed, the bug with torch's
    state_dict."""
    torch.manual_seed(case.seed)
    theirs = case.build_torch()
    _randomize(case, theirs)
    ours = cls(*case.args, **case.kwargs).to(case.dtype).train(case.training)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def test_the_checks_reject_planted_bugs_in_the_new_modules():
    """BatchNorm's gradient 1% off, its running_var biased, the attention weights 1% off
    where some query rows are fully masked (the documented-difference path must not excuse
    it), an LSTM's ∂C/∂c_n 5% off in bfloat16 (the chain tolerance must not excuse it)."""
    case = Case("BatchNorm2d", (3,), {}, (2, 3, 2, 3), torch.float32, training=True, seed=3)
    with pytest.raises(AssertionError, match="grad of input"):
        compare(case, *_planted(case, _BatchNormGradOffByOnePercent))

    case = Case("BatchNorm1d", (2,), {}, (4, 2), torch.float64, training=True, seed=5)
    with pytest.raises(AssertionError, match="buffer running_var"):
        compare(case, *_planted(case, _BatchNormRunningVarBiased))

    extra = {"L": 3, "S": 2, "self_attention": False, "key_padding_mask": None,
             "attn_mask": "bool", "attn_mask_3d": False, "is_causal": False,
             "need_weights": True, "average_attn_weights": True}
    case = Case("MultiheadAttention", (4, 2), {}, (3, 2, 4), torch.float32, seed=0,
                extra=extra)
    seed = next(s for s in range(100) if fully_masked_rows(dataclasses.replace(case, seed=s))
                is not None)  # a seed whose mask leaves some query no key
    case = dataclasses.replace(case, seed=seed)
    with pytest.raises(AssertionError, match="attn_weights"):
        compare(case, *_planted(case, _AttentionWeightsOffByOnePercent))

    case = Case("LSTM", (3, 4, 2), {}, (5, 2, 3), torch.bfloat16, seed=2, extra={"hx": True})
    with pytest.raises(AssertionError, match="grad of"):
        compare(case, *_planted(case, _LSTMCellGradOffByFivePercent))


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
