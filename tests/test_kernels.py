"""The Triton kernels (bptorch.kernels) and the switch that picks them.

The kernel tests need Triton's interpreter, which runs kernels on CPU tensors only when
``TRITON_INTERPRET=1`` is set before triton is imported: they run in one child pytest
process (:func:`test_kernels_through_the_interpreter`) that sets it, and skip in this
one. Each compares a kernel with the reference (``use("reference")``) and with torch.nn,
forward and backward with a random upstream gradient, float32 and float64, at small
non-square shapes whose feature sizes are not powers of two (the kernels' masks).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import bptorch
from bptorch import functional as BF

from helpers import INTERPRET, ROOT, interpreter_only, run_in_interpreter
from helpers import assert_all_close as _close
from helpers import upstream_grads as _grads

DTYPES = [torch.float32, torch.float64]


def _launches(name: str) -> int:
    return bptorch.kernels.LAUNCHES.get(name, 0)


# ---------------------------------------------------------------- the switch
@pytest.mark.skipif(INTERPRET, reason="the parent checks it")
def test_import_bptorch_does_not_import_triton():
    code = ("import sys, bptorch, bptorch.functions.normalization, bptorch.functions.linear; "
            "assert 'triton' not in sys.modules, 'import bptorch imported triton'; "
            "bptorch.kernels.current(); "
            "assert 'triton' not in sys.modules, 'bptorch.kernels imported triton'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_switch_names_default_and_restore():
    assert bptorch.kernels.current() == "auto"
    with bptorch.kernels.use("reference") as name:
        assert name == "reference" and bptorch.kernels.current() == "reference"
        with bptorch.kernels.use("auto"):
            assert bptorch.kernels.current() == "auto"
        assert bptorch.kernels.current() == "reference"
    assert bptorch.kernels.current() == "auto"
    with pytest.raises(KeyError), bptorch.kernels.use("reference"):
        raise KeyError  # restored on the way out of an exception too
    assert bptorch.kernels.current() == "auto"
    bptorch.kernels.set_default("reference")
    try:
        assert bptorch.kernels.current() == "reference"
    finally:
        bptorch.kernels.set_default("auto")


@pytest.mark.parametrize("bad", ["cuda", "Triton", ""])
def test_unknown_names_raise_listing_the_three(bad):
    with pytest.raises(ValueError, match="'reference', 'triton', 'auto'"):
        with bptorch.kernels.use(bad):
            pass
    with pytest.raises(ValueError, match="'reference', 'triton', 'auto'"):
        bptorch.kernels.set_default(bad)
    assert bptorch.kernels.current() == "auto"


def test_a_bad_bptorch_kernels_variable_raises_at_first_use(monkeypatch):
    from bptorch.functions import base

    monkeypatch.setitem(base._KERNEL, "choice", "fast")  # as BPTORCH_KERNELS=fast would
    with pytest.raises(ValueError, match="'fast'; expected one of 'reference', 'triton'"):
        BF.layer_norm(torch.randn(2, 3), (3,))


def _every_kernel_layer(x):
    """A forward and backward through every layer that has a kernel, on CPU tensors."""
    x = x.detach().requires_grad_()
    w = torch.randn(x.shape[-1], dtype=x.dtype, requires_grad=True)
    y = BF.layer_norm(x, (x.shape[-1],), w, w)
    y = BF.batch_norm(y, None, None, w, w, True)
    y = BF.gelu(BF.sigmoid(y))
    y.backward(torch.randn_like(y))
    return x.grad


@pytest.mark.parametrize("name", ["reference", "auto"])
def test_reference_and_auto_on_cpu_never_launch_a_kernel(name):
    """use("reference") never calls a kernel; "auto" picks the reference on CPU tensors
    (here, even in the interpreter's process: "auto" means Triton on CUDA only)."""
    before = dict(bptorch.kernels.LAUNCHES)
    with bptorch.kernels.use(name):
        got = _every_kernel_layer(torch.randn(3, 5, dtype=torch.float64))
    assert bptorch.kernels.LAUNCHES == before
    torch.manual_seed(0)
    want = _every_kernel_layer(torch.randn(3, 5, dtype=torch.float64))
    assert got.shape == want.shape


@pytest.mark.skipif(INTERPRET, reason="the interpreter runs 'triton' on CPU tensors")
def test_triton_on_a_cpu_tensor_without_the_interpreter_raises():
    with bptorch.kernels.use("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        BF.layer_norm(torch.randn(2, 3), (3,))


@pytest.mark.skipif(INTERPRET, reason="this is the parent")
def test_kernels_through_the_interpreter():
    """Every kernel test below on CPU tensors, in a child process with TRITON_INTERPRET=1."""
    run_in_interpreter(__file__, "-m", "not slow")


# ---------------------------------------------------------------- LayerNorm
LN_CASES = [((3, 5, 7), (7,)), ((4, 3, 5), (3, 5)), ((6, 33), (33,))]


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized_shape", LN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_kernels(dtype, shape, normalized_shape, affine):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    w = torch.randn(normalized_shape, dtype=dtype, requires_grad=True) if affine else None
    b = torch.randn(normalized_shape, dtype=dtype, requires_grad=True) if affine else None
    g = torch.randn(shape, dtype=dtype)
    inputs = (x, w, b)
    fwd, bwd = _launches("layer_norm_fwd"), _launches("layer_norm_bwd")
    with bptorch.kernels.use("triton"):
        y = BF.layer_norm(x, normalized_shape, w, b, 1e-5)
        grads = _grads(y, inputs, g)
    assert (_launches("layer_norm_fwd"), _launches("layer_norm_bwd")) == (fwd + 1, bwd + 1)
    with bptorch.kernels.use("reference"):
        y_ref = BF.layer_norm(x, normalized_shape, w, b, 1e-5)
        grads_ref = _grads(y_ref, inputs, g)
    y_nn = F.layer_norm(x, normalized_shape, w, b, 1e-5)
    grads_nn = _grads(y_nn, inputs, g)
    _close((y, *grads), (y_ref, *grads_ref), dtype)
    _close((y, *grads), (y_nn, *grads_nn), dtype)


@interpreter_only
def test_layer_norm_rows_longer_than_a_block_take_the_reference(monkeypatch):
    from bptorch.functions import normalization

    monkeypatch.setattr(normalization, "MAX_ROW", 6)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, dtype=torch.float64)
    before = _launches("layer_norm_fwd"), _launches("layer_norm_bwd")
    with bptorch.kernels.use("triton"):
        y = BF.layer_norm(x, (7,), w, w)
        grads = _grads(y, (x, w), g)
    assert (_launches("layer_norm_fwd"), _launches("layer_norm_bwd")) == before
    y_nn = F.layer_norm(x, (7,), w, w)
    _close((y, *grads), (y_nn, *_grads(y_nn, (x, w), g)), torch.float64)


@interpreter_only
def test_layer_norm_kernel_saves_mean_and_rstd_and_honours_need():
    from bptorch.functions.normalization import LayerNormFunction

    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    with bptorch.kernels.use("triton"):
        y, mean, rstd = LayerNormFunction.apply(x, (6,), w, None, 1e-5)
        (gw,) = torch.autograd.grad(y, w, torch.randn_like(y))  # ∂C/∂γ only
    var, mu = torch.var_mean(x.detach(), -1, keepdim=True, correction=0)
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5))
    assert gw.shape == (6,)


@interpreter_only
def test_layer_norm_kernels_under_torch_compile():
    """fullgraph: the kernels are custom ops to Dynamo, no graph break."""
    x = torch.randn(5, 7, requires_grad=True)
    w = torch.randn(7, requires_grad=True)
    g = torch.randn(5, 7)

    def f(x, w):
        return BF.layer_norm(x, (7,), w, None) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    with bptorch.kernels.use("triton"):
        fwd = _launches("layer_norm_fwd")
        y = compiled(x, w)
        grads = _grads(y, (x, w), g)
        assert _launches("layer_norm_fwd") > fwd
        y_eager = f(x, w)
        _close((y, *grads), (y_eager, *_grads(y_eager, (x, w), g)), torch.float32)


# ---------------------------------------------------------------- BatchNorm
BN_SHAPES = [(4, 3, 5, 7), (6, 5), (3, 2, 9)]


def _batch_norm(x, w, b, rm, rv, training, g, inputs, fn):
    y = fn(x, rm, rv, w, b, training, 0.1, 1e-5)
    return (y, *_grads(y, inputs, g))


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_kernels(dtype, shape, training, affine):
    c = shape[1]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    w = torch.randn(c, dtype=dtype, requires_grad=True) if affine else None
    b = torch.randn(c, dtype=dtype, requires_grad=True) if affine else None
    g = torch.randn(shape, dtype=dtype)
    running = torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5
    inputs = (x, w, b)
    results = {}
    for name, fn in (("triton", BF.batch_norm), ("reference", BF.batch_norm),
                     ("nn", F.batch_norm)):
        rm, rv = (t.clone() for t in running)
        launches = _launches("batch_norm_fwd"), _launches("batch_norm_bwd")
        with bptorch.kernels.use("triton" if name == "triton" else "reference"):
            out = _batch_norm(x, w, b, rm, rv, training, g, inputs, fn)
        if name == "triton":  # one launch each way (and one running-statistics update)
            assert (_launches("batch_norm_fwd"), _launches("batch_norm_bwd")) == (
                launches[0] + 1, launches[1] + 1)
        results[name] = (*out, rm, rv)
    _close(results["triton"], results["reference"], dtype)
    _close(results["triton"], results["nn"], dtype)


@interpreter_only
def test_running_statistics_kernel():
    mean, rstd = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    from bptorch.functions.normalization import update_running_stats
    got, want = [torch.randn(5), torch.rand(5)], [None, None]
    want = [t.clone() for t in got]
    before = _launches("running_stats")
    with bptorch.kernels.use("triton"):
        update_running_stats(*got, mean.float(), rstd.float(), 1e-5, 7, 0.3)
    assert _launches("running_stats") == before + 1
    with bptorch.kernels.use("reference"):
        update_running_stats(*want, mean.float(), rstd.float(), 1e-5, 7, 0.3)
    _close(got, want, torch.float32)


# ---------------------------------------------------------------- σ'(z) ⊙ g
SIGMAS = [("sigmoid", {}, torch.sigmoid), ("tanh", {}, torch.tanh), ("relu", {}, F.relu),
          ("leaky_relu", {"negative_slope": 0.2}, lambda z: F.leaky_relu(z, 0.2)),
          ("leaky_relu", {"negative_slope": -0.3}, lambda z: F.leaky_relu(z, -0.3)),
          ("gelu", {"approximate": "none"}, F.gelu),
          ("gelu", {"approximate": "tanh"}, lambda z: F.gelu(z, approximate="tanh")),
          ("silu", {}, F.silu)]


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,options,torch_fn", SIGMAS,
                         ids=[f"{s[0]}{s[1]}" for s in SIGMAS])
def test_activation_delta_kernel(dtype, name, options, torch_fn):
    """Dense (σ(a_prev Wᵀ + b)) and the activation layer alone: δ = ∂C/∂a ⊙ σ'(z)."""
    from bptorch.functions.linear import ActivationFunction, DenseFunction

    act = bptorch.get_activation(name, **options)
    x = torch.randn(5, 3, 7, dtype=dtype, requires_grad=True)
    w = torch.randn(11, 7, dtype=dtype, requires_grad=True)
    b = torch.randn(11, dtype=dtype, requires_grad=True)
    g = torch.randn(5, 3, 11, dtype=dtype)
    results = {}
    for choice in ("triton", "reference"):
        before = _launches("activation_delta")
        with bptorch.kernels.use(choice):
            a = DenseFunction.apply(x, w, b, act)
            dense = (a, *_grads(a, (x, w, b), g))
            a2 = ActivationFunction.apply(x, act)
            alone = (a2, *_grads(a2, (x,), g[..., :7]))
        assert _launches("activation_delta") == before + (2 if choice == "triton" else 0)
        results[choice] = (*dense, *alone)
    a = torch_fn(F.linear(x, w, b))
    a2 = torch_fn(x)
    results["torch"] = (a, *_grads(a, (x, w, b), g), a2, *_grads(a2, (x,), g[..., :7]))
    _close(results["triton"], results["reference"], dtype)
    _close(results["triton"], results["torch"], dtype)


@interpreter_only
def test_softmax_takes_the_reference_and_double_backward_is_right():
    """Softmax has no kernel (its Jacobian is not diagonal). Double backward tapes the
    reference (differentiable), whose own backward may take the kernel again."""
    from bptorch.functions.linear import ActivationFunction

    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, dtype=torch.float64)
    before = _launches("activation_delta")
    with bptorch.kernels.use("triton"):
        a = ActivationFunction.apply(x, bptorch.get_activation("softmax"))
        torch.autograd.grad(a, x, g)
        assert _launches("activation_delta") == before
        a = ActivationFunction.apply(x, bptorch.get_activation("tanh"))
        (gx,) = torch.autograd.grad(a, x, g, create_graph=True)
        (ggx,) = torch.autograd.grad(gx, x, g)
    (want,) = torch.autograd.grad(torch.autograd.grad(
        torch.tanh(x), x, g, create_graph=True)[0], x, g)
    _close((ggx,), (want,), torch.float64)


# ---------------------------------------------------------------- cross-entropy BP1
CE_CASES = [  # (input shape, target kind, options)
    ((6, 7), "index", {}),
    ((6, 7), "index", {"reduction": "sum", "weight": True, "ignore_index": 2}),
    ((5, 7), "prob", {"reduction": "none", "label_smoothing": 0.1}),
    ((3, 5, 4), "index", {"reduction": "none"}),
    ((3, 5, 2, 3), "index", {"label_smoothing": 0.2}),
]


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kind,options", CE_CASES)
def test_cross_entropy_bp1_kernel(dtype, shape, kind, options):
    options = dict(options)
    c = shape[1]
    z = torch.randn(shape, dtype=dtype, requires_grad=True)
    if kind == "index":
        target = torch.randint(c, (shape[0], *shape[2:]))
    else:
        target = torch.softmax(torch.randn(shape, dtype=dtype), 1)
    if options.pop("weight", False):
        options["weight"] = torch.rand(c, dtype=dtype) + 0.5
    results = {}
    for choice in ("triton", "reference"):
        before = _launches("cross_entropy_bwd")
        with bptorch.kernels.use(choice):
            loss = BF.cross_entropy(z, target, **options)
            g = torch.randn_like(loss) if choice == "triton" else g
            results[choice] = (loss, *_grads(loss, (z,), g))
        assert _launches("cross_entropy_bwd") == before + (choice == "triton")
    loss = F.cross_entropy(z, target, **options)
    results["nn"] = (loss, *_grads(loss, (z,), g))
    _close(results["triton"], results["reference"], dtype)
    _close(results["triton"], results["nn"], dtype)


@interpreter_only
def test_cross_entropy_soft_target_gradient_takes_the_reference():
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1).requires_grad_()
    before = _launches("cross_entropy_bwd")
    with bptorch.kernels.use("triton"):
        grads = _grads(BF.cross_entropy(z, y), (z, y), torch.tensor(1.5, dtype=torch.float64))
    assert _launches("cross_entropy_bwd") == before
    _close(grads, _grads(F.cross_entropy(z, y), (z, y), torch.tensor(1.5, dtype=torch.float64)),
           torch.float64)


# ---------------------------------------------------------------- torch.compile
@interpreter_only
def test_every_kernel_under_torch_compile_fullgraph():
    """Each kernel is one custom op to Dynamo: fullgraph (no graph break), equal to eager.
    (Under the interpreter the ops are opaque custom ops; on CUDA, triton_ops.)"""
    x = torch.randn(4, 3, 5, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    cw = torch.randn(3, requires_grad=True)
    target = torch.tensor([1, 0, 2, 1])

    def f(x, w, cw):
        y = BF.layer_norm(x, (5,), w, None)
        y = BF.batch_norm(y, None, None, cw, None, True)
        y = BF.gelu(y).sum(-1)  # (4, 3)
        return BF.cross_entropy(y, target)

    names = ("layer_norm_fwd", "layer_norm_bwd", "batch_norm_fwd", "batch_norm_bwd",
             "activation_delta", "cross_entropy_bwd")
    with bptorch.kernels.use("triton"):
        before = [_launches(n) for n in names]
        loss = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, cw)
        grads = torch.autograd.grad(loss, (x, w, cw))
        assert all(_launches(n) > b for n, b in zip(names, before)), bptorch.kernels.LAUNCHES
        want = f(x, w, cw)
        _close((loss, *grads), (want, *torch.autograd.grad(want, (x, w, cw))), torch.float32)


# ---------------------------------------------------------------- half precision
@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernels_in_half_precision_round_once_as_the_reference(dtype):
    """float16/bfloat16 in, arithmetic in float32, each result rounded once: the kernels
    equal the reference to one rounding, on a non-contiguous input (a transposed view)."""
    x = torch.randn(4, 7, 6, dtype=dtype).transpose(1, 2).requires_grad_()  # (4, 6, 7)
    w = torch.randn(7, dtype=dtype, requires_grad=True)
    cw = torch.randn(6, dtype=dtype, requires_grad=True)
    target = torch.randint(6, (4, 7))

    def f(x, w, cw):
        y = BF.layer_norm(x, (7,), w, None)
        y = BF.silu(BF.batch_norm(y, None, None, cw, None, True))
        return BF.cross_entropy(y, target, reduction="sum")

    results = {}
    for choice in ("triton", "reference"):
        with bptorch.kernels.use(choice):
            loss = f(x, w, cw)
            results[choice] = (loss, *torch.autograd.grad(loss, (x, w, cw)))
    for a, b in zip(results["triton"], results["reference"], strict=True):
        assert a.dtype == b.dtype
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0.03 * scale)
