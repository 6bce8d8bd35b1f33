"""Chapter 5's vanishing gradient: earlier hidden layers learn more slowly.

    python -m experiments.vanishing --json results/vanishing/vanishing.json \\
        --plot docs/img/vanishing_speed.png

The book measures the "speed of learning" of hidden layer l as ‖∂C/∂b^l‖, with C the
mean cross-entropy over the first 1,000 training images (its fig/generate_gradient.py:
the mean over those images of each δ^l_x = ∂C_x/∂b^l, then the norm). At the book's
initialisation (scaled: W ~ N(0, 1/n_in), b ~ N(0, 1)) it reports:

    [784, 30, 30, 10]            0.07   0.31
    [784, 30, 30, 30, 10]        0.012  0.060  0.283
    [784, 30, 30, 30, 30, 10]    0.003  0.017  0.070  0.285

then trains each net with full-batch steps on those 1,000 images (η = 0.1, λ = 5.0,
500 epochs) and plots the speeds per epoch. Here the same for sigmoid, ReLU and tanh
hidden layers (the output layer stays sigmoid), with the speeds read by
``bptorch.diagnostics``: ``measure`` at initialisation, ``record`` around each
``Network.update_mini_batch`` (whose δ^l come from the weights before the step).
One initialisation is noisy, so the initial speeds are also averaged over several seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

import bptorch
from bptorch import cli
from bptorch import Network
from bptorch.diagnostics import measure, record
from bptorch.threads import keep_threads, mlp_step_flops, set_threads
from experiments.mnist import markers, save_results

NETS = ([784, 30, 30, 10], [784, 30, 30, 30, 10], [784, 30, 30, 30, 30, 10])
BOOK_INITIAL_SPEED = {  # chapter 5, sigmoid hidden layers, one initialisation
    "[784, 30, 30, 10]": [0.07, 0.31],
    "[784, 30, 30, 30, 10]": [0.012, 0.060, 0.283],
    "[784, 30, 30, 30, 30, 10]": [0.003, 0.017, 0.070, 0.285],
}
DEFAULTS = dict(n_images=1000, epochs=500, eta=0.1, lmbda=5.0, cost="cross_entropy",
                init="scaled", activations=["sigmoid", "relu", "tanh"], init_seeds=5, seed=0,
                device="cpu", threads="auto")


def hidden_names(net: Network) -> list[str]:
    return [f"layers.{l}" for l in range(len(net.layers) - 1)]


def initial_speeds(net: Network, x, labels) -> tuple[list[float], list[float]]:
    """‖∂C/∂b^l‖ of each hidden layer for the mean cost over (x, labels), and for
    comparison the mean over images of the per-image ‖δ^l_x‖ (not the book's measure)."""
    stats = measure(net, x, labels)
    net.backprop(x, labels)  # for the per-image δ^l_x in net.deltas
    for p in net.parameters():
        p.grad = None
    per_image = [net.deltas[l].norm(dim=1).mean().item() for l in range(len(net.layers) - 1)]
    return [stats[n]["speed"] for n in hidden_names(net)], per_image


def train_speeds(net: Network, x, labels, epochs: int, eta: float, lmbda: float,
                 progress: bool = False, desc: str = "") -> list[list[float]]:
    """Hidden-layer speeds at epochs 0..epochs of full-batch SGD (row j: before step j)."""
    n, speed = x.shape[0], []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, file=sys.stderr):
        with record(net) as rec:
            net.update_mini_batch(x, labels, eta, lmbda, n)  # one full-batch step
        stats = rec.stats()
        speed.append([stats[name]["speed"] for name in hidden_names(net)])
    stats = measure(net, x, labels)
    speed.append([stats[name]["speed"] for name in hidden_names(net)])
    return speed


def plot(results: dict, path: str | Path) -> None:
    """Speed per hidden layer against epoch, log scale; rows = activation, columns = net."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = results["nets"]
    acts = list(dict.fromkeys(r["activation"] for r in nets))
    sizes = list(dict.fromkeys(str(r["sizes"]) for r in nets))
    fig, axes = plt.subplots(len(acts), len(sizes), figsize=(3.4 * len(sizes), 2.4 * len(acts)),
                             sharex=True, squeeze=False)
    for r in nets:
        ax = axes[acts.index(r["activation"])][sizes.index(str(r["sizes"]))]
        speed = r["speed"]
        for l in range(len(r["sizes"]) - 2):
            ax.plot([s[l] for s in speed], color=f"C{l}", lw=1, label=f"hidden layer {l + 1}",
                    **markers(len(speed)))
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_title(f"{r['activation']} {r['sizes'][1:-1]}", fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel(r"$\|\partial C/\partial b^l\|$")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=cli.positive_int, default=d["n_images"],
                   help="first N training images (default 1000)")
    p.add_argument("--epochs", type=cli.non_negative_int, default=d["epochs"],
                   help="full-batch steps after the initial measurement (0: stop there)")
    p.add_argument("--eta", type=cli.positive_float, default=d["eta"])
    p.add_argument("--lmbda", type=cli.non_negative_float, default=d["lmbda"])
    p.add_argument("--activations", nargs="+", default=d["activations"],
                   choices=["sigmoid", "relu", "tanh", "leaky_relu"])
    p.add_argument("--init-seeds", type=cli.positive_int, default=d["init_seeds"],
                   help="initialisations averaged for the initial speeds")
    p.add_argument("--seed", type=cli.non_negative_int, default=d["seed"],
                   help="the trained initialisation")
    p.add_argument("--device", type=cli.device, default=d["device"], help="default cpu")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--json", metavar="PATH", type=cli.json_path,
                   help="write config and speeds here")
    p.add_argument("--plot", metavar="PATH", type=cli.plot_path,
                   help="draw speed vs epoch here (.png, .pdf, .svg, ...)")
    p.add_argument("--from-json", metavar="PATH", type=cli.json_file,
                   help="plot a saved JSON instead of running")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=cli.threads, default=d["threads"],
                   help="torch intra-op threads, or auto: bptorch.threads.choose_threads from "
                        "the full-batch step of the largest net (default auto)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Measure and train every net (or replot); torch's thread count is restored after."""
    with keep_threads():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> dict:
    args = build_parser().parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        if args.plot:
            plot(results, args.plot)
        return results

    from bptorch.data import load_mnist

    os.environ.setdefault("BPTORCH_OFFLINE", "1")
    device = torch.device(args.device)
    data = load_mnist("mnist", args.data_dir, device=device)
    x, labels = data.train[0][: args.n_images], data.train[1][: args.n_images]
    # every step is full-batch: the largest net's step decides the thread count
    set_threads(args.threads, flops=max(mlp_step_flops(s, x.shape[0]) for s in NETS),
                rows=x.shape[0])
    config = dict(DEFAULTS, n_images=x.shape[0], epochs=args.epochs, eta=args.eta,
                  threads=args.threads, torch_threads=torch.get_num_threads(),
                  lmbda=args.lmbda, activations=args.activations, init_seeds=args.init_seeds,
                  seed=args.seed, device=args.device, nets=[list(s) for s in NETS],
                  book_initial_speed=BOOK_INITIAL_SPEED, data_source=data.source,
                  bptorch_version=bptorch.__version__, torch_version=torch.__version__)
    progress = not args.no_progress and sys.stderr.isatty()
    nets = []
    for act in args.activations:
        for sizes in NETS:
            by_seed, per_image = [], []
            for s in range(args.init_seeds):
                torch.manual_seed(s)
                net = Network(sizes, act, "cross_entropy", "scaled", device=device)
                speed, norms = initial_speeds(net, x, labels)
                by_seed.append(speed)
                per_image.append(norms)
            torch.manual_seed(args.seed)
            net = Network(sizes, act, "cross_entropy", "scaled", device=device)
            initial, _ = initial_speeds(net, x, labels)
            speed = train_speeds(net, x, labels, args.epochs, args.eta, args.lmbda,
                                 progress, desc=f"{act} {sizes}")
            mean = [sum(col) / len(col) for col in zip(*by_seed)]
            row = {"sizes": sizes, "activation": act, "initial_speed": initial,
                   "initial_speed_seeds": by_seed, "initial_speed_mean": mean,
                   "initial_per_image_norm_mean":
                       [sum(col) / len(col) for col in zip(*per_image)],
                   "speed": speed}
            nets.append(row)
            book = BOOK_INITIAL_SPEED.get(str(sizes)) if act == "sigmoid" else None
            print(f"{act:>8} {str(sizes):<27} seed {args.seed}: "
                  + " ".join(f"{v:.3f}" for v in initial)
                  + f" | mean of {args.init_seeds} seeds: " + " ".join(f"{v:.3f}" for v in mean)
                  + (" | book: " + " ".join(f"{v:g}" for v in book) if book else "")
                  + (f" | epoch {args.epochs}: " + " ".join(f"{v:.3g}" for v in speed[-1])
                     if args.epochs else ""), flush=True)
    results = {"config": config, "nets": nets}
    save_results(results, args.json, args.plot, plot)
    return results


if __name__ == "__main__":
    main()
