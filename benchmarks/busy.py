"""A ch1 epoch on a busy CPU: the thread policy (bptorch.threads) against 2 threads.

    python -m benchmarks.busy                 # 20,000 MNIST images, 3 rounds (~2-5 min)
    python -m benchmarks.busy --quick         # 5,000 images, 1 round
    python -m benchmarks.busy --crossover     # where a second thread starts to pay

The Quickstart's job, ``python -m experiments.mnist --preset ch1``, one epoch of its
explicit engine (``experiments.mnist.train_epoch``: ``Network([784, 30, 10])``, quadratic
cost, N(0, 1) init, ``update_mini_batch`` with η = 3.0, m = 10) on the first ``--images``
MNIST training images, timed

* **quiet**: on the machine as it is (say what else was running when you quote it);
* **busy**: while ``--hogs`` (default 2) pure-Python busy-loop processes
  (``while time.time() < deadline: pass``) occupy the cores; the script starts them
  before each busy epoch and kills them after it (each also stops by itself after
  ``--hog-seconds``),

once with the policy's thread count (``bptorch.threads.choose_threads`` for this step:
1) and once with 2 threads, interleaved over ``--rounds`` rounds. It prints a markdown
table of median epoch seconds and the busy/quiet ratio; the target is at most 2.5× with
the policy. ``--crossover`` instead times one ``update_mini_batch`` step with 1 and 2
threads over a grid of nets and batch sizes, next to the policy's choice for each.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import time
from typing import Iterator

import torch
import torch.nn.functional as F

import bptorch
from bptorch import Network, cli
from bptorch.threads import available_cores, choose_threads, mlp_step_flops, set_threads

BUSY_LOOP = ("import sys, time\n"
             "end = time.time() + float(sys.argv[1])\n"
             "while time.time() < end: pass\n")
SIZES, BATCH, ETA = [784, 30, 10], 10, 3.0


@contextlib.contextmanager
def busy_cores(hogs: int, seconds: float, new_session: bool = False) -> Iterator[None]:
    """Run ``hogs`` busy-loop processes for the block (each ends itself after ``seconds``).

    With ``new_session`` they run in their own session: under Linux's autogroup scheduling
    (``/proc/sys/kernel/sched_autogroup_enabled``) that makes them compete with this
    process as other programs would, rather than share this session's CPU share with it.
    """
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(seconds)],
                              start_new_session=new_session)
             for _ in range(hogs)]
    try:
        time.sleep(0.3)  # let them start spinning before the clock starts
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from bptorch.data import load_mnist

    x, labels = load_mnist().train
    x, labels = x[:n], labels[:n]
    return x, F.one_hot(labels, 10).to(x.dtype)


def ch1_epoch(x: torch.Tensor, y: torch.Tensor, threads: int, seed: int) -> float:
    """Seconds for one explicit-engine ch1 epoch at ``threads`` intra-op threads."""
    from experiments.mnist import train_epoch

    torch.manual_seed(seed)
    net = Network(SIZES, "sigmoid", "quadratic", "large")
    set_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    train_epoch(net, "explicit", x, y, BATCH, ETA, 0.0, gen)
    return time.perf_counter() - start


def epochs_table(args: argparse.Namespace) -> str:
    x, y = load_images(args.images)
    policy = choose_threads(mlp_step_flops(SIZES, BATCH), rows=BATCH)
    counts = {name: n for name, n in (("policy", policy), ("2 threads", 2))
              if args.only in (None, name.split()[0])}
    times: dict[tuple[str, str], list[float]] = {}
    ch1_epoch(x[:1000], y[:1000], policy, args.seed)  # warm-up
    for r in range(args.rounds):
        for state in ("quiet", "busy"):
            with busy_cores(args.hogs, args.hog_seconds, args.new_session) if state == "busy" \
                    else contextlib.nullcontext():
                for name, n in counts.items():
                    s = ch1_epoch(x, y, n, args.seed)
                    times.setdefault((name, state), []).append(s)
                    print(f"round {r}, {state}, {name} ({n}): {s:.3f} s", file=sys.stderr,
                          flush=True)
    rows = ["| threads | count | quiet s/epoch | busy s/epoch | busy/quiet |",
            "|---|---:|---:|---:|---:|"]
    for name, n in counts.items():
        quiet = statistics.median(times[(name, "quiet")])
        busy = statistics.median(times[(name, "busy")])
        rows.append(f"| {name} | {n} | {quiet:.3f} | {busy:.3f} | **{busy / quiet:.2f}x** |")
    if len(counts) == 2:
        base = statistics.median(times[("policy", "quiet")])
        two = [statistics.median(times[("2 threads", state)]) / base
               for state in ("quiet", "busy")]
        rows.append(f"\n2 threads against the policy's quiet epoch: {two[0]:.2f}x quiet, "
                    f"{two[1]:.2f}x busy.")
    return "\n".join(rows)


def step_seconds(net: Network, x, y, threads: int, reps: int) -> float:
    set_threads(threads)
    net.update_mini_batch(x, y, 0.1, 0.0, 50_000)
    start = time.perf_counter()
    for _ in range(reps):
        net.update_mini_batch(x, y, 0.1, 0.0, 50_000)
    return (time.perf_counter() - start) / reps


def crossover_table(args: argparse.Namespace) -> str:
    rows = ["| net | batch | MFLOP/step | 1 thread µs | 2 threads µs | 2/1 (median of rounds) "
            "| policy |", "|---|---:|---:|---:|---:|---:|---:|"]
    grid = [([784, 30, 10], b) for b in (10, 32, 64, 128, 256)] + \
           [([784, 100, 10], b) for b in (10, 16, 32, 64, 128)] + \
           [([784, 1024, 1024, 10], b) for b in (10, 128)]
    for sizes, m in grid:
        torch.manual_seed(args.seed)
        net = Network(sizes, "sigmoid", "cross_entropy", "scaled")
        x, y = torch.rand(m, sizes[0]), F.one_hot(torch.randint(0, 10, (m,)), 10).float()
        flops = mlp_step_flops(sizes, m)
        reps = max(3, min(200, int(2e8 / flops)))
        one, two, ratios = [], [], []
        for _ in range(3 if args.quick else 7):  # 1 2 1 2 ...: drift hits both alike
            one.append(step_seconds(net, x, y, 1, reps))
            two.append(step_seconds(net, x, y, 2, reps))
            ratios.append(two[-1] / one[-1])
        rows.append(f"| {sizes} | {m} | {flops / 1e6:.2f} | {statistics.median(one) * 1e6:.0f} "
                    f"| {statistics.median(two) * 1e6:.0f} | {statistics.median(ratios):.2f} "
                    f"| {choose_threads(flops, rows=m, max_threads=2)} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.busy",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5,000 images, 1 round")
    ap.add_argument("--images", type=cli.positive_int,
                    help="training images per epoch (default 20,000)")
    ap.add_argument("--rounds", type=cli.positive_int, help="interleaved rounds (default 3)")
    ap.add_argument("--hogs", type=cli.non_negative_int, default=2,
                    help="busy-loop processes (default 2)")
    ap.add_argument("--hog-seconds", type=cli.positive_float, default=300.0,
                    help="each busy loop ends itself after this long (default 300)")
    ap.add_argument("--new-session", action="store_true",
                    help="start the busy loops in their own session (autogroup: they then "
                         "compete as other programs would, not inside this one's share)")
    ap.add_argument("--crossover", action="store_true",
                    help="time a step with 1 and 2 threads instead (the policy's border)")
    ap.add_argument("--only", choices=["policy", "2"],
                    help="time only the policy's count, or only 2 threads (on a busy machine "
                         "a 2-thread epoch can take 100x longer)")
    ap.add_argument("--seed", type=cli.non_negative_int, default=0)
    ap.add_argument("--out", type=cli.output_path(".md"), help="also write the markdown here")
    return ap


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    args.images = args.images or (5_000 if args.quick else 20_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    os.environ.setdefault("BPTORCH_OFFLINE", "1")

    previous = torch.get_num_threads()
    load = os.getloadavg()
    t0 = time.perf_counter()
    try:
        table = crossover_table(args) if args.crossover else epochs_table(args)
    finally:
        torch.set_num_threads(previous)
    cmd = " ".join(["python -m benchmarks.busy",
                    *(argv if argv is not None else sys.argv[1:])])
    what = ("one update_mini_batch step, 1 vs 2 threads" if args.crossover else
            f"ch1 epoch, explicit engine, {args.images:,} MNIST images, m = {BATCH}, "
            f"median of {args.rounds} round(s); busy = {args.hogs} busy-loop processes"
            f"{' in their own session' if args.new_session else ' in this session'}")
    md = (f"`{cmd}`, {time.perf_counter() - t0:.0f} s: {what}. {os.cpu_count()} CPUs "
          f"({available_cores()} for the policy), load average at start "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, torch {torch.__version__}, "
          f"bptorch {bptorch.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}.\n\n{table}\n")
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    return md


if __name__ == "__main__":
    main()
