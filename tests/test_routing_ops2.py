"""The vector norm, F.normalize and torch.put written out (functions/vector_norm.py,
functions/indexing.py), and the in-place writes routing turns into bptorch's put_ on the
written view's base (x[idx] = v, x[:, 1:] += r, x[i].zero_(), ...: no CopySlices).

Each against torch in float64 (forward, backward with a random upstream gradient,
non-square shapes), gradcheck and gradgradcheck, create_graph and torch.func, autocast,
bad inputs; then routed in toy models (swin_v2's cosine attention and bias write, mvit's
slice additions) that equal torch and are complete per bptorch.coverage."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import routing
from bptorch.convert import from_torch_nn
from bptorch.functions import indexing, vector_norm
from bptorch.functions.indexing import PutFunction, positions
from bptorch.functions.vector_norm import NormalizeFunction, VectorNormFunction

from helpers import randn64, same_grads

D = torch.float64


# ---------------------------------------------------------------- the vector norm
NORMS = [(2, None, False), (2, (1,), False), (2, (0, 2), True), (1, (-1,), False),
         (3, (1,), True), (1.5, (0, 1), False), (2, (), False)]


@pytest.mark.parametrize("p,dim,keepdim", NORMS, ids=[str(c) for c in NORMS])
def test_vector_norm_equals_torch_and_gradchecks(p, dim, keepdim):
    x = randn64(3, 4, 5, seed=0)
    same_grads(BF.vector_norm(x, p, dim, keepdim), torch.linalg.vector_norm(x, p, dim, keepdim),
                [x])
    f = lambda v: BF.vector_norm(v, p, dim, keepdim)  # noqa: E731
    small = randn64(2, 3, 2)
    assert gradcheck(f, (small,)) and gradgradcheck(f, (small,))


def test_torch_norm_forms_and_a_zero_vector_as_torch():
    x = randn64(4, 3, seed=1)
    same_grads(BF.norm(x), torch.norm(x), [x])  # "fro": the 2-norm of every entry
    same_grads(BF.norm(x, 1, 0), x.norm(1, 0), [x])
    same_grads(BF.norm(x, "fro", (0, 1), True), torch.norm(x, "fro", (0, 1), True), [x])
    z = torch.zeros(2, 3, dtype=D, requires_grad=True)  # n = 0: torch's gradient is 0
    for p in (1, 2, 3):
        same_grads(BF.vector_norm(z, p, 1), torch.linalg.vector_norm(z, p, 1), [z])


def test_vector_norm_create_graph_torch_func_and_jvp():
    x = randn64(3, 5, seed=2)
    g = torch.randn(3, dtype=D)
    (ours,) = torch.autograd.grad(BF.vector_norm(x, 2, 1), x, g, create_graph=True)
    (theirs,) = torch.autograd.grad(torch.linalg.vector_norm(x, 2, 1), x, g, create_graph=True)
    torch.testing.assert_close(ours, theirs)
    same_grads((ours ** 2).sum(), (theirs ** 2).sum(), [x])  # the double backward
    v = x.detach()
    torch.testing.assert_close(
        torch.func.grad(lambda a: BF.vector_norm(a, 3, (0,)).sum())(v),
        torch.func.grad(lambda a: torch.linalg.vector_norm(a, 3, (0,)).sum())(v))
    t = torch.randn_like(v)
    torch.testing.assert_close(
        torch.func.jvp(lambda a: BF.vector_norm(a, 2, 1, True), (v,), (t,))[1],
        torch.func.jvp(lambda a: torch.linalg.vector_norm(a, 2, 1, True), (v,), (t,))[1])


# ---------------------------------------------------------------- F.normalize
@pytest.mark.parametrize("p,dim", [(2, 1), (2, -1), (1, 0), (3, 2)])
def test_normalize_equals_torch_and_gradchecks(p, dim):
    x = randn64(3, 4, 5, seed=3)
    same_grads(BF.normalize(x, p, dim), TF.normalize(x, p, dim), [x])
    f = lambda v: BF.normalize(v, p, dim)  # noqa: E731
    small = randn64(2, 3, 2)
    assert gradcheck(f, (small,)) and gradgradcheck(f, (small,))


def test_normalize_below_eps_and_at_zero_as_torch():
    """A vector shorter than eps is divided by eps (no gradient through the norm); a zero
    vector too."""
    x = torch.randn(4, 3, dtype=D)
    x[1] *= 1e-3
    x[2] = 0.0
    x.requires_grad_()
    same_grads(BF.normalize(x, 2, 1, 1e-2), TF.normalize(x, 2, 1, 1e-2), [x])
    same_grads(BF.normalize(x, 1, 1), TF.normalize(x, 1, 1), [x])


def test_normalize_create_graph_torch_func_and_jvp():
    x = randn64(4, 3, seed=4)
    g = torch.randn(4, 3, dtype=D)
    (ours,) = torch.autograd.grad(BF.normalize(x, dim=1), x, g, create_graph=True)
    (theirs,) = torch.autograd.grad(TF.normalize(x, dim=1), x, g, create_graph=True)
    torch.testing.assert_close(ours, theirs)
    same_grads(ours.sin().sum(), theirs.sin().sum(), [x])
    v, t = x.detach(), torch.randn(4, 3, dtype=D)
    torch.testing.assert_close(torch.func.grad(lambda a: (BF.normalize(a) * t).sum())(v),
                               torch.func.grad(lambda a: (TF.normalize(a) * t).sum())(v))
    torch.testing.assert_close(torch.func.jvp(lambda a: BF.normalize(a, 3, 0), (v,), (t,))[1],
                               torch.func.jvp(lambda a: TF.normalize(a, 3, 0), (v,), (t,))[1])


def test_norms_under_cpu_autocast_as_torch():
    x = torch.randn(3, 4, requires_grad=True)
    for ours, theirs in ((lambda v: BF.normalize(v, dim=1), lambda v: TF.normalize(v, dim=1)),
                         (lambda v: BF.vector_norm(v, 2, 1), lambda v: torch.linalg.vector_norm(v, 2, 1))):
        for v in (x, x.detach().bfloat16().requires_grad_()):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                a, b = ours(v), theirs(v)
            assert a.dtype == b.dtype
            g = torch.randn_like(b.float()).to(b.dtype)
            (ga,), (gb,) = torch.autograd.grad(a, v, g), torch.autograd.grad(b, v, g)
            assert ga.dtype == gb.dtype
            torch.testing.assert_close(ga.float(), gb.float(), atol=2e-2, rtol=2e-2)


def test_norms_bad_inputs_say_what_was_expected():
    x = torch.randn(3, 4)
    with pytest.raises(IndexError, match="dim 2 is out of range"):
        BF.normalize(x, dim=2)
    with pytest.raises(RuntimeError, match="floating point"):
        BF.vector_norm(torch.ones(3, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="finite order"):
        BF.vector_norm(x, float("inf"))  # routed, such a call falls back to torch
    with pytest.raises(NotImplementedError, match="finite order"):
        BF.normalize(x, 0.5)
    with pytest.raises(NotImplementedError, match="finite order"):
        BF.norm(x, "nuc")


def test_a_normalize_without_the_norms_term_is_caught(monkeypatch):
    """The checks can fail: normalize's backward with the path through the norm dropped."""
    monkeypatch.setattr(vector_norm, "normalize_bwd",
                        lambda delta, x, p, dim, eps: delta / x.norm(p, dim, True).clamp_min(eps))
    x = randn64(3, 4, seed=5)
    assert not gradcheck(lambda v: NormalizeFunction.apply(v, 2.0, 1, 1e-12), (x,),
                         raise_exception=False)


# ---------------------------------------------------------------- torch.put
@pytest.mark.parametrize("accumulate", [False, True])
def test_put_equals_torch_and_gradchecks(accumulate):
    x = randn64(3, 5, seed=6)
    index = torch.tensor([[0, 7], [14, -2], [5, 3]])  # a 2-D index, a negative position
    src = randn64(2, 3)  # as many entries as the index, another shape: torch's rule
    same_grads(BF.put(x, index, src, accumulate), torch.put(x, index, src, accumulate),
                [x, src])
    f = lambda a, s: PutFunction.apply(a, index, s, accumulate, False)  # noqa: E731
    assert gradcheck(f, (x, src)) and gradgradcheck(f, (x, src))
    g = lambda a, s: PutFunction.apply(a.clone(), index, s, accumulate, True)  # noqa: E731
    assert gradcheck(g, (x, src)) and gradgradcheck(g, (x, src))


def test_put_into_a_non_contiguous_tensor_and_in_place():
    x = randn64(4, 3, seed=7)
    index, src = torch.tensor([1, 6, 10]), randn64(3)
    same_grads(BF.put(x.t(), index, src), torch.put(x.t(), index, src), [x, src])
    ours, theirs = x.clone(), x.clone()
    assert BF.put_(ours, index, src) is ours
    theirs.put_(index, src)
    same_grads(ours, theirs, [x, src])
    assert type(ours.grad_fn).__name__ == "PutFunctionBackward"


def test_put_create_graph_torch_func_and_jvp():
    x, src = randn64(3, 4, seed=8), randn64(2)
    index = torch.tensor([2, 9])
    g = torch.randn(3, 4, dtype=D)
    ours = torch.autograd.grad(BF.put(x, index, src) ** 2, (x, src), g, create_graph=True)
    theirs = torch.autograd.grad(torch.put(x, index, src) ** 2, (x, src), g, create_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    same_grads(ours[0].sum() + ours[1].pow(3).sum(), theirs[0].sum() + theirs[1].pow(3).sum(),
                [x, src])
    v, s = x.detach(), src.detach()
    for argnums in (0, 1):
        torch.testing.assert_close(
            torch.func.grad(lambda a, b: (BF.put(a, index, b) * g).sum(), argnums)(v, s),
            torch.func.grad(lambda a, b: (torch.put(a, index, b) * g).sum(), argnums)(v, s))
    tv, ts = torch.randn_like(v), torch.randn_like(s)
    torch.testing.assert_close(
        torch.func.jvp(lambda a, b: BF.put(a, index, b, True), (v, s), (tv, ts))[1],
        torch.func.jvp(lambda a, b: torch.put(a, index, b, True), (v, s), (tv, ts))[1])


def test_put_under_cpu_autocast_keeps_the_dtype_as_torch():
    x, src = torch.randn(3, 4, requires_grad=True), torch.randn(2, requires_grad=True)
    index = torch.tensor([0, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = BF.put(x, index, src), torch.put(x, index, src)
    assert a.dtype == b.dtype
    same_grads(a, b, [x, src])


def test_put_bad_inputs_say_what_was_expected():
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="int64"):
        BF.put(x, torch.tensor([0.0]), torch.ones(1))
    with pytest.raises(RuntimeError, match="same number of elements"):
        BF.put(x, torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(IndexError, match="out of range"):
        BF.put(x, torch.tensor([12]), torch.ones(1))
    with pytest.raises(RuntimeError, match="dtype"):
        BF.put(x, torch.tensor([0]), torch.ones(1, dtype=D))


def test_a_put_that_keeps_the_overwritten_gradient_is_caught(monkeypatch):
    """The checks can fail: ∂C/∂x with the written positions not zeroed."""
    def wrong(delta, index, src_shape, accumulate, need):
        return delta, delta.take(index).reshape(src_shape)
    monkeypatch.setattr(indexing, "put_bwd", wrong)
    x, src = randn64(3, 4, seed=9), randn64(2)
    assert not gradcheck(lambda a, s: PutFunction.apply(a, torch.tensor([1, 6]), s, False,
                                                        False), (x, src), raise_exception=False)


# ---------------------------------------------------------------- positions of a view
@pytest.mark.parametrize("view", [
    lambda b: b[1:3], lambda b: b[:, 1::2], lambda b: b[2], lambda b: b.t()[1:, :2],
    lambda b: b[..., 3], lambda b: b.unsqueeze(0)[:, 1:, 2:], lambda b: b[:, 1:][1:, 1:],
])
@pytest.mark.parametrize("layout", ["contiguous", "column-major", "offset"])
def test_positions_read_the_view_off_its_base(view, layout):
    full = torch.arange(40.0).reshape(5, 8)
    if layout == "contiguous":
        base = full[:, :5].contiguous()  # (5, 5)
    elif layout == "column-major":  # a tensor that is no view, laid out by columns
        base = torch.empty_strided((5, 5), (1, 5))
        base.copy_(full[:, :5])
    else:  # a tensor that is no view and starts inside its storage
        base = torch.empty(0).set_(torch.arange(60.0).untyped_storage(), 15, (5, 5), (5, 1))
    v = view(base)
    b = base if v._base is None else v._base
    torch.testing.assert_close(b.reshape(-1)[positions(b, v)], v)


# ---------------------------------------------------------------- routed in-place writes
WRITES = {
    "view.zero_()": lambda b, x, w: b[1:3].zero_(),
    "view += x": lambda b, x, w: b[:, 1:].__iadd__(x[:, 1:]),
    "x[i:j, k:] += x (Python's three calls)": None,
    "x[i] = tensor": lambda b, x, w: b.__setitem__(0, w * 2),
    "x[::2] = number": lambda b, x, w: b.__setitem__(slice(None, None, 2), 1.5),
    "x[bool mask] = tensor": lambda b, x, w: b.__setitem__(b.detach() > 0, x[b.detach() > 0]),
    "x[index tensor] = row": lambda b, x, w: b.__setitem__(torch.tensor([3, 1]), w),
    "view.mul_(x)": lambda b, x, w: b[:, 2].mul_(x[:, 0]),
    "view.div_(x)": lambda b, x, w: b[1:, 1].div_(x[1:, 0].exp()),
    "view.copy_(x)": lambda b, x, w: b[:, :3].copy_(x[:, 3:]),
    "view.fill_(tensor)": lambda b, x, w: b[2].fill_(w[1]),
    "view.sub_(x, alpha)": lambda b, x, w: b[:2].sub_(x[2:], alpha=0.5),
    "view of a view.add_(x)": lambda b, x, w: b[1:][:, ::2].add_(w[::2]),
    "tensor.mul_(number)": lambda b, x, w: b.mul_(3.0),
}


class Writes(nn.Module):
    """b = bias.clone(), one write into it (or into a view of it), then a product."""

    def __init__(self, write):
        super().__init__()
        self.write = write
        self.w = nn.Parameter(torch.randn(6, dtype=D))
        self.bias = nn.Parameter(torch.randn(4, 6, dtype=D))

    def forward(self, x):
        b = self.bias.clone()
        if self.write is None:
            b[1:3, 2:] += x[:2, 2:] * self.w[2:]
        else:
            self.write(b, x, self.w)
        return torch.tanh(b) * x


@pytest.mark.parametrize("name", WRITES)
def test_a_routed_in_place_write_equals_torch_and_is_bptorchs(name):
    torch.manual_seed(10)
    model, x = Writes(WRITES[name]), randn64(4, 6)
    g = torch.randn(4, 6, dtype=D)
    out = model(x)
    theirs = torch.autograd.grad(out, [x, *model.parameters()], g, allow_unused=True)
    routing.install(model)
    found = routing.coverage(model, x, grad_outputs=[g], verbose=False)
    torch.testing.assert_close(found.output, out)
    for t, p in zip(theirs, [x, *model.parameters()]):
        if t is None:  # a parameter this write does not use
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, t)
    assert found.complete, found.report()
    assert found.bptorch["PutFunction"] >= 1 and not found.fallbacks


def test_without_routing_the_write_is_torchs_copy_slices():
    model, x = Writes(WRITES["view.zero_()"]), randn64(4, 6, seed=11)
    found = routing.coverage(model, x, verbose=False)
    assert found.torch["CopySlices"] == 1 and not found.complete


def test_a_routed_write_with_create_graph_equals_torch():
    torch.manual_seed(12)
    model, x = Writes(None), randn64(4, 6)
    g = torch.randn(4, 6, dtype=D)
    theirs = torch.autograd.grad(model(x), [x, model.w], g, create_graph=True)
    routing.install(model)
    ours = torch.autograd.grad(model(x), [x, model.w], g, create_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert type(ours[1].grad_fn).__name__ != "CopySlices"
    same_grads((ours[0] ** 2).sum() + ours[1].sum(), (theirs[0] ** 2).sum() + theirs[1].sum(),
                [x, model.w])


def test_writes_under_torch_func_and_no_grad_stay_torchs_and_equal():
    torch.manual_seed(13)
    model, x = Writes(None), torch.randn(4, 6, dtype=D)
    theirs = torch.func.grad(lambda v: model(v).sum())(x)
    routing.install(model)
    torch.testing.assert_close(torch.func.grad(lambda v: model(v).sum())(x), theirs)
    with torch.no_grad():
        out = model(x)
    assert out.grad_fn is None


def test_writing_a_view_that_overlaps_the_written_one_reads_the_old_values():
    """x[1:] = x[:-1] shifts by one (torch refuses the overlap; the routed write clones)."""
    a = randn64(5, seed=14)

    class Shift(nn.Module):
        def forward(self, v):
            b = v * 1.0
            b[1:] = b[:-1]
            return b

    out = routing.install(Shift())(a)
    torch.testing.assert_close(out, torch.cat([a[:1], a[:-1]]))
    same_grads(out, torch.cat([a[:1], a[:-1]]), [a])


def test_a_write_into_a_custom_functions_view_is_left_to_torch():
    """einsum's output is a view of a tensor its forward made: writing through that base
    would cut the gradient, so the mode leaves the call to torch (which says so)."""
    a, b = randn64(2, 3, seed=15), randn64(3, 4)

    class Einsum(nn.Module):
        def forward(self, u, v):
            c = torch.einsum("ij,jk->ik", u, v)
            c[0].zero_()
            return c

    model = routing.install(Einsum())
    try:
        out = model(a, b)
    except RuntimeError as e:  # torch's own rule for a custom Function's view
        assert "view" in str(e)
    else:
        same_grads(out, torch.einsum("ij,jk->ik", a, b) * torch.tensor([[0.0], [1.0]],
                                                                        dtype=D), [a, b])


# ---------------------------------------------------------------- the models' patterns
class CosineAttention(nn.Module):
    """swin_v2's attention: the key bias zeroed in a clone, F.normalize of q and k, a
    clamped and exponentiated logit scale (torchvision's shifted_window_attention)."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))

    def forward(self, x):
        B, N, C = x.shape
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        bias[length:2 * length].zero_()
        qkv = TF.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = TF.normalize(q, dim=-1) @ TF.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=4.6).exp()
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


class SliceAdds(nn.Module):
    """mvit's: a relative-position term added into a slice of the attention logits, and
    the residual added into all but the class token."""

    def __init__(self, dim=6):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = torch.matmul(q, k.transpose(1, 2))
        attn[:, 1:, 1:] += torch.einsum("bnc,mc->bnm", q[:, 1:, :4], self.rel)
        out = torch.matmul(attn.softmax(-1), v)
        out[:, 1:, :] += q[:, 1:, :]
        return out


@pytest.mark.parametrize("make,shape", [(CosineAttention, (2, 5, 8)), (SliceAdds, (2, 5, 6))])
def test_the_models_patterns_convert_equal_torch_and_are_complete(make, shape):
    torch.manual_seed(16)
    model = make().to(D)
    x = randn64(*shape)
    g = torch.randn(*shape, dtype=D)
    out = model(x)
    theirs = torch.autograd.grad(out, [x, *model.parameters()], g)
    ours_model = from_torch_nn(model, strict=True)
    found = routing.coverage(ours_model, x, grad_outputs=[g], verbose=False)
    torch.testing.assert_close(found.output, out)
    for t, p in zip(theirs, [x, *ours_model.parameters()]):
        torch.testing.assert_close(p.grad, t)
    assert found.complete, found.report()


# ---------------------------------------------------------------- in-place layers on a view
@pytest.mark.parametrize("layer", [lambda: nn.Dropout(0.4, inplace=True),
                                   lambda: nn.ReLU(inplace=True),
                                   lambda: nn.Dropout1d(0.4, inplace=True)],
                         ids=["Dropout", "ReLU", "Dropout1d"])
def test_an_in_place_layer_on_a_slice_writes_through_put_as_torch(layer):
    """mvit's head: x[:, 0] then Dropout(inplace=True). The twin overwrites the slice (the
    base holds the result, as torch's leaves it) and the graph has PutFunction where torch
    has CopySlices around the layer's node."""
    torch.manual_seed(17)
    x = randn64(3, 4, 5)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5).to(D)
            self.drop = layer()

        def forward(self, v):
            h = self.lin(v)
            out = self.drop(h[:, 1])
            return h * 2.0, out

    model = Head()
    torch.manual_seed(18)
    h_t, out_t = model(x)
    g = [torch.randn_like(h_t), torch.randn_like(out_t)]
    theirs = torch.autograd.grad([h_t, out_t], [x, *model.parameters()], g)
    ours = from_torch_nn(model, strict=True)
    torch.manual_seed(18)
    found = routing.coverage(ours, x, grad_outputs=g, verbose=False)
    for a, b in zip(found.output, (h_t, out_t)):  # h too: its slice was overwritten
        torch.testing.assert_close(a, b)
    for t, p in zip(theirs, [x, *ours.parameters()]):
        torch.testing.assert_close(p.grad, t)
    assert found.complete and found.bptorch["PutFunction"] == 1, found.report()


def test_a_routed_write_into_a_parameter_raises_torchs_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4, dtype=D))

        def forward(self, v):
            self.w[0] = v
            return self.w

    with pytest.raises(RuntimeError, match="leaf Variable"):
        routing.install(Bad())(randn64(4))


def test_put_in_place_forward_mode_equals_torchs():
    import torch.autograd.forward_ad as fwAD
    x, s = torch.randn(3, 4, dtype=D), torch.randn(2, dtype=D)
    tx, ts, index = torch.randn(3, 4, dtype=D), torch.randn(2, dtype=D), torch.tensor([1, 6])
    tangents = []
    with fwAD.dual_level():
        for put_ in (BF.put_, torch.Tensor.put_):
            a, b = fwAD.make_dual(x.clone(), tx.clone()), fwAD.make_dual(s, ts)
            tangents.append(fwAD.unpack_dual(put_(a * 1.0, index, b)).tangent)
    torch.testing.assert_close(*tangents)
