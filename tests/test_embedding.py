"""Embedding: gradcheck/gradgradcheck in float64, agreement with torch.nn.Embedding under a
random upstream gradient (repeated indices, padding_idx, scale_grad_by_freq), the arguments
left out, bad indices, and a broken backward that the checks reject."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.functions.embedding import EmbeddingFunction

F64 = torch.float64


@pytest.mark.parametrize("padding_idx,scale", [(None, False), (2, False), (None, True), (0, True)],
                         ids=["plain", "padding", "freq", "padding-freq"])
def test_embedding_gradcheck(device, padding_idx, scale):
    w = torch.randn(7, 3, dtype=F64, device=device, requires_grad=True)
    idx = torch.tensor([[0, 2, 2, 5], [6, 0, 2, 1]], device=device)  # repeats and the padding row
    fn = lambda w: EmbeddingFunction.apply(idx, w, padding_idx, scale)  # noqa: E731
    if padding_idx is None and not scale:  # else not the true derivative, by design
        assert gradcheck(fn, (w,))
    assert gradgradcheck(fn, (w,))


@pytest.mark.parametrize("kw", [{}, {"padding_idx": 3}, {"padding_idx": -2},
                                {"scale_grad_by_freq": True},
                                {"padding_idx": 0, "scale_grad_by_freq": True}],
                         ids=["plain", "padding", "negative-padding", "freq", "padding-freq"])
def test_embedding_matches_torch(device, kw):
    torch.manual_seed(3)
    theirs = nn.Embedding(10, 4, device=device, **kw)
    torch.manual_seed(3)
    ours = bnn.Embedding(10, 4, device=device, **kw)
    torch.testing.assert_close(ours.weight, theirs.weight)  # same init, padding row zeroed
    assert ours.padding_idx == theirs.padding_idx
    idx = torch.randint(0, 10, (3, 5, 2), device=device)
    idx[0, 0] = 8  # make sure the padding row (3 or -2 = 8, or 0) is hit
    idx[1, 1, 1] = 3
    idx[2, 0, 0] = 0
    y1, y2 = ours(idx), theirs(idx)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    if "padding_idx" in kw:
        assert ours.weight.grad[ours.padding_idx].abs().sum() == 0
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def test_functional_and_pretrained_match_torch():
    w = torch.randn(6, 3, requires_grad=True)
    idx = torch.tensor([1, 5, 5, 0])
    torch.testing.assert_close(BF.embedding(idx, w, padding_idx=-1),
                               F.embedding(idx, w, padding_idx=-1))
    g = torch.randn(4, 3)
    (gw,) = torch.autograd.grad(BF.embedding(idx, w, -1), w, g)
    (gw2,) = torch.autograd.grad(F.embedding(idx, w, -1), w, g)
    torch.testing.assert_close(gw, gw2)
    table = torch.randn(4, 2)
    ours = bnn.Embedding.from_pretrained(table)
    assert not ours.weight.requires_grad
    torch.testing.assert_close(ours(torch.tensor([3, 1])), table[[3, 1]])
    frozen = bnn.Embedding(4, 2, _weight=table.clone(), _freeze=True)
    assert not frozen.weight.requires_grad


def test_arguments_left_out_and_bad_input():
    with pytest.raises(NotImplementedError, match="max_norm"):
        bnn.Embedding(5, 2, max_norm=1.0)
    with pytest.raises(NotImplementedError, match="sparse=True"):
        bnn.Embedding(5, 2, sparse=True)
    with pytest.raises(NotImplementedError, match="max_norm"):
        BF.embedding(torch.tensor([0]), torch.randn(5, 2), max_norm=1.0)
    emb = bnn.Embedding(5, 2)
    with pytest.raises(IndexError, match=r"\[0, 4\].*got values in \[0, 5\]"):
        emb(torch.tensor([0, 5]))
    with pytest.raises(IndexError, match=r"got values in \[-1, 2\]"):
        emb(torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="integer indices"):
        emb(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="padding_idx must lie in"):
        bnn.Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match="padding_idx must lie in"):
        bnn.Embedding(5, 2, padding_idx=-6)
    with pytest.raises(ValueError, match="_weight must have shape"):
        bnn.Embedding(5, 2, _weight=torch.randn(5, 3))


def test_broken_backward_is_rejected():
    """A backward that lets the padding row receive gradient is caught by the comparison
    with torch (gradcheck cannot see it: the true function has no padding)."""

    class Broken(EmbeddingFunction):
        @staticmethod
        def backward(ctx, grad_output):
            (idx,) = ctx.saved_tensors
            gw = grad_output.new_zeros(ctx.num_embeddings, grad_output.shape[-1])
            return None, gw.index_add(0, idx.flatten(), grad_output.reshape(-1, 2)), None, None

    w = torch.randn(5, 2, requires_grad=True)
    idx = torch.tensor([0, 1, 1, 4])
    g = torch.randn(4, 2)
    (ours,) = torch.autograd.grad(Broken.apply(idx, w, 1, False), w, g)
    (theirs,) = torch.autograd.grad(F.embedding(idx, w, 1), w, g)
    assert not torch.allclose(ours, theirs)


def test_compose_with_torch_func():
    from torch.func import grad, vmap

    w, idx = torch.randn(7, 3, dtype=F64), torch.tensor([[1, 2], [3, 1]])
    torch.testing.assert_close(grad(lambda w: BF.embedding(idx, w, 1).pow(2).sum())(w),
                               grad(lambda w: F.embedding(idx, w, 1).pow(2).sum())(w))
    torch.testing.assert_close(vmap(lambda i: BF.embedding(i, w))(idx), F.embedding(idx, w))


def test_signature_and_repr_are_torchs():
    import inspect

    ours = inspect.signature(bnn.Embedding.__init__).parameters.values()
    theirs = inspect.signature(nn.Embedding.__init__).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]
    for kw in ({}, {"padding_idx": -1}, {"scale_grad_by_freq": True}):
        assert repr(bnn.Embedding(5, 2, **kw)) == repr(nn.Embedding(5, 2, **kw))
