"""BP4 (and BP2) of a convolution as one GEMM over the whole batch (issue 23, item 2).

* the unfolded form (``conv_weight_grad_gemm``: δ_col (C_out × N·P) times the written-out
  unfold a_col (N·P × C·K) in one GEMM; ``conv_input_grad_gemm``: W_colᵀ δ_col, then
  fold) against the reference (``conv_ref_weight_grad``/``conv_ref_input_grad``) and torch's
  autograd, float64, non-square, with groups, dilation, stride and padding; through the
  Functions (``path="gemm"``) with gradcheck and gradgradcheck; the CPU route's rule;
  under torch.func and torch.compile;
* the implicit-GEMM Triton kernels (``bptorch.kernels`` "triton") against the unfolded
  reference, through Triton's interpreter in a child process (``TRITON_INTERPRET=1`` must
  be set before triton is imported), as tests/test_kernels.py does.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import bptorch
import bptorch.functions.conv as conv
from bptorch.functions.conv import Conv2dFunction, ConvNdFunction

from helpers import INTERPRET, interpreter_only, run_in_interpreter

F64 = torch.float64

# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups): non-square maps and
# kernels, strides that skip end rows, groups, dilation, a 1×1, a kernel as large as the map
CASES = [
    (3, 4, 7, 6, 6, (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (2, 3, 5, 8, 4, (1, 1), (2, 3), (0, 1), (1, 1), 1),
    (2, 2, 5, 5, 3, (5, 5), (1, 1), (0, 0), (1, 1), 1),
    (2, 6, 9, 7, 4, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    (1, 3, 6, 5, 5, (3, 3), (1, 1), (2, 1), (2, 1), 1),
]
IDS = [f"k{c[5][0]}x{c[5][1]}-s{c[6][0]}{c[6][1]}-g{c[9]}" for c in CASES]


def _case(case, dtype=F64, requires_grad=True):
    n, c, h, w, co, k, s, p, d, g = case
    torch.manual_seed(sum(case[:5]))
    x = torch.randn(n, c, h, w, dtype=dtype, requires_grad=requires_grad)
    weight = torch.randn(co, c // g, *k, dtype=dtype, requires_grad=requires_grad)
    bias = torch.randn(co, dtype=dtype, requires_grad=requires_grad)
    return x, weight, bias, (s, p, d, g)


def _torch_grads(x, weight, bias, opts, gz):
    z = F.conv2d(x, weight, bias, *opts)
    return torch.autograd.grad(z, (x, weight, bias), gz)


# ---------------------------------------------------------------- the unfolded form
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gemm_bp4_and_bp2_equal_the_reference_and_autograd(case):
    x, weight, bias, (s, p, d, g) = _case(case)
    gz = torch.randn_like(F.conv2d(x, weight, bias, s, p, d, g))
    gx_nn, gw_nn, _ = _torch_grads(x, weight, bias, (s, p, d, g), gz)
    a, w = x.detach(), weight.detach()
    gw = conv.conv_weight_grad_gemm(gz, a, w.shape[2:], s, p, d, g)
    gw_ref = conv.conv_ref_weight_grad(gz, a, w.shape[2:], s, p, d, g)
    gx = conv.conv_input_grad_gemm(gz, w, a.shape[2:], s, p, d, g)
    gx_ref = conv.conv_ref_input_grad(gz, w, a.shape[2:], s, p, d, g)
    torch.testing.assert_close(gw, gw_ref)
    torch.testing.assert_close(gw, gw_nn)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gx, gx_nn)
    # the 2-d name of BP4's unfolded form is the same GEMM
    torch.testing.assert_close(conv.conv2d_weight_grad_unfold(gz, a, w.shape[2:], s, p, d, g),
                               gw_nn)


def test_the_unfold_is_the_reference_gather_as_one_matrix():
    """conv_cols: row (c, t), column (n, p), equal to the reference's per-example unfold."""
    x, weight, _, (s, p, d, g) = _case(CASES[0], requires_grad=False)
    out = F.conv2d(x, weight, None, s, p, d, g).shape[2:]
    cols = conv.conv_cols(x, weight.shape[2:], s, p, d, tuple(out), g)  # (g, C/g·K, N·P)
    ref = conv.conv_unfold(x, weight.shape[2:], s, p, d, tuple(out))  # (N, C·K, P)
    n, ck, positions = ref.shape
    want = ref.permute(1, 0, 2).reshape(g, ck // g, n * positions)
    assert cols.shape == want.shape
    torch.testing.assert_close(cols, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_gemm_path_through_the_function(case):
    """Conv2dFunction(path="gemm"): torch's gradients under a random upstream gradient,
    and gradcheck/gradgradcheck (double backward through the unfold's strided view)."""
    x, weight, bias, opts = _case(case)
    gz = torch.randn_like(F.conv2d(x, weight, bias, *opts))
    want = _torch_grads(x, weight, bias, opts, gz)

    def fn(x, weight, bias):
        return Conv2dFunction.apply(x, weight, bias, *opts, "gemm")

    got = torch.autograd.grad(fn(x, weight, bias), (x, weight, bias), gz)
    for name, a, b in zip("xwb", got, want, strict=True):
        torch.testing.assert_close(a, b, msg=f"grad {name}")
    small = (x[:2].detach().requires_grad_(), weight, bias)  # two examples: N·P columns
    assert gradcheck(fn, small, fast_mode=True)
    assert gradgradcheck(fn, small, fast_mode=True)


def test_the_gemm_path_first_order_with_create_graph_equals_torch():
    x, weight, bias, opts = _case(CASES[3])
    gz = torch.randn_like(F.conv2d(x, weight, bias, *opts))
    ours = torch.autograd.grad(Conv2dFunction.apply(x, weight, bias, *opts, "gemm"),
                               (x, weight), gz, create_graph=True)
    theirs = torch.autograd.grad(F.conv2d(x, weight, bias, *opts), (x, weight), gz,
                                 create_graph=True)
    v = [torch.randn_like(t) for t in ours]
    second = torch.autograd.grad(sum((o * t).sum() for o, t in zip(ours, v)), (x, weight))
    second_nn = torch.autograd.grad(sum((o * t).sum() for o, t in zip(theirs, v)), (x, weight))
    for a, b in zip(second, second_nn, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("d", [1, 3])
def test_the_gemm_form_in_one_and_three_dims(d):
    torch.manual_seed(d)
    if d == 1:
        x = torch.randn(3, 4, 11, dtype=F64, requires_grad=True)
        weight = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
        opts = ((2,), (1,), (2,), 2)
        fn = F.conv1d
    else:
        x = torch.randn(2, 4, 5, 6, 4, dtype=F64, requires_grad=True)
        weight = torch.randn(6, 2, 2, 3, 1, dtype=F64, requires_grad=True)
        opts = ((1, 2, 1), (1, 0, 1), (2, 1, 1), 2)
        fn = F.conv3d
    z = fn(x, weight, None, *opts)
    gz = torch.randn_like(z)
    want = torch.autograd.grad(z, (x, weight), gz)
    got = torch.autograd.grad(ConvNdFunction.apply(x, weight, None, *opts, "gemm"),
                              (x, weight), gz)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_an_empty_batch_gives_zero_gradients():
    x, weight, bias, opts = _case(CASES[1])
    x0 = x.detach()[:0].requires_grad_()
    z = Conv2dFunction.apply(x0, weight, bias, *opts, "gemm")
    gx, gw = torch.autograd.grad(z, (x0, weight), torch.randn_like(z))
    assert gx.shape == x0.shape and gw.shape == weight.shape and not gw.any()


# ---------------------------------------------------------------- the CPU route
def test_the_cpu_rule():
    """BP4 unfolded on the CPU where the forward is strided or δ has one position per map;
    BP2 unfolded for strided 1×1 kernels; the rest keep the correlation/transposed conv."""
    a = torch.zeros(2, 3, 8, 8)
    assert conv.bp4_unfolded_cpu(a, torch.zeros(2, 4, 4, 4), (2, 2))
    assert conv.bp4_unfolded_cpu(a, torch.zeros(2, 4, 1, 1), (1, 1))
    assert not conv.bp4_unfolded_cpu(a, torch.zeros(2, 4, 8, 8), (1, 1))
    assert not conv.bp4_unfolded_cpu(a.to("meta"), torch.zeros(2, 4, 4, 4), (2, 2))
    assert conv.bp2_unfolded(torch.zeros(4, 3, 1, 1), (2, 2))
    assert not conv.bp2_unfolded(torch.zeros(4, 3, 1, 1), (1, 1))
    assert not conv.bp2_unfolded(torch.zeros(4, 3, 3, 3), (2, 2))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_default_path_routes_by_the_rule_and_equals_torch(case, monkeypatch):
    """The default path calls the one-GEMM BP4 exactly where the rule says so (counted),
    and its gradients equal torch's either way."""
    x, weight, bias, opts = _case(case)
    z_nn = F.conv2d(x, weight, bias, *opts)
    gz = torch.randn_like(z_nn)
    calls = {"bp4": 0, "bp2": 0}
    bp4, bp2 = conv.conv_weight_grad_gemm, conv.conv_input_grad_gemm

    def count(key, fn):
        def counted(*args):
            calls[key] += 1
            return fn(*args)
        return counted

    monkeypatch.setattr(conv, "conv_weight_grad_gemm", count("bp4", bp4))
    monkeypatch.setattr(conv, "conv_input_grad_gemm", count("bp2", bp2))
    got = torch.autograd.grad(Conv2dFunction.apply(x, weight, bias, *opts, "conv"),
                              (x, weight, bias), gz)
    s = opts[0]
    k11 = tuple(weight.shape[2:]) == (1, 1)
    assert calls["bp4"] == int(k11 or max(s) > 1 or z_nn.shape[2] * z_nn.shape[3] == 1)
    assert calls["bp2"] == int(k11 and max(s) > 1)
    for name, a, b in zip("xwb", got, torch.autograd.grad(z_nn, (x, weight, bias), gz)):
        torch.testing.assert_close(a, b, msg=f"grad {name}")


def test_the_gemm_path_under_torch_func():
    """torch.func.grad (the input) and vmap through path="gemm" equal torch's."""
    x, weight, bias, opts = _case(CASES[3], requires_grad=False)

    def cost(fn):
        return lambda x: (fn(x) ** 2).sum()

    ours = torch.func.grad(cost(lambda x: Conv2dFunction.apply(x, weight, bias, *opts,
                                                               "gemm")))(x)
    theirs = torch.func.grad(cost(lambda x: F.conv2d(x, weight, bias, *opts)))(x)
    torch.testing.assert_close(ours, theirs)

    def per_example(w, xi):  # ∂C/∂W per example, vmapped over the batch
        def f(w):
            return (Conv2dFunction.apply(xi[None], w, None, *opts, "gemm") ** 2).sum()
        return torch.func.grad(f)(w)

    got = torch.func.vmap(per_example, in_dims=(None, 0))(weight, x)
    want = torch.stack([torch.func.grad(
        lambda w: (F.conv2d(xi[None], w, None, *opts) ** 2).sum())(weight) for xi in x])
    torch.testing.assert_close(got, want)


def test_the_cpu_route_under_torch_compile_fullgraph():
    """The default path with the unfolded BP4/BP2 (a strided 1×1 and a strided 3×3 conv)
    traces with no graph break and equals eager."""
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    w1 = torch.randn(6, 4, 1, 1, requires_grad=True)
    w3 = torch.randn(5, 6, 3, 3, requires_grad=True)

    def f(x, w1, w3):
        y = bptorch.functional.conv2d(x, w1, None, 2)
        return bptorch.functional.conv2d(y, w3, None, 2, 1).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, w1, w3), (x, w1, w3))
    want = torch.autograd.grad(f(x, w1, w3), (x, w1, w3))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- the Triton kernels
def _launches(name: str) -> int:
    return bptorch.kernels.LAUNCHES.get(name, 0)


@pytest.mark.skipif(INTERPRET, reason="this is the parent")
def test_the_kernels_through_the_interpreter():
    """Every test_triton_* below on CPU tensors, in a child process with TRITON_INTERPRET=1."""
    run_in_interpreter(__file__, "-k", "test_triton_")


# tiny shapes: stride 1 and 2 (and 2 × 1), padding, a 1×1, 3×3 and 3×2, groups 1 and 2,
# dilation; C_out, C·K and N·P not multiples of the tiles (the masks)
TRITON_CASES = [
    (2, 3, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 3, 7, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (2, 3, 5, 8, 4, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (2, 4, 7, 6, 6, (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (1, 2, 9, 5, 3, (1, 1), (1, 1), (1, 0), (1, 1), 1),
]
TRITON_IDS = [f"k{c[5][0]}x{c[5][1]}-s{c[6][0]}{c[6][1]}-g{c[9]}" for c in TRITON_CASES]


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("case", TRITON_CASES, ids=TRITON_IDS)
def test_triton_bp4_and_bp2_equal_the_unfolded_reference(case, dtype):
    """The implicit-GEMM kernels (one launch each) against the one-GEMM unfolded form and
    torch's autograd, through Conv2dFunction under use("triton")."""
    x, weight, bias, (s, p, d, g) = _case(case, dtype)
    z_nn = F.conv2d(x, weight, bias, s, p, d, g)
    gz = torch.randn_like(z_nn)
    before = _launches("conv2d_bp4"), _launches("conv2d_bp2")
    with bptorch.kernels.use("triton"):
        z = Conv2dFunction.apply(x, weight, bias, s, p, d, g, "conv")
        gx, gw, gb = torch.autograd.grad(z, (x, weight, bias), gz)
    assert (_launches("conv2d_bp4"), _launches("conv2d_bp2")) == (before[0] + 1, before[1] + 1)
    a, w = x.detach(), weight.detach()
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(gw, conv.conv_weight_grad_gemm(gz, a, w.shape[2:], s, p, d, g),
                               **tol)
    torch.testing.assert_close(gx, conv.conv_input_grad_gemm(gz, w, a.shape[2:], s, p, d, g),
                               **tol)
    for name, got, want in zip("xwb", (gx, gw, gb), torch.autograd.grad(
            z_nn, (x, weight, bias), gz)):
        torch.testing.assert_close(got, want, **tol, msg=f"grad {name}")


@interpreter_only
def test_triton_split_reduction_over_many_programs(monkeypatch):
    """BP4's split-K: many programs, each a slice of the N·P positions, summed after."""
    monkeypatch.setattr(conv, "BP4_MIN_SPAN", 1)
    x, weight, bias, opts = _case((3, 2, 6, 7, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1))
    z_nn = F.conv2d(x, weight, bias, *opts)
    gz = torch.randn_like(z_nn)
    with bptorch.kernels.use("triton"):
        (gw,) = torch.autograd.grad(Conv2dFunction.apply(x, weight, bias, *opts, "conv"),
                                    (weight,), gz)
    torch.testing.assert_close(gw, torch.autograd.grad(z_nn, weight, gz)[0])


@interpreter_only
def test_triton_only_what_is_needed_and_double_backward_takes_the_reference():
    x, weight, bias, opts = _case(TRITON_CASES[1])
    gz = torch.randn_like(F.conv2d(x, weight, bias, *opts))
    before = _launches("conv2d_bp4"), _launches("conv2d_bp2")
    with bptorch.kernels.use("triton"):
        z = Conv2dFunction.apply(x.detach(), weight, bias, *opts, "conv")  # no ∂C/∂a wanted
        torch.autograd.grad(z, weight, gz)
        assert (_launches("conv2d_bp4"), _launches("conv2d_bp2")) == (before[0] + 1, before[1])
        z = Conv2dFunction.apply(x, weight, bias, *opts, "conv")
        first = torch.autograd.grad(z, (x, weight), gz, create_graph=True)
    assert (_launches("conv2d_bp4"), _launches("conv2d_bp2")) == (before[0] + 1, before[1])
    theirs = torch.autograd.grad(F.conv2d(x, weight, bias, *opts), (x, weight), gz,
                                 create_graph=True)
    v = [torch.randn_like(t) for t in first]
    second = torch.autograd.grad(sum((a * b).sum() for a, b in zip(first, v)), (x, weight))
    want = torch.autograd.grad(sum((a * b).sum() for a, b in zip(theirs, v)), (x, weight))
    for a, b in zip(second, want, strict=True):
        torch.testing.assert_close(a, b)


@interpreter_only
def test_triton_feedback_and_same_padding():
    """BP2 passes δ through B (a feedback rule), BP4 reads a^{l−1}; padding="same" with an
    even kernel (the extra bottom/right row is cropped after the kernel)."""
    x = torch.randn(2, 3, 6, 5, dtype=F64, requires_grad=True)
    weight = torch.randn(4, 3, 2, 2, dtype=F64, requires_grad=True)
    b_fb = torch.randn(4, 3, 2, 2, dtype=F64)
    gz = torch.randn(2, 4, 6, 5, dtype=F64)
    got = {}
    for choice in ("triton", "reference"):
        with bptorch.kernels.use(choice):
            z = bptorch.functional.conv2d(x, weight, None, 1, "same", feedback_weight=b_fb)
            got[choice] = torch.autograd.grad(z, (x, weight), gz)
    for a, b in zip(got["triton"], got["reference"], strict=True):
        torch.testing.assert_close(a, b)
    z = F.conv2d(x, weight, None, 1, "same")
    torch.testing.assert_close(got["triton"][1], torch.autograd.grad(z, weight, gz)[0])


@interpreter_only
def test_triton_kernels_under_torch_compile_fullgraph():
    """Each kernel is one custom op to Dynamo: no graph break, equal to eager."""
    x = torch.randn(2, 3, 7, 6, dtype=F64, requires_grad=True)
    w1 = torch.randn(4, 3, 3, 3, dtype=F64, requires_grad=True)
    w2 = torch.randn(5, 4, 1, 1, dtype=F64, requires_grad=True)

    def f(x, w1, w2):
        y = bptorch.functional.conv2d(x, w1, None, 2, 1)
        return bptorch.functional.conv2d(y, w2).square().sum()

    with bptorch.kernels.use("triton"):
        before = _launches("conv2d_bp4"), _launches("conv2d_bp2")
        loss = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w1, w2)
        got = torch.autograd.grad(loss, (x, w1, w2))
        assert _launches("conv2d_bp4") >= before[0] + 2 and _launches("conv2d_bp2") > before[1]
    want = f(x, w1, w2)
    for a, b in zip(got, torch.autograd.grad(want, (x, w1, w2)), strict=True):
        torch.testing.assert_close(a, b)


@interpreter_only
def test_triton_in_bfloat16_rounds_as_the_reference():
    """bfloat16 operands, float32 accumulation: within bfloat16's rounding of float64's."""
    x, weight, bias, opts = _case(TRITON_CASES[3])
    gz = torch.randn_like(F.conv2d(x, weight, bias, *opts))
    want = torch.autograd.grad(F.conv2d(x, weight, bias, *opts), (x, weight), gz)
    xb, wb = (t.detach().bfloat16().requires_grad_() for t in (x, weight))
    with bptorch.kernels.use("triton"):
        z = Conv2dFunction.apply(xb, wb, None, *opts, "conv")
        got = torch.autograd.grad(z, (xb, wb), gz.bfloat16())
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), b, rtol=0, atol=0.03 * b.abs().max().item())


def test_auto_leaves_the_conv_kernels_off_until_a_gpu_has_timed_them(monkeypatch):
    """CONV_KERNELS_IN_AUTO False: "auto" keeps the default path even where kernels could
    run (use_kernel forced True here); "triton" takes them."""
    from types import SimpleNamespace

    monkeypatch.setattr(conv, "use_kernel", lambda t: True)
    inputs = (torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 1), None, (1, 1), (0, 0), (1, 1),
              1, "conv")
    for choice, want in (("auto", False), ("triton", True), ("reference", False)):
        ctx = SimpleNamespace()
        monkeypatch.setitem(bptorch.functions.base._KERNEL, "choice", choice)
        conv.conv2d_setup(ctx, inputs)
        assert ctx.kernel is want, choice
