"""bptorch.curvature through bptorch.extensions.collect: diag_ggn_exact, diag_ggn_mc, kflr
and kfac against a float64 brute force (per-example Jacobians by torch.func, GGN = Σ_n
J_nᵀ H_n J_n) and against BackPACK's own outputs (the Monte-Carlo ones from the same
seeded draws), at non-square shapes, under both reductions, for cross-entropy and MSE;
and the errors it owes."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev, vmap

import bptorch.curvature as curvature
import bptorch.nn as bnn
from bptorch.convert import from_torch_nn
from bptorch.extensions import collect, network_quantities
from bptorch.functions.base import PER_EXAMPLE
from bptorch.network import Network

D = torch.float64
NAMES = ("diag_ggn_exact", "diag_ggn_mc", "kflr", "kfac")


class Mean(nn.Module):
    def forward(self, x):
        return x.mean(1)


def _case(name: str):
    """(torch model, x) for one family, float64, non-square; 5 examples, 4 outputs."""
    g = torch.Generator().manual_seed(11)
    n = 5
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3), nn.Sigmoid(),
                              nn.Linear(3, 4))
        x = torch.randn(n, 6, generator=g)
    elif name == "conv":  # stride, padding, dilation; a pool and a flatten between
        model = nn.Sequential(
            nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), nn.Tanh(),
            nn.Conv2d(3, 4, 2, padding=(0, 1)), nn.ReLU(), nn.MaxPool2d((1, 2)),
            nn.Flatten(), nn.Linear(4 * 3 * 3, 4))
        x = torch.randn(n, 2, 7, 5, generator=g)
    elif name == "grouped":  # groups and "same": the diagonals (BackPACK's KFAC has no groups)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(),
                              nn.Conv2d(4, 6, (2, 3), groups=2, padding="same"), nn.Tanh(),
                              nn.Flatten(), nn.Linear(6 * 4 * 3, 4))
        x = torch.randn(n, 2, 4, 3, generator=g)
    elif name in ("embedding", "embedding_flat"):  # an index used twice by one example
        model = nn.Sequential(nn.Embedding(9, 3), Mean(), nn.Linear(3, 4))
        if name == "embedding_flat":  # BackPACK's modules: Flatten, not a mean
            model = nn.Sequential(nn.Embedding(9, 3), nn.Flatten(), nn.Linear(9, 4))
        x = torch.tensor([[1, 3, 3], [2, 8, 0], [5, 1, 5], [7, 3, 2], [4, 4, 4]])
    else:
        raise KeyError(name)
    model = model.to(D)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=D))
    return model, (x.to(D) if x.is_floating_point() else x)


def _target(loss: str, n: int = 5):
    g = torch.Generator().manual_seed(3)
    if loss == "ce":
        return torch.randint(0, 4, (n,), generator=g)
    return torch.randn(n, 4, generator=g, dtype=D)


def _loss_fn(loss: str, reduction: str) -> nn.Module:
    return (nn.CrossEntropyLoss if loss == "ce" else nn.MSELoss)(reduction=reduction)


def brute_ggn(model, x, y, loss_fn) -> dict[str, torch.Tensor]:
    """The exact GGN block of each parameter, (|p|, |p|): Σ_n J_nᵀ H_n J_n with J_n the
    per-example Jacobian of the output (torch.func) and H_n the Hessian of example n's
    share of the batch loss (1/N of its own loss under reduction="mean")."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = model(x).detach()
    n = x.shape[0]

    def f(p, xn):
        return functional_call(model, p, (xn[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # name -> (N, C, *shape)
    scale = 1.0 / n if loss_fn.reduction == "mean" else 1.0
    hess = torch.stack([hessian(lambda o: loss_fn(o[None], y[i:i + 1]))(out[i]) * scale
                        for i in range(n)])  # (N, C, C)
    ggn = {}
    for name, j in jac.items():
        j = j.reshape(n, out.shape[1], -1)  # (N, C, |p|)
        ggn[name] = torch.einsum("nci,ncd,ndj->ij", j, hess, j)
    return ggn


def _collect(twin, x, y, loss_fn, *names, seed=0, mc_samples=1):
    twin.zero_grad()
    torch.manual_seed(seed)
    with collect(twin, *names, loss_fn=loss_fn, mc_samples=mc_samples):
        loss_fn(twin(x), y).backward()
    return dict(twin.named_parameters())


def _activations(model, x):
    """The input of each parametrised layer, by name prefix (forward hooks: test only)."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].detach()))
             for k, m in model.named_modules() if list(m.parameters(recurse=False))]
    model(x)
    for h in hooks:
        h.remove()
    return seen


# ---------------------------------------------------------------- the brute force
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("case", ["mlp", "conv", "grouped", "embedding", "embedding_flat"])
def test_exact_against_brute_force(case, loss, reduction):
    """diag_ggn_exact is the GGN's diagonal; kflr's G is the bias's GGN block (for a
    convolution too: G sums over positions first, as the bias's Jacobian does) and A the
    input's second moment Σ a aᵀ / N."""
    model, x = _case(case)
    y, loss_fn = _target(loss), _loss_fn(loss, reduction)
    ggn = brute_ggn(model, x, y, loss_fn)
    twin = from_torch_nn(model, strict=True)
    kron = case in ("mlp", "conv")
    names = ("diag_ggn_exact", "kflr") if kron else ("diag_ggn_exact",)
    got = _collect(twin, x, y, loss_fn, *names)
    model.zero_grad()
    loss_fn(model(x), y).backward()
    acts = _activations(model, x)
    for (name, p), q in zip(got.items(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=f"{case} {name}: .grad")
        torch.testing.assert_close(p.diag_ggn_exact, ggn[name].diagonal().reshape(p.shape),
                                   msg=f"{case} {name}: diag_ggn_exact")
        if not kron or "bias" in name:
            continue
        bias = name.replace("weight", "bias")
        g, a = p.kflr
        torch.testing.assert_close(g, ggn[bias], msg=f"{case} {name}: kflr G")
        torch.testing.assert_close(got[bias].kflr[0], ggn[bias])
        inp = acts[name.rsplit(".", 1)[0]]
        if inp.dim() == 4:  # the unfolded patches, positions as rows
            conv = dict(model.named_modules())[name.rsplit(".", 1)[0]]
            inp = nn.functional.unfold(inp, conv.kernel_size, conv.dilation, conv.padding,
                                       conv.stride).transpose(1, 2).reshape(-1, p[0].numel())
        torch.testing.assert_close(a, inp.t() @ inp / x.shape[0], msg=f"{case} {name}: kflr A")


def test_mc_expectation_is_the_exact_value():
    """E[s sᵀ] = H: with many Monte-Carlo columns diag_ggn_mc and kfac's G approach the
    exact ones (a wrong scale or sample would not)."""
    model, x = _case("mlp")
    y, loss_fn = _target("ce"), _loss_fn("ce", "mean")
    twin = from_torch_nn(model, strict=True)
    got = _collect(twin, x, y, loss_fn, "diag_ggn_exact", "diag_ggn_mc", "kflr", "kfac",
                   mc_samples=4000)
    for name, p in got.items():
        ref = p.diag_ggn_exact
        torch.testing.assert_close(p.diag_ggn_mc, ref, rtol=0.1, atol=0.02 * ref.max().item())
        torch.testing.assert_close(p.kfac[0], p.kflr[0], rtol=0.1,
                                   atol=0.02 * p.kflr[0].abs().max().item())
        if "weight" in name:
            torch.testing.assert_close(p.kfac[1], p.kflr[1])  # A: no sampling


def test_dense_and_a_second_collection():
    """bptorch's fused Dense (σ inside the Function): the columns go through σ' there."""
    torch.manual_seed(0)
    twin = bnn.Sequential(bnn.Dense(5, 6, "tanh"), bnn.Dense(6, 4, "sigmoid"),
                          bnn.Linear(4, 3)).to(D)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Sigmoid(),
                          nn.Linear(4, 3)).to(D)
    with torch.no_grad():
        for p, q in zip(twin.parameters(), model.parameters()):
            q.copy_(p)
    x, y = torch.randn(7, 5, dtype=D), torch.randint(0, 3, (7,))
    loss_fn = nn.CrossEntropyLoss()
    ggn = brute_ggn(model, x, y, loss_fn)
    for _ in range(2):  # a second collection starts afresh
        got = _collect(twin, x, y, loss_fn, "diag_ggn_exact", "kflr")
        for (name, p), ref in zip(got.items(), ggn.values()):
            torch.testing.assert_close(p.diag_ggn_exact, ref.diagonal().reshape(p.shape))
            if "bias" in name:
                torch.testing.assert_close(p.kflr[0], ref)


@pytest.mark.parametrize("cost", ["log_likelihood", "quadratic", "cross_entropy"])
def test_network_engine(cost):
    """The explicit engine: network_quantities from its cost, equal to the brute force
    of the same net as torch layers (its cost as the batch mean)."""
    torch.manual_seed(1)
    net = Network([6, 5, 4], activation="tanh", cost=cost, dtype=D)
    x = torch.randn(7, 6, dtype=D)
    out_act = nn.Softmax(1) if cost == "log_likelihood" else nn.Sigmoid()
    body = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).to(D)
    with torch.no_grad():
        for (k, p), q in zip(net.named_parameters(), body.parameters()):
            q.copy_(p)
    if cost == "quadratic":  # the loss on a^L = σ(z^L): the σ belongs to the net
        model, loss = nn.Sequential(body, out_act), (lambda a, y: 0.5 * (a - y).square().sum())
    elif cost == "cross_entropy":  # the logits form: BCE on z^L
        model = body
        loss = (lambda z, y: nn.functional.binary_cross_entropy_with_logits(
            z, y, reduction="sum"))
    else:
        model, loss = body, (lambda z, y: nn.functional.cross_entropy(z, y, reduction="sum"))
    loss_fn = type("L", (), {"reduction": "mean", "__call__": lambda self, o, y: loss(o, y)})()
    y = torch.rand(7, 4, dtype=D) if cost != "log_likelihood" else torch.randint(0, 4, (7,))
    ggn = brute_ggn(model, x, y, loss_fn)
    net.backprop(x, y)
    network_quantities(net, x, "diag_ggn_exact", "kflr")
    for (name, p), ref in zip(net.named_parameters(), ggn.values()):
        torch.testing.assert_close(p.diag_ggn_exact, ref.diagonal().reshape(p.shape), msg=name)
        if name.endswith("bias"):
            torch.testing.assert_close(p.kflr[0], ref, msg=name)


# ---------------------------------------------------------------- BackPACK's own outputs
backpack = pytest.importorskip("backpack")


def assert_like_backpack(got: list, want: list, tag: str) -> None:
    """Each parameter's quantity equal to BackPACK's: a tensor, or a list of Kronecker
    factors (kflr/kfac) compared factor by factor."""
    assert len(got) == len(want), tag
    for i, (a, b) in enumerate(zip(got, want)):
        if isinstance(b, list):
            assert isinstance(a, list) and len(a) == len(b), (tag, i)
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, msg=f"{tag} #{i}")
        else:
            torch.testing.assert_close(a, b, msg=f"{tag} #{i}")


def _backpack(model, x, y, loss_fn, name, seed):
    from backpack.extensions import KFAC, KFLR, DiagGGNExact, DiagGGNMC
    ext = {"diag_ggn_exact": DiagGGNExact, "diag_ggn_mc": DiagGGNMC, "kflr": KFLR,
           "kfac": KFAC}[name]
    model, loss_fn = backpack.extend(model), backpack.extend(loss_fn)
    model.zero_grad()
    torch.manual_seed(seed)
    with backpack.backpack(ext()):
        loss_fn(model(x), y).backward()
    return [getattr(p, name) for p in model.parameters()]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("case", ["mlp", "conv", "embedding_flat"])
def test_against_backpack(case, loss, reduction):
    """Every name BackPACK computes for the case, the Monte-Carlo ones from the same
    seeded draws (bptorch draws as BackPACK does)."""
    model, x = _case(case)
    y, loss_fn = _target(loss), _loss_fn(loss, reduction)
    names = NAMES
    if case == "embedding_flat":  # BackPACK's Embedding: float32 only, no Kronecker factors
        model, y, names = model.float(), y if loss == "ce" else y.float(), names[:2]
    twin = from_torch_nn(model, strict=True)
    for name in names:
        got = [getattr(p, name) for p in _collect(twin, x, y, loss_fn, name, seed=4).values()]
        want = _backpack(model, x, y, _loss_fn(loss, reduction), name, seed=4)
        assert_like_backpack(got, want, f"{case} {name}")


# ---------------------------------------------------------------- unchanged outside, errors
def test_backward_unchanged_outside_collect():
    model, x = _case("conv")
    y, loss_fn = _target("ce"), _loss_fn("ce", "mean")
    twin = from_torch_nn(model, strict=True)
    _collect(twin, x, y, loss_fn, *NAMES)
    assert not PER_EXAMPLE
    assert not loss_fn._forward_hooks  # the loss's reader is gone
    twin.zero_grad()
    model.zero_grad()
    g = torch.randn(5, 4, dtype=D)
    twin(x).backward(g)
    model(x).backward(g)
    for p, q in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


class Head(nn.Module):
    """A parametrised layer bptorch's second-order quantities do not cover, in between."""

    def __init__(self, layer):
        super().__init__()
        self.body, self.layer = bnn.Linear(4, 6).to(D), layer.to(D)
        self.out = bnn.Linear(6, 3).to(D)

    def forward(self, x):
        return self.out(self.layer(self.body(x)))


@pytest.mark.parametrize("layer,word", [
    (bnn.LayerNorm(6), "LayerNorm 'layer'"),
    (bnn.BatchNorm1d(6).eval(), "BatchNorm1d 'layer'"),
    (nn.Linear(6, 6), "torch's own autograd"),
    (bnn.PReLU(6), "torch's own autograd|not covered"),
])
def test_uncovered_layers_raise(layer, word):
    model = Head(layer)
    x, y = torch.randn(5, 4, dtype=D), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(NotImplementedError, match=word):
        with collect(model, "diag_ggn_exact", loss_fn=loss_fn):
            loss_fn(model(x), y).backward()
    assert not PER_EXAMPLE


def test_uncovered_settings_raise():
    """Grouped convolutions and Embeddings have Kronecker factors now
    (tests/test_curvature2.py); a Linear on (N, T, d) input and scale_grad_by_freq still
    have none."""
    y, loss_fn = torch.randint(0, 4, (5,)), nn.CrossEntropyLoss()
    seq = bnn.Sequential(bnn.Linear(3, 4), Mean()).to(D)  # Linear on (N, T, d): no factors
    with pytest.raises(NotImplementedError, match="2-d"):
        _collect(seq, torch.randn(5, 2, 3, dtype=D), y, loss_fn, "kflr")
    emb, idx = _case("embedding")
    emb[0].scale_grad_by_freq = True
    twin = from_torch_nn(emb, strict=True)
    with pytest.raises(NotImplementedError, match="scale_grad_by_freq"):
        _collect(twin, idx, y, loss_fn, "diag_ggn_exact")
    assert not PER_EXAMPLE


def test_missing_loss_raises():
    lin = bnn.Linear(3, 4).to(D)
    x, y = torch.randn(5, 3, dtype=D), torch.randint(0, 4, (5,))
    with pytest.raises(ValueError, match="need the loss: pass loss_fn="):
        with collect(lin, "diag_ggn_exact"):
            pass
    with pytest.raises(ValueError, match="cannot read the loss L1Loss"):
        with collect(lin, "kfac", loss_fn=nn.L1Loss()):
            pass
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum', got 'none'"):
        with collect(lin, "kfac", loss_fn=nn.CrossEntropyLoss(reduction="none")):
            pass
    with pytest.raises(ValueError, match="logits=True"):
        with collect(lin, "kfac", loss_fn=bnn.LogLikelihoodCost()):
            pass
    with pytest.raises(NotImplementedError, match="class weights"):
        with collect(lin, "kfac", loss_fn=nn.CrossEntropyLoss(weight=torch.ones(4))):
            pass
    loss_fn = nn.CrossEntropyLoss()  # given, but not called on the output in the block
    with pytest.raises(ValueError, match="loss_fn was not called inside the collect"):
        with collect(lin, "diag_ggn_exact", loss_fn=loss_fn):
            nn.functional.cross_entropy(lin(x), y).backward()
    assert not PER_EXAMPLE


@pytest.mark.parametrize("cost", ["quadratic", "sigmoid"])
def test_bptorch_costs(cost):
    """bptorch's own costs: QuadraticCost (H = I/N) and CrossEntropyCost(logits=True)
    (H = diag σ(1 − σ)/N), against the brute force."""
    torch.manual_seed(2)
    twin = bnn.Sequential(bnn.Linear(5, 6), bnn.Tanh(), bnn.Linear(6, 4)).to(D)
    x, y = torch.randn(7, 5, dtype=D), torch.rand(7, 4, dtype=D)
    loss_fn = bnn.QuadraticCost() if cost == "quadratic" else bnn.CrossEntropyCost(logits=True)
    ggn = brute_ggn(twin, x, y, loss_fn)
    got = _collect(twin, x, y, loss_fn, "diag_ggn_exact", "kflr")
    for name, p in got.items():
        torch.testing.assert_close(p.diag_ggn_exact, ggn[name].diagonal().reshape(p.shape))


def test_a_broken_square_root_is_caught(monkeypatch):
    """The check rejects cross-entropy's S without its off-diagonal term −p√pᵀ."""
    model, x = _case("mlp")
    y, loss_fn = _target("ce"), _loss_fn("ce", "mean")
    ggn = brute_ggn(model, x, y, loss_fn)
    right = curvature.sqrt_hessian

    def diagonal_only(kind, reduction, f):
        s = right(kind, reduction, f)
        p = torch.softmax(f, 1)
        return torch.diag_embed(p.sqrt(), dim1=0, dim2=2) / (5 ** 0.5) + 0 * s

    monkeypatch.setattr(curvature, "sqrt_hessian", diagonal_only)
    got = _collect(from_torch_nn(model, strict=True), x, y, loss_fn, "diag_ggn_exact")
    p = got["4.weight"]
    assert not torch.allclose(p.diag_ggn_exact, ggn["4.weight"].diagonal().reshape(p.shape))


def test_several_samples_and_the_last_loss_call():
    """mc_samples=M draws as BackPACK's DiagGGNMC(mc_samples=M); a loss called twice
    before one backward counts once, the last call."""
    from backpack.extensions import DiagGGNMC
    model, x = _case("mlp")
    y, loss_fn = _target("ce"), _loss_fn("ce", "mean")
    twin = from_torch_nn(model, strict=True)
    got = _collect(twin, x, y, loss_fn, "diag_ggn_mc", seed=9, mc_samples=3)
    ext_model, ext_loss = backpack.extend(model), backpack.extend(_loss_fn("ce", "mean"))
    torch.manual_seed(9)
    with backpack.backpack(DiagGGNMC(mc_samples=3)):
        ext_loss(ext_model(x), y).backward()
    for p, q in zip(got.values(), ext_model.parameters()):
        torch.testing.assert_close(p.diag_ggn_mc, q.diag_ggn_mc)
    once = {k: p.diag_ggn_exact for k, p in _collect(twin, x, y, loss_fn,
                                                     "diag_ggn_exact").items()}
    twin.zero_grad()
    with collect(twin, "diag_ggn_exact", loss_fn=loss_fn):
        loss_fn(twin(x[:3]), y[:3])  # a first call, not backpropagated
        loss_fn(twin(x), y).backward()
    for k, p in twin.named_parameters():
        torch.testing.assert_close(p.diag_ggn_exact, once[k])
