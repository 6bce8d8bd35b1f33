"""Data-parallel training over ``torch.distributed``, for the explicit engine.

The autograd path needs nothing from here: wrap the model in
``torch.nn.parallel.DistributedDataParallel`` and its hooks all-reduce ``.grad``.
``Network.backprop`` and ``Network.update_mini_batch`` run no autograd, so DDP's
hooks never fire; these helpers do the same by hand. With equal shards of m rows on
each of R ranks, the batch-mean gradient of the union of the shards is the mean of
the ranks' batch-mean gradients:

    ∂C/∂W = (1/(R m)) Σ_x ∂C_x/∂W = (1/R) Σ_r ∂C^{(r)}/∂W

so the reduction is an average, not a sum. A training loop under ``torchrun``::

    rank, world = init_from_env()                 # reads RANK, WORLD_SIZE, MASTER_ADDR/PORT
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)     # the same seed on every rank
        for idx in shard(perm, rank, world).split(m):
            net.zero_grad(); net.backprop(x[idx], y[idx])
            all_reduce_grads(net)                 # now every rank holds the same grads
            opt.step()
    # or, with the fused engine: net.update_mini_batch(...) then average_parameters(net)
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in RANK/WORLD_SIZE/MASTER_*.

    Returns ``(rank, world_size)``; ``(0, 1)`` without initialising anything when
    WORLD_SIZE is unset or 1, so the same script runs alone. ``backend`` defaults to
    "nccl" when CUDA is present, else "gloo".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def shard(perm: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's equal share of an epoch's permutation: ``perm[rank::world_size]``,
    cut to ``len(perm) // world_size`` rows so every rank takes the same number of steps
    (and the all-reduce average stays the mean over the union)."""
    per_rank = len(perm) // world_size
    return perm[rank::world_size][:per_rank]


def all_reduce_grads(module: nn.Module, group=None) -> None:
    """Average every parameter's ``.grad`` over the ranks (after ``Network.backprop``).

    One flattened all-reduce for all the gradients, as DDP's buckets do.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    _all_reduce_mean(grads, group)


@torch.no_grad()
def average_parameters(module: nn.Module, group=None) -> None:
    """Average the parameters themselves over the ranks (after ``update_mini_batch``).

    Plain SGD with L2 decay is linear in the gradient, so averaging the updated
    weights of ranks that started equal gives the same step as averaging the grads.
    """
    _all_reduce_mean(list(module.parameters()), group)


def broadcast_parameters(module: nn.Module, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s parameters to every rank (start all ranks from one init)."""
    if _world(group) == 1:
        return
    for p in module.parameters():
        dist.broadcast(p.data, src, group=group)


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_mean(tensors: list[Tensor], group) -> None:
    world = _world(group)
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n
