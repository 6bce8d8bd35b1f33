"""bptorch.curvature's second round of families: Conv1d and Conv3d (all four quantities),
the Kronecker factors of a grouped convolution (per group) and of an Embedding (as the
one-hot Linear's / kernel-1 Conv1d's), against the float64 brute force of
tests/test_curvature.py (GGN = Σ_n J_nᵀ H_n J_n by torch.func) and against BackPACK
where it has the layer (Conv1d, Conv3d, and the one-hot Linear and Conv1d an Embedding
is), at non-square shapes, under both reductions, for cross-entropy and MSE."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bptorch.curvature as curvature
from bptorch.convert import from_torch_nn
from test_curvature import D, NAMES, _activations, _backpack, _collect, _loss_fn, _target
from test_curvature import assert_like_backpack, brute_ggn

N = 5


def _noisy(model: nn.Module, g: torch.Generator) -> nn.Module:
    model = model.to(D)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=D))
    return model


def _case(name: str):
    """(torch model, x) for one case, float64, non-square; 5 examples, 4 outputs."""
    g = torch.Generator().manual_seed(13)
    if name in ("conv1d", "conv1d_pool"):  # stride, padding, dilation
        head = [nn.Flatten(), nn.Linear(4 * 5, 4)]
        if name == "conv1d_pool":  # a pool between (BackPACK's Kronecker factors have none)
            head = [nn.MaxPool1d(2, ceil_mode=True), nn.Flatten(), nn.Linear(4 * 3, 4)]
        model = nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Tanh(),
                              nn.Conv1d(3, 4, 2, dilation=2, padding=1), nn.ReLU(), *head)
        x = torch.randn(N, 2, 9, generator=g, dtype=D)
    elif name == "conv1d_grouped":  # groups, and "same" with an even kernel
        model = nn.Sequential(nn.Conv1d(4, 6, 3, groups=2, padding=1), nn.Tanh(),
                              nn.Conv1d(6, 4, 2, groups=2, padding="same"), nn.Sigmoid(),
                              nn.Flatten(), nn.Linear(4 * 7, 4))
        x = torch.randn(N, 4, 7, generator=g, dtype=D)
    elif name == "conv2d_grouped":  # three groups, stride and dilation
        model = nn.Sequential(nn.Conv2d(3, 6, (2, 3), groups=3, stride=(1, 2),
                                        dilation=(2, 1), padding=1), nn.Tanh(),
                              nn.Flatten(), nn.Linear(6 * 5 * 3, 4))
        x = torch.randn(N, 3, 5, 6, generator=g, dtype=D)
    elif name == "conv3d":  # groups in the first, stride and padding per dim
        model = nn.Sequential(nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1),
                                        groups=2), nn.Tanh(),
                              nn.Conv3d(4, 2, 2), nn.Flatten(), nn.Linear(2 * 3 * 1 * 4, 4))
        x = torch.randn(N, 2, 3, 5, 4, generator=g, dtype=D)
    elif name == "conv3d_plain":  # BackPACK's Kronecker factors: no groups
        model = nn.Sequential(nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1)),
                              nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 2 * 5, 4))
        x = torch.randn(N, 2, 3, 5, 4, generator=g, dtype=D)
    elif name == "first_pool":  # conv → σ → max pool at the bottom (S kept at the winners),
        # overlapping windows with ceil_mode, then again in the middle
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                              nn.MaxPool2d(3, stride=2, ceil_mode=True),
                              nn.Conv2d(3, 4, 2), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4 * 1 * 2, 4))
        x = torch.randn(N, 1, 7, 10, generator=g, dtype=D)
    elif name == "first_pool_grouped":  # the same with groups, 1-d
        model = nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Sigmoid(), nn.MaxPool1d(2),
                              nn.Flatten(), nn.Linear(4 * 3, 4))
        x = torch.randn(N, 2, 8, generator=g, dtype=D)
    else:
        raise KeyError(name)
    return _noisy(model, g), x


def _patches(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """(N·P, C·K) the unfolded input of ``conv`` (no groups), by Tensor.unfold, each
    position a row: the reference for A."""
    d = x.dim() - 2
    k, s, dil = conv.kernel_size, conv.stride, conv.dilation
    if conv.padding == "same":
        total = [di * (ki - 1) for ki, di in zip(k, dil)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in conv.padding]
    x = F.pad(x, [v for pair in reversed(pads) for v in pair])
    for i in range(d):  # the taps of dim i, dil apart: a window of dil·(k−1)+1, every dil
        x = x.unfold(2 + i, dil[i] * (k[i] - 1) + 1, s[i])[..., ::dil[i]]
    # (N, C, *out, *k) → (N, *out, C, *k)
    x = x.permute(0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))
    return x.reshape(-1, x[(0,) * (1 + d)].numel())


def _check_kflr(model, got, ggn, acts, x):
    """Each convolution's kflr: the bias's [G] its GGN block; the weight's G per group
    the diagonal blocks of that, A per group the unfolded input's Σ a aᵀ / N."""
    for name, conv in model.named_modules():
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        g = conv.groups
        w, b = got[f"{name}.weight"], got[f"{name}.bias"]
        gb = ggn[f"{name}.bias"]
        torch.testing.assert_close(b.kflr[0], gb, msg=f"{name}: bias G")
        G, A = w.kflr
        inp = acts[name]
        o, c = conv.out_channels // g, conv.in_channels // g
        if g == 1:
            G, A = G[None], A[None]
        assert G.shape == (g, o, o) and A.shape == (g, c * w[0, 0].numel(), c * w[0, 0].numel())
        for j in range(g):
            torch.testing.assert_close(G[j], gb[j * o:(j + 1) * o, j * o:(j + 1) * o],
                                       msg=f"{name}: G of group {j}")
            a = _patches(inp[:, j * c:(j + 1) * c], conv)
            torch.testing.assert_close(A[j], a.t() @ a / N, msg=f"{name}: A of group {j}")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("case", ["conv1d_pool", "conv1d_grouped", "conv2d_grouped", "conv3d",
                                  "first_pool", "first_pool_grouped"])
def test_conv_against_brute_force(case, loss, reduction):
    """Conv1d/2d/3d with and without groups: diag_ggn_exact is the GGN's diagonal, kflr's
    factors as :func:`_check_kflr`; the gradient is the plain one."""
    model, x = _case(case)
    y, loss_fn = _target(loss), _loss_fn(loss, reduction)
    ggn = brute_ggn(model, x, y, loss_fn)
    twin = from_torch_nn(model, strict=True)
    got = _collect(twin, x, y, loss_fn, "diag_ggn_exact", "kflr")
    model.zero_grad()
    loss_fn(model(x), y).backward()
    for (name, p), q in zip(got.items(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=f"{case} {name}: .grad")
        torch.testing.assert_close(p.diag_ggn_exact, ggn[name].diagonal().reshape(p.shape),
                                   msg=f"{case} {name}: diag_ggn_exact")
    _check_kflr(model, got, ggn, _activations(model, x), x)


def test_grouped_kfac_is_kflr_in_expectation():
    """The Monte-Carlo G of a grouped convolution (many columns) approaches kflr's, per
    group; A is kflr's (no sampling)."""
    model, x = _case("conv1d_grouped")
    y, loss_fn = _target("ce"), _loss_fn("ce", "mean")
    got = _collect(from_torch_nn(model, strict=True), x, y, loss_fn, "kflr", "kfac",
                   "diag_ggn_exact", "diag_ggn_mc", mc_samples=3000)
    for name, p in got.items():
        for u, v in zip(p.kfac, p.kflr):
            torch.testing.assert_close(u, v, rtol=0.1, atol=0.03 * v.abs().max().item())
        ref = p.diag_ggn_exact
        torch.testing.assert_close(p.diag_ggn_mc, ref, rtol=0.1, atol=0.03 * ref.max().item())
    torch.testing.assert_close(got["0.weight"].kfac[1], got["0.weight"].kflr[1], rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("case", ["conv1d", "conv3d_plain", "first_pool"])
def test_conv_against_backpack(case, loss, reduction):
    """Conv1d and Conv3d: every name BackPACK computes, the Monte-Carlo ones from the same
    seeded draws."""
    model, x = _case(case)
    y, loss_fn = _target(loss), _loss_fn(loss, reduction)
    twin = from_torch_nn(model, strict=True)
    for name in NAMES:
        got = [getattr(p, name) for p in _collect(twin, x, y, loss_fn, name, seed=4).values()]
        want = _backpack(model, x, y, _loss_fn(loss, reduction), name, seed=4)
        assert_like_backpack(got, want, f"{case} {name}")


# ---------------------------------------------------------------- Embedding's factors
V, DIM, T = 9, 3, 3


class Embedded(nn.Module):
    """Embedding (V, DIM) on (N, T) indices, flattened, then a Linear: the model."""

    def __init__(self, padding_idx=None, t=T):
        super().__init__()
        self.emb, self.out = nn.Embedding(V, DIM, padding_idx=padding_idx), nn.Linear(t * DIM, 4)

    def forward(self, idx):
        return self.out(self.emb(idx).flatten(1))


class OneHot(nn.Module):
    """The same map on one-hot inputs (N, V, T): a kernel-1 Conv1d (V → DIM, weight the
    embedding's transposed, a zero bias), then the same Linear. The padding index's
    one-hot is the zero vector (its row takes no gradient)."""

    def __init__(self, model: Embedded, t=T):
        super().__init__()
        self.conv = nn.Conv1d(V, DIM, 1).to(D)
        self.out = nn.Linear(t * DIM, 4).to(D)
        with torch.no_grad():
            self.conv.weight.copy_(model.emb.weight.t()[:, :, None])
            self.conv.bias.zero_()
            self.out.load_state_dict(model.out.state_dict())

    def forward(self, x):
        return self.out(self.conv(x).transpose(1, 2).flatten(1))


def _one_hot(idx, padding_idx):
    x = F.one_hot(idx, V).to(D)  # (N, T, V)
    if padding_idx is not None:
        x = x * (idx != padding_idx)[..., None]
    return x.transpose(1, 2)  # (N, V, T)


def _embedding_case(padding_idx, t=T):
    g = torch.Generator().manual_seed(17)
    model = _noisy(Embedded(padding_idx, t), g)
    if padding_idx is not None:
        with torch.no_grad():
            model.emb.weight[padding_idx] = 0  # as torch's init: the one-hot's zero input
    idx = torch.tensor([[1, 3, 3], [2, 8, 0], [5, 1, 5], [7, 3, 2], [4, 4, 4]])[:, :t]
    return model, idx


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_kflr_against_one_hot_brute_force(padding_idx, loss, reduction):
    """An Embedding's kflr: G the GGN block of the one-hot conv's bias (Σ_t s_t, as a
    Conv1d's), A = Σ_{n,t} e_i e_iᵀ / N the one-hot inputs' second moment (the padding
    index's zero input left out); diag_ggn_exact the one-hot weight's GGN diagonal."""
    model, idx = _embedding_case(padding_idx)
    y, loss_fn = _target(loss), _loss_fn(loss, reduction)
    onehot, x = OneHot(model), _one_hot(idx, padding_idx)
    torch.testing.assert_close(onehot(x), model(idx))
    ggn = brute_ggn(onehot, x, y, loss_fn)
    got = _collect(from_torch_nn(model, strict=True), idx, y, loss_fn, "diag_ggn_exact",
                   "kflr")
    w = got["emb.weight"]
    G, A = w.kflr
    torch.testing.assert_close(G, ggn["conv.bias"])
    a = x.transpose(1, 2).reshape(-1, V)
    torch.testing.assert_close(A, a.t() @ a / N)
    torch.testing.assert_close(w.diag_ggn_exact,
                               ggn["conv.weight"].diagonal().reshape(DIM, V).t())
    if padding_idx is not None:
        assert A[padding_idx, padding_idx] == 0 and w.diag_ggn_exact[padding_idx].eq(0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("t", [1, T])
def test_embedding_kron_against_backpack(t, loss, reduction):
    """kflr and kfac of an Embedding equal BackPACK's for the equivalent one-hot layer
    (the same seeded draws for kfac): one index per example (a Linear(V, DIM, bias=False)
    on one-hot rows) and T indices (a kernel-1 Conv1d over the T positions, its output
    flattened channel-major, so the Linear after it takes its columns permuted)."""
    model, idx = _embedding_case(None, t)
    y, loss_fn = _target(loss), _loss_fn(loss, reduction)
    twin = from_torch_nn(model, strict=True)
    head = nn.Linear(t * DIM, 4).to(D)
    with torch.no_grad():  # head's column d·T + τ is the model's column τ·DIM + d
        head.weight.copy_(model.out.weight.reshape(4, t, DIM).transpose(1, 2).reshape(4, -1))
        head.bias.copy_(model.out.bias)
    if t == 1:
        first = nn.Linear(V, DIM, bias=False).to(D)
        first.weight.data.copy_(model.emb.weight.t())
        ref, x = nn.Sequential(first, head), F.one_hot(idx[:, 0], V).to(D)
    else:
        first = nn.Conv1d(V, DIM, 1, bias=False).to(D)
        first.weight.data.copy_(model.emb.weight.t()[:, :, None])
        ref, x = nn.Sequential(first, nn.Flatten(), head), _one_hot(idx, None)
    torch.testing.assert_close(ref(x), model(idx))
    for name in ("kflr", "kfac"):
        got = _collect(twin, idx, y, loss_fn, name, seed=6)["emb.weight"]
        want = _backpack(ref, x, y, _loss_fn(loss, reduction), name, seed=6)[0]
        assert len(getattr(got, name)) == len(want) == 2
        for u, v in zip(getattr(got, name), want):
            torch.testing.assert_close(u, v, msg=name)


# ---------------------------------------------------------------- what still raises
def test_transposed_convolution_still_raises():
    """A layer outside the covered families (here ConvTranspose1d) names itself."""
    model = nn.Sequential(nn.ConvTranspose1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 6, 4)).to(D)
    twin = from_torch_nn(model, strict=True)
    x, y = torch.randn(N, 2, 4, dtype=D), _target("ce")
    with pytest.raises(NotImplementedError, match="ConvTranspose1d '0'.*not covered"):
        _collect(twin, x, y, _loss_fn("ce", "mean"), "kfac")


def test_chunked_diagonal_equals_one_pass(monkeypatch):
    """The convolution's diagonal taken a few columns at a time (a small CHUNK) is the
    one-pass value."""
    model, x = _case("conv1d_grouped")
    y, loss_fn = _target("ce"), _loss_fn("ce", "sum")
    twin = from_torch_nn(model, strict=True)
    once = {k: p.diag_ggn_exact for k, p in
            _collect(twin, x, y, loss_fn, "diag_ggn_exact").items()}
    monkeypatch.setattr(curvature, "CHUNK", 1)
    for k, p in _collect(twin, x, y, loss_fn, "diag_ggn_exact").items():
        torch.testing.assert_close(p.diag_ggn_exact, once[k])


class Residual(nn.Module):
    """h = tanh(W1 x); r = relu(W2 h) + h; out = W3 tanh(r): S splits at the sum and both
    branches scale it by their σ' (the walk's in-place σ' must not touch the other's)."""

    def __init__(self):
        super().__init__()
        import bptorch.nn as bnn
        self.l1, self.l2, self.l3 = bnn.Linear(4, 5), bnn.Linear(5, 5), bnn.Linear(5, 3)
        self.tanh, self.relu, self.out_tanh = bnn.Tanh(), bnn.ReLU(), bnn.Tanh()

    def forward(self, x):
        h = self.tanh(self.l1(x))
        return self.l3(self.out_tanh(self.relu(self.l2(h)) + h))


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_residual_split_against_brute_force(loss):
    torch.manual_seed(5)
    model = Residual().to(D)
    x = torch.randn(N, 4, dtype=D)
    y = torch.randint(0, 3, (N,)) if loss == "ce" else torch.randn(N, 3, dtype=D)
    loss_fn = _loss_fn(loss, "mean")
    ggn = brute_ggn(model, x, y, loss_fn)
    got = _collect(model, x, y, loss_fn, "diag_ggn_exact", "kflr")
    for name, p in got.items():
        torch.testing.assert_close(p.diag_ggn_exact, ggn[name].diagonal().reshape(p.shape),
                                   msg=name)
        if name.endswith("bias"):
            torch.testing.assert_close(p.kflr[0], ggn[name], msg=name)
