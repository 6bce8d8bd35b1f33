"""``experiments.mnist --distributed`` in 2 gloo processes: with --batch-size 5 per rank,
every step sees the same 10 rows as a single process with --batch-size 10, so the
histories match (the book's m = 10, split over two ranks)."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from experiments import mnist as cli

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo not available")
ARGS = ["--train-size", "1000", "--epochs", "2", "--seed", "3", "--no-progress"]


def _worker(rank: int, world: int, port: int, engine: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), BPTORCH_OFFLINE="1")
    torch.set_num_threads(1)
    results = cli.main(ARGS + ["--engine", engine, "--distributed", "--batch-size", "5",
                               "--json", f"{out}.rank{rank}.json"])
    if rank != 0:  # only rank 0 writes files
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(results["history"], f)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("engine", ["explicit", "autograd"])
def test_distributed_cli_matches_single_process(mnist, tmp_path, engine):
    out = str(tmp_path / engine)
    mp.spawn(_worker, args=(2, _free_port(), engine, out), nprocs=2, join=True)
    rank0 = json.loads(open(f"{out}.rank0.json").read())
    rank1 = json.loads(open(f"{out}.rank1.json").read())
    assert rank0["config"]["world_size"] == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = cli.main(ARGS + ["--engine", engine, "--batch-size", "10"])
    finally:
        torch.set_num_threads(threads)
    for key in ("test_accuracy", "validation_accuracy"):
        assert rank0["history"][key] == pytest.approx(single["history"][key], abs=2e-4)
        assert rank1[key] == rank0["history"][key]  # every rank holds the same weights
