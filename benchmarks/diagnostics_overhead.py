"""What the diagnostics hook costs when it is off: one chapter-1 epoch, with and without it.

    python -m benchmarks.diagnostics_overhead --repeats 7

Times ``Network([784, 30, 10]).update_mini_batch`` over one epoch of random images
(50,000, mini-batch 10, η = 3.0) twice: with ``Network._backward`` as it is, and with a
copy of it compiled from its own source minus the hook (the ``diagnostics.active()``
read and the ``record_delta`` call under it). The two run interleaved (alternating which goes first), from the same
weights, on the same data; the medians and their ratio are printed and returned.
"""
from __future__ import annotations

import argparse
import inspect
import re
import statistics
import textwrap
import time
import timeit

import torch

import bptorch.network as network_module
from bptorch import Network, cli


def without_hook(fn):
    """``fn`` recompiled from its source with the hook cut out: the
    ``if diagnostics.active():`` block, or ``flag = diagnostics.active()`` and ``if flag:``."""
    lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
    headers = {"if diagnostics.active():"}
    out, skip_indent = [], None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if line.strip() and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        flag = re.match(r"\s*(\w+) = diagnostics\.active\(\)", line)
        if flag:
            headers.add(f"if {flag.group(1)}:")
            continue
        if line.split("#")[0].strip() in headers:
            skip_indent = indent
            continue
        out.append(line)
    src = "\n".join(out)
    if "diagnostics" in src or len(out) == len(lines):
        raise RuntimeError("could not cut the diagnostics hook out of " + fn.__qualname__)
    namespace: dict = {}
    exec(compile(src, inspect.getsourcefile(fn), "exec"), vars(network_module), namespace)
    return namespace[fn.__name__]


class NetworkWithoutHook(Network):
    _backward = without_hook(Network._backward)


def epoch_seconds(net: Network, x, labels, batch_size: int, eta: float) -> float:
    n = x.shape[0]
    start = time.perf_counter()
    for k in range(0, n, batch_size):
        net.update_mini_batch(x[k:k + batch_size], labels[k:k + batch_size], eta, 0.0, n)
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics_overhead",
                                description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=cli.positive_int, default=7)
    p.add_argument("--n", type=cli.positive_int, default=50_000)
    p.add_argument("--batch-size", type=cli.positive_int, default=10)
    p.add_argument("--threads", type=cli.thread_count, default=1,
                   help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = torch.rand(args.n, 784)
    labels = torch.randint(0, 10, (args.n,))
    with_hook = Network([784, 30, 10], init="large")
    no_hook = NetworkWithoutHook([784, 30, 10], init="large")
    no_hook.load_state_dict(with_hook.state_dict())
    times: dict[str, list[float]] = {"as_is": [], "hook_removed": []}
    epoch_seconds(with_hook, x[:5000], labels[:5000], args.batch_size, 3.0)  # warm-up
    epoch_seconds(no_hook, x[:5000], labels[:5000], args.batch_size, 3.0)
    for r in range(args.repeats):
        order = [("as_is", with_hook), ("hook_removed", no_hook)]
        for name, net in order if r % 2 == 0 else order[::-1]:
            times[name].append(epoch_seconds(net, x, labels, args.batch_size, 3.0))
    med = {k: statistics.median(v) for k, v in times.items()}
    # The same cost, bottom-up: one `if diagnostics.active():` per layer per mini-batch.
    check = timeit.repeat("if diagnostics.active(): pass", globals=vars(network_module),
                          number=1_000_000, repeat=5)
    per_check = min(check) / 1_000_000
    n_checks = (args.n // args.batch_size) * 2  # at most one per layer per step
    print(f"one `if diagnostics.active()`: {per_check * 1e9:.0f} ns; x {n_checks} (at most) "
          f"= {per_check * n_checks * 1e3:.2f} ms, {per_check * n_checks / med['hook_removed']:.2e}"
          " of an epoch")
    ratio = med["as_is"] / med["hook_removed"]
    paired = statistics.median(a / b for a, b in zip(times["as_is"], times["hook_removed"]))
    for k, v in times.items():
        print(f"{k:>13}: median {med[k]:.3f} s  (" + " ".join(f"{t:.3f}" for t in v) + ")")
    print(f"ratio as_is / hook_removed: {ratio:.4f}  ({args.repeats} interleaved repeats, "
          f"{args.threads} thread(s), torch {torch.__version__}); median of paired "
          f"ratios {paired:.4f}")
    return {"times": times, "median": med, "ratio": ratio, "paired_ratio": paired, "check_seconds": per_check}


if __name__ == "__main__":
    main()
