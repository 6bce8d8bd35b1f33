"""Chapter 5's vanishing gradient on the time axis: ‖∂C/∂h_t‖ per step of a recurrent net.

    python -m experiments.vanishing_time --json results/vanishing/time.json \\
        --plot docs/img/vanishing_time.png

The time-axis twin of ``experiments.vanishing`` (docs/img/vanishing_speed.png). A
recurrent net applies the same layer at every step, so backpropagation through time
multiplies by (W_hh)ᵀ diag(σ'(z_t)) once per step back, as BP2 does once per layer down.
The task is the row-by-row MNIST of ``experiments.sequence --model lstm``: each image is
28 steps of 28 pixels, a Linear(hidden, 10) reads h_T, and C is the log-likelihood cost
of softmax, averaged over the first 1,000 training images. At initialisation (torch's:
every weight and bias U(−1/√H, 1/√H)), ``bptorch.diagnostics.time_gradients`` runs the
bptorch net one step at a time and reads ‖∂C/∂h_t‖ for t = 1..28 from one backward (the
layers' own BPTT): by default the book's measure, ‖Σ_x ∂C/∂h_t^x‖ (the norm of the
batch-mean gradient, as ‖∂C/∂b^l‖ in chapter 5), and also mean_x ‖∂C_x/∂h_t^x‖.

Models: RNN(tanh), RNN(relu), LSTM, and the LSTM with its forget-gate biases set to 1
(b_ih + b_hh = 1 on the f rows; Gers et al. 2000, Jozefowicz et al. 2015), the usual
remedy when f ≈ σ(0) = ½ halves the cell path dc_{t−1} = dc_t ⊙ f_t at every step.
Each initialisation is noisy, so the norms are averaged over ``--seeds`` seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch

import bptorch
from bptorch import cli
from bptorch import nn as bnn
from bptorch.diagnostics import time_gradients
from bptorch.threads import keep_threads, set_threads
from experiments.mnist import save_results

MODELS = ("rnn_tanh", "rnn_relu", "lstm", "lstm_forget_bias_1")
LABELS = {"rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (ReLU)", "lstm": "LSTM",
          "lstm_forget_bias_1": "LSTM, forget bias 1"}
DEFAULTS = dict(n_images=1000, hidden=128, models=list(MODELS), seeds=5, seed=0,
                threads="auto")
STEPS, PIXELS = 28, 28  # rows of the image, pixels per row


def build(model: str, hidden: int) -> torch.nn.Module:
    """The bptorch recurrent layer of ``model``, batch_first, torch's initialisation."""
    if model.startswith("rnn"):
        return bnn.RNN(PIXELS, hidden, nonlinearity=model[4:], batch_first=True)
    lstm = bnn.LSTM(PIXELS, hidden, batch_first=True)
    if model == "lstm_forget_bias_1":
        with torch.no_grad():  # gates stacked (i, f, g, o): the f rows are [H, 2H)
            lstm.bias_ih_l0[hidden:2 * hidden] = 1.0
            lstm.bias_hh_l0[hidden:2 * hidden] = 0.0
    return lstm


def measure(model: str, hidden: int, seed: int, x: torch.Tensor, y: torch.Tensor
            ) -> tuple[list[float], list[float]]:
    """(‖Σ_x ∂C/∂h_t^x‖, mean_x ‖∂C_x/∂h_t^x‖) for t = 1..28, one initialisation."""
    torch.manual_seed(seed)
    rnn = build(model, hidden)
    readout = bnn.Linear(hidden, 10)
    cost = bnn.LogLikelihoodCost(logits=True)
    book = time_gradients(rnn, x, readout, cost, y)
    per_example = time_gradients(rnn, x, readout, cost, y, measure="per_example")
    return book.tolist(), per_example.tolist()


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)]


def plot(results: dict, path: str | Path) -> None:
    """‖∂C/∂h_t‖ against t on a log scale, one curve per model (mean over seeds, the band
    their min and max); left the book's measure, right the per-example mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, title in ((axes[0], "norm", r"$\|\sum_x \partial C/\partial h_t^x\|$"),
                           (axes[1], "per_example", r"mean$_x\ \|\partial C_x/\partial h_t^x\|$")):
        for i, m in enumerate(results["models"]):
            t = range(1, len(m[f"{key}_mean"]) + 1)
            seeds = m[f"{key}_seeds"]
            ax.plot(t, m[f"{key}_mean"], color=f"C{i}", lw=1.5, label=LABELS[m["model"]])
            ax.fill_between(t, [min(c) for c in zip(*seeds)], [max(c) for c in zip(*seeds)],
                            color=f"C{i}", alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("time step t (image row)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"$\|\partial C/\partial h_t\|$ at initialisation")
    axes[0].legend(fontsize=7)
    c = results["config"]
    fig.suptitle(f"row-by-row MNIST, hidden {c['hidden']}, {c['n_images']} images, "
                 f"mean of {c['seeds']} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=cli.positive_int, default=d["n_images"],
                   help="first N training images (default 1000)")
    p.add_argument("--hidden", type=cli.positive_int, default=d["hidden"],
                   help="hidden size H (default 128)")
    p.add_argument("--models", nargs="+", default=d["models"], choices=MODELS)
    p.add_argument("--seeds", type=cli.positive_int, default=d["seeds"],
                   help="initialisations averaged (seeds seed .. seed + seeds − 1; default 5)")
    p.add_argument("--seed", type=cli.non_negative_int, default=d["seed"],
                   help="the first seed (default 0)")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--json", metavar="PATH", type=cli.json_path, help="write config and norms here")
    p.add_argument("--plot", metavar="PATH", type=cli.plot_path,
                   help="draw ‖∂C/∂h_t‖ against t here (.png, .pdf, .svg, ...)")
    p.add_argument("--from-json", metavar="PATH", type=cli.json_file,
                   help="plot a saved JSON instead of running")
    p.add_argument("--threads", type=cli.threads, default=d["threads"],
                   help="torch intra-op threads, or auto: bptorch.threads.choose_threads from "
                        "the LSTM's forward + backward (default auto)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Measure every model (or replot); torch's thread count is restored after."""
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
    data = load_mnist("mnist", args.data_dir)
    x = data.train[0][: args.n_images].view(-1, STEPS, PIXELS)  # (N, 28 rows, 28 pixels)
    y = data.train[1][: args.n_images]
    n, H = x.shape[0], args.hidden
    # the LSTM's forward + backward: 3 GEMMs of 2·N·4H·(28 + H) FLOPs per step
    set_threads(args.threads, flops=3 * STEPS * 2 * n * 4 * H * (PIXELS + H), rows=n)
    config = dict(DEFAULTS, n_images=n, hidden=H, models=args.models, seeds=args.seeds,
                  seed=args.seed, threads=args.threads, torch_threads=torch.get_num_threads(),
                  measure="norm: ‖Σ_x ∂C/∂h_t^x‖ (book's ‖mean δ‖); per_example: "
                          "mean_x ‖∂C_x/∂h_t^x‖",
                  data_source=data.source, bptorch_version=bptorch.__version__,
                  torch_version=torch.__version__)
    models = []
    for model in args.models:
        start = time.perf_counter()
        book, per_example = zip(*(measure(model, H, s, x, y)
                                  for s in range(args.seed, args.seed + args.seeds)))
        row = {"model": model, "norm_seeds": list(book), "norm_mean": _mean(book),
               "per_example_seeds": list(per_example), "per_example_mean": _mean(per_example)}
        row["ratio_first_last"] = row["norm_mean"][0] / row["norm_mean"][-1]
        models.append(row)
        print(f"{LABELS[model]:<20} ‖∂C/∂h_t‖ (mean of {args.seeds} seeds) "
              f"t=1: {row['norm_mean'][0]:.3g}  t=14: {row['norm_mean'][13]:.3g}  "
              f"t=28: {row['norm_mean'][-1]:.3g}  h_1/h_28: {row['ratio_first_last']:.3g}"
              f"  [{time.perf_counter() - start:.1f} s]", flush=True)
    results = {"config": config, "models": models}
    save_results(results, args.json, args.plot, plot)
    return results


if __name__ == "__main__":
    main()
