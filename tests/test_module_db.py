"""PyTorch's own module tests' samples (``torch.testing._internal.common_modules.module_db``)
on every bptorch twin: for each sample, the twin built with the same constructor call as
torch.nn's (and torch's weights), the same input, train and eval: outputs, input gradients
and parameter gradients equal in float64, with a random upstream gradient."""
from __future__ import annotations

import copy

import pytest
import torch

import bptorch.nn as bnn
from bptorch.convert import from_torch_nn
from bptorch.routing import tensors_in

pytest.importorskip("expecttest")  # torch's testing internals need it (the test extra)
_frozen = torch.backends.flags_frozen()
common_modules = pytest.importorskip("torch.testing._internal.common_modules")
# importing torch's test internals freezes torch.backends' flags for the whole process
# (common_utils calls disable_global_flags); later tests (Opacus's embedding grad sampler
# sets cudnn flags) need them as they were
if not _frozen:
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True

D = torch.float64


def _twins():
    found = {}
    for info in common_modules.module_db:
        name = info.module_cls.__name__
        if getattr(torch.nn, name, None) is info.module_cls and isinstance(
                getattr(bnn, name, None), type) and name not in bnn.TORCH_REEXPORTS:
            found.setdefault(name, []).append(info)
    return found


TWINS = _twins()




def _leaves(x):
    """Fresh leaf copies of every tensor in x (floating ones requiring grad as before)."""
    if isinstance(x, torch.Tensor):
        y = x.detach().clone()
        return y.requires_grad_(x.requires_grad) if y.is_floating_point() else y
    if isinstance(x, dict):
        return {k: _leaves(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_leaves(v) for v in x)
    return copy.deepcopy(x)


def _ours(x):
    """A constructor argument for bptorch's twin: a torch.nn module in it (a
    TransformerEncoder's layer) is converted, as a script switched by its imports would
    have built it with bptorch.nn in the first place."""
    if isinstance(x, torch.nn.Module):
        return from_torch_nn(x)
    return x


def _run(cls, sample, training, weights=None):
    torch.manual_seed(0)
    c = sample.constructor_input
    args, kwargs = c.args, c.kwargs
    if cls.__module__.startswith("bptorch."):
        args, kwargs = [_ours(a) for a in args], {k: _ours(v) for k, v in kwargs.items()}
    m = cls(*args, **kwargs)
    m = m.to(D)  # floating parameters and buffers
    if weights is not None:
        m.load_state_dict(weights)
    m.train(training)
    args, kwargs = _leaves(sample.forward_input.args), _leaves(sample.forward_input.kwargs)
    torch.manual_seed(1)
    out = m(*args, **kwargs)
    outs = [o for o in tensors_in(out) if o.is_floating_point() and o.grad_fn is not None]
    g = torch.Generator().manual_seed(2)
    grads_out = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    ins = [t for t in tensors_in((args, kwargs)) if t.requires_grad]
    params = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad(outs, ins + params, grads_out, allow_unused=True) if outs else []
    return m, tensors_in(out), list(grads)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_module_db_samples(name):
    failures, n = [], 0
    for info in TWINS[name]:
        for training in ((True, False) if info.train_and_eval_differ else (True,)):
            samples = info.module_inputs_func(info, device="cpu", dtype=D, requires_grad=True,
                                              training=training)
            for i, sample in enumerate(samples):
                n += 1
                where = f"{info.name} sample {i} ({sample.desc or 'no desc'}), training={training}"
                try:
                    m_t, out_t, g_t = _run(info.module_cls, sample, training)
                    _, out_b, g_b = _run(getattr(bnn, name), sample, training,
                                         m_t.state_dict())
                    assert len(out_t) == len(out_b), "number of outputs"
                    for a, b in zip(out_b, out_t):
                        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, equal_nan=True)
                    assert len(g_t) == len(g_b), "number of gradients"
                    for a, b in zip(g_b, g_t):
                        assert (a is None) == (b is None), "a gradient is missing"
                        if a is not None:
                            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9,
                                                       equal_nan=True)
                except Exception as e:  # noqa: BLE001 - every failure, reported together
                    failures.append(f"{where}: {type(e).__name__}: {str(e)[:300]}")
    assert n > 0
    assert not failures, f"{len(failures)}/{n} samples fail:\n" + "\n".join(failures)
