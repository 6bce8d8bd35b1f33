"""bptorch.threads: the thread policy picks 1 thread for the book's steps, more only for
large steps on cores that exist; set_threads changes and restores; import leaves torch alone."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bptorch
from bptorch.threads import (FLOPS_PER_THREAD, MIN_ROWS, available_cores, choose_threads,
                             count_flops, mlp_step_flops, set_threads, threads_arg,
                             using_threads)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield previous
    torch.set_num_threads(previous)


def test_one_thread_at_the_books_batch_10():
    for sizes in ([784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10]):
        assert choose_threads(mlp_step_flops(sizes, 10), rows=10, max_threads=16) == 1, sizes
    # the rows rule alone: any amount of work in 10-row GEMMs stays on one thread
    assert choose_threads(1e12, rows=MIN_ROWS - 1, max_threads=16) == 1


def test_more_threads_only_for_large_steps():
    small = mlp_step_flops([784, 30, 10], 64)  # 6.1 MFLOP: below two threads' worth
    large = mlp_step_flops([784, 1024, 1024, 10], 1024)
    assert choose_threads(small, rows=64, max_threads=8) == 1
    assert choose_threads(large, rows=1024, max_threads=8) == 8
    assert choose_threads(mlp_step_flops([784, 30, 10], 128), rows=128, max_threads=8) == 2
    assert choose_threads(large, rows=1024, max_threads=1) == 1
    # exactly at the border: two threads need 2 * FLOPS_PER_THREAD
    assert choose_threads(2 * FLOPS_PER_THREAD - 1, rows=MIN_ROWS, max_threads=8) == 1
    assert choose_threads(2 * FLOPS_PER_THREAD, rows=MIN_ROWS, max_threads=8) == 2


def test_cores_and_omp_num_threads_cap_the_count(monkeypatch):
    large = mlp_step_flops([784, 1024, 1024, 10], 1024)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()
    assert cores == len(os.sched_getaffinity(0))
    assert choose_threads(large, rows=1024) == cores  # more than 1 only where cores allow
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1 and choose_threads(large, rows=1024) == 1


def test_bad_arguments_are_refused(restore_threads):
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite flops >= 0"):
            choose_threads(bad)
    with pytest.raises(ValueError, match="max_threads >= 1"):
        choose_threads(1e9, max_threads=0)
    with pytest.raises(ValueError, match="needs flops="):
        set_threads("auto")
    for bad in (0, -2, "two", 2.0, True):
        with pytest.raises(ValueError, match="thread count >= 1"):
            set_threads(bad)
    assert threads_arg("auto") == "auto" and threads_arg("3") == 3
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            threads_arg(bad)


def test_set_threads_changes_and_restores_torchs_count(restore_threads):
    previous = restore_threads
    other = 2 if previous != 2 else 3
    assert set_threads(other) == other == torch.get_num_threads()
    assert set_threads("auto", flops=mlp_step_flops([784, 30, 10], 10), rows=10) == 1
    assert torch.get_num_threads() == 1
    assert set_threads(previous) == previous == torch.get_num_threads()


def test_using_threads_restores_even_after_an_error(restore_threads):
    previous = restore_threads
    other = 2 if previous != 2 else 3
    with using_threads(other) as n:
        assert n == other == torch.get_num_threads()
    assert torch.get_num_threads() == previous
    with pytest.raises(RuntimeError, match="boom"):
        with using_threads(other):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == previous


def test_import_bptorch_leaves_torchs_thread_count_alone():
    """In a fresh process: a count set before the import, and torch's own default, survive
    ``import bptorch`` and every submodule and experiment script the package ships."""
    code = (
        "import sys, torch\n"
        "default = torch.get_num_threads()\n"
        "import bptorch, bptorch.threads, bptorch.nn, bptorch.functional, bptorch.network\n"
        "import experiments.mnist, experiments.conv_mnist, experiments.saturation\n"
        "assert torch.get_num_threads() == default, (torch.get_num_threads(), default)\n"
        "torch.set_num_threads(3)\n"
        "import importlib; importlib.reload(bptorch); importlib.reload(bptorch.threads)\n"
        "assert torch.get_num_threads() == 3, torch.get_num_threads()\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_mlp_step_flops_is_what_torch_counts():
    for sizes, m in (([784, 30, 10], 10), ([7, 5, 4, 3], 6)):
        net = bptorch.Network(sizes, cost="cross_entropy")
        x, y = torch.rand(m, sizes[0]), torch.randint(0, sizes[-1], (m,))
        assert count_flops(lambda: net.loss(x, y).backward()) == mlp_step_flops(sizes, m)
    layers = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2))
    x = torch.rand(4, 6, requires_grad=True)  # the input needs a δ too: BP2 at layer 1
    assert count_flops(lambda: layers(x).sum().backward()) == \
        mlp_step_flops([6, 5, 2], 4, grad_input=True)


def test_conv_step_work_is_what_torch_counts():
    from bptorch import nn as bnn
    from experiments import conv_mnist as exp

    for preset in ("simple", "dropout"):
        c = exp.resolve_config(exp.build_parser().parse_args(["--preset", preset]))
        net, cost = exp.build_net(c, bnn), exp.cost_fn("bptorch")
        x, y = torch.rand(c["batch_size"], 1, 28, 28), torch.randint(0, 10, (c["batch_size"],))
        flops, rows = exp.step_work(c)
        assert count_flops(lambda: cost(net(x), y).backward()) == flops, preset
        assert rows == c["batch_size"] * 24 * 24


def test_count_flops_leaves_the_rng_where_it_was():
    drop = torch.nn.Dropout(0.5)
    state = torch.get_rng_state()
    count_flops(lambda: drop(torch.ones(100)))
    assert torch.equal(torch.get_rng_state(), state)


_SATURATION = ["--epochs", "2"]
_VANISHING = ["--n-images", "50", "--epochs", "1", "--activations", "sigmoid", "--init-seeds",
              "1", "--no-progress"]
_CONV = ["--epochs", "0", "--no-progress"]  # evaluates 20,000 images: the slow one, run once


@pytest.mark.parametrize("script, argv, threads", [
    ("saturation", _SATURATION, "auto"), ("saturation", _SATURATION, "2"),
    ("vanishing", _VANISHING, "auto"), ("vanishing", _VANISHING, "2"),
    ("conv_mnist", _CONV, "auto"),
])
def test_every_experiment_records_its_thread_count(mnist, tmp_path, script, argv, threads,
                                                   restore_threads):
    exp = importlib.import_module(f"experiments.{script}")
    torch.set_num_threads(1)
    out = tmp_path / "r.json"
    exp.main(argv + ["--threads", threads, "--json", str(out)])
    config = json.loads(out.read_text())["config"]
    assert config["threads"] == threads_arg(threads)
    if threads != "auto":
        want = int(threads)
    elif script == "saturation":  # one neuron
        want = choose_threads(mlp_step_flops([1, 1], 1), rows=1)
    elif script == "vanishing":  # full batch of 50 images, the largest net
        want = choose_threads(max(mlp_step_flops(s, 50) for s in exp.NETS), rows=50)
    else:
        want = choose_threads(*exp.step_work(config))
    assert config["torch_threads"] == want
    assert torch.get_num_threads() == 1  # the script gave torch its count back
