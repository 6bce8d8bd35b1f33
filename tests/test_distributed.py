"""Data parallel on the gloo backend, 2 processes on this machine: after one step every
rank holds the gradients (or parameters) of one process run on the union of the shards.

Three ways: DistributedDataParallel over a bptorch nn.Sequential (autograd path), the
explicit engine ``Network.backprop`` + ``bptorch.distributed.all_reduce_grads``, and the
fused ``update_mini_batch`` + ``average_parameters``. Equal shards, batch-mean costs:
the all-reduce averages.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bptorch
import bptorch.nn as bnn
from bptorch.distributed import (all_reduce_grads, average_parameters, init_from_env,
                                 shard)

WORLD = 2
SIZES = [12, 8, 5]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo not available")


def _sequential():
    return torch.nn.Sequential(bnn.Dense(12, 8, "tanh"), bnn.Dense(8, 5, "sigmoid"))


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert init_from_env("gloo") == (rank, world)
    data = torch.load(os.path.join(path, "data.pt"), weights_only=True)
    x, y, perm = data["x"], data["y"], data["perm"]
    idx = shard(perm, rank, world)
    out = {"idx": idx}
    # DDP over the autograd path
    model = _sequential()
    model.load_state_dict(data["seq"])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    bnn.CrossEntropyCost()(ddp(x[idx]), y[idx]).backward()
    out["ddp"] = [p.grad for p in model.parameters()]
    # the explicit engine: backprop, then average the grads
    net = bptorch.Network(SIZES, cost="cross_entropy")
    net.load_state_dict(data["net"])
    net.backprop(x[idx], y[idx])
    all_reduce_grads(net)
    out["engine"] = [p.grad for p in net.parameters()]
    # the fused engine: update, then average the parameters
    net.load_state_dict(data["net"])
    net.update_mini_batch(x[idx], y[idx], eta=0.5, lmbda=5.0, n=100)
    average_parameters(net)
    out["fused"] = [p.detach() for p in net.parameters()]
    torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    x, y = torch.randn(22, 12), torch.randint(0, 5, (22,))  # 22 rows: shard drops none
    data = {"x": x, "y": y, "perm": torch.randperm(22),
            "seq": _sequential().state_dict(),
            "net": bptorch.Network(SIZES, cost="cross_entropy").state_dict()}
    torch.save(data, path / "data.pt")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(path)), nprocs=WORLD, join=True)
    ranks = [torch.load(path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return data, ranks


def _union(data, ranks):
    idx = torch.cat([r["idx"] for r in ranks])
    assert sorted(idx.tolist()) == sorted(data["perm"].tolist())  # disjoint, complete
    return data["x"][idx], data["y"][idx]


def test_shard_is_equal_and_disjoint():
    perm = torch.randperm(23)
    parts = [shard(perm, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [7, 7, 7]
    assert len(set(torch.cat(parts).tolist())) == 21


def test_ddp_grads_equal_single_process(run):
    data, ranks = run
    x, y = _union(data, ranks)
    model = _sequential()
    model.load_state_dict(data["seq"])
    bnn.CrossEntropyCost()(model(x), y).backward()
    for r in ranks:
        for g, p in zip(r["ddp"], model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_engine_all_reduce_grads_equal_single_process(run):
    data, ranks = run
    x, y = _union(data, ranks)
    net = bptorch.Network(SIZES, cost="cross_entropy")
    net.load_state_dict(data["net"])
    net.backprop(x, y)
    for r in ranks:
        for g, p in zip(r["engine"], net.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_fused_average_parameters_equals_single_process(run):
    data, ranks = run
    x, y = _union(data, ranks)
    net = bptorch.Network(SIZES, cost="cross_entropy")
    net.load_state_dict(data["net"])
    net.update_mini_batch(x, y, eta=0.5, lmbda=5.0, n=100)
    for r in ranks:
        for q, p in zip(r["fused"], net.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
