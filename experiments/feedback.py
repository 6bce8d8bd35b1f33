"""Beyond exact backprop: LeNet and an MLP on MNIST / Fashion-MNIST under feedback rules.

    python -m experiments.feedback --rule fa --model lenet --dataset mnist
    python -m experiments.feedback --rule dfa --model mlp --diagnostics --json fa.json
    python -m experiments.feedback --from-json bp.json fa.json dfa.json --plot align.png

BP2, δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l), is the one equation the rules change
(``bptorch.feedback``): ``bp`` is exact backprop; ``fa`` a fixed random B in place of W
(Lillicrap et al. 2016); ``usf``, ``brsf``, ``frsf`` sign(W) with a fixed scale, batch-random
or fixed-random magnitudes (Liao et al. 2016, Moskovitz et al. 2018); ``dfa`` sends δ^L
straight to every hidden layer through its own fixed random matrix (Nøkland 2016, with
``bptorch.feedback.DFA``). BP1, BP3 and BP4 are unchanged.

The models, of bptorch layers:

* ``lenet``: BioTorch's LeNetMNIST, conv 6@5×5, ReLU, max-pool 2, conv 16@5×5, ReLU,
  max-pool 2, conv 120@5×5, ReLU, FC 120→84 (ReLU), 84→10, on 32×32 inputs (MNIST
  zero-padded by 2). DFA feeds δ^L to the outputs of pool1, pool2, the flattened conv3
  and fc1: the inputs of every layer but the first, where BioTorch's DFA layers put it.
* ``mlp``: 784→800→800→10, tanh hidden layers, dropout p=0.25 after each (``--dropout``);
  DFA feeds δ^L to each dropout's output, so a dropped unit gets no error.

As BioTorch, training uses all 60,000 training images (the loader's 50,000 + 10,000
validation) and the result is the best epoch's error on the 10,000 test images. Inputs
are standardised with the training set's mean and standard deviation (LeNet's padding is
background before standardising). Each rule's optimizer and schedule is in ``RULE_CONFIGS``
(flags override) and recorded in the JSON. ``--diagnostics`` records, each epoch, the angle
between each layer's update under the rule and backprop's on the same 1,000 training
images (``bptorch.diagnostics.alignment``). ``--threads`` (default ``auto``) sets torch's
intra-op threads through ``bptorch.threads``, recorded as ``torch_threads``.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import bptorch
from bptorch import cli
from bptorch import nn as bnn
from bptorch.diagnostics import alignment
from bptorch.feedback import DFA
from bptorch.threads import (
    conv_step_flops, keep_threads, mlp_step_flops, set_threads,
)
from experiments.mnist import markers, save_results

RULES = ("bp", "fa", "usf", "brsf", "frsf", "dfa")
LAYER_RULE = {"bp": "backprop", "fa": "fa", "usf": "usf", "brsf": "brsf", "frsf": "frsf",
              "dfa": "backprop"}  # dfa: exact layers, the DFA wrapper replaces BP2
# BioTorch's LeNet benchmark configs use batch 128, weight decay 1e-4 and either SGD
# (lr 1e-3, momentum 0.9) or Adam (lr 1e-3), the learning rate divided by 10 at fixed
# milestones, for 250 epochs. With at most 20 epochs here: Adam for every rule (it is
# insensitive to the scale of the error each rule passes down), lr ÷ 10 at 50% and 75%.
ADAM = dict(optimizer="adam", lr=1e-3, weight_decay=1e-4, milestones=[0.5, 0.75], gamma=0.1)
RULE_CONFIGS: dict[str, dict[str, Any]] = {rule: dict(ADAM) for rule in RULES}
# BioTorch's published top-1 test error (%) of LeNet: (MNIST, Fashion-MNIST)
BIOTORCH_ERROR = {"bp": (0.84, 8.88), "fa": (1.91, 12.77), "usf": (0.83, 9.22),
                  "brsf": (0.79, 9.31), "frsf": (0.92, 9.27), "dfa": (1.71, 12.76)}
DEFAULTS: dict[str, Any] = dict(
    rule="bp", model="lenet", dataset="mnist", epochs=20, batch_size=128, seed=0,
    optimizer=None, lr=None, weight_decay=None, milestones=None, gamma=None, dropout=0.25,
    train_size=None, data_dir=None, diagnostics=False, threads="auto")
MLP_SIZES = [784, 800, 800, 10]
PROBE = 1_000  # training images the alignment angle is measured on
EVAL_CHUNK = 2_000


# -- the models --------------------------------------------------------------------------
def lenet(rule: str) -> tuple[nn.Module, list[str]]:
    """BioTorch's LeNetMNIST of bptorch layers; and the modules DFA feeds."""
    fb = LAYER_RULE[rule]
    net = nn.Sequential(OrderedDict(
        conv1=bnn.Conv2d(1, 6, 5, feedback=fb), relu1=bnn.ReLU(), pool1=bnn.MaxPool2d(2),
        conv2=bnn.Conv2d(6, 16, 5, feedback=fb), relu2=bnn.ReLU(), pool2=bnn.MaxPool2d(2),
        conv3=bnn.Conv2d(16, 120, 5, feedback=fb), relu3=bnn.ReLU(), flatten=bnn.Flatten(),
        fc1=bnn.Dense(120, 84, "relu", feedback=fb),
        fc2=bnn.Linear(84, 10, feedback=fb),
    ))
    return net, ["pool1", "pool2", "flatten", "fc1"]


def mlp(rule: str, dropout: float) -> tuple[nn.Module, list[str]]:
    """784→800→800→10, tanh, dropout after each hidden layer; and the modules DFA feeds."""
    fb = LAYER_RULE[rule]
    (n0, n1, n2, n3) = MLP_SIZES
    net = nn.Sequential(OrderedDict(
        fc1=bnn.Dense(n0, n1, "tanh", feedback=fb), drop1=bnn.Dropout(dropout),
        fc2=bnn.Dense(n1, n2, "tanh", feedback=fb), drop2=bnn.Dropout(dropout),
        fc3=bnn.Linear(n2, n3, feedback=fb),
    ))
    return net, ["drop1", "drop2"]


def build(c: dict, example: Tensor) -> tuple[nn.Module, nn.Module]:
    """(the net, what to train through: the net, or its DFA wrapper)."""
    net, hidden = lenet(c["rule"]) if c["model"] == "lenet" else mlp(c["rule"], c["dropout"])
    if c["rule"] != "dfa":
        return net, net
    output = "fc2" if c["model"] == "lenet" else "fc3"
    return net, DFA(net, output, hidden, example)


def step_work(c: dict) -> tuple[float, int]:
    """(FLOPs, GEMM rows) of one training step, for ``bptorch.threads.choose_threads``."""
    m = c["batch_size"]
    if c["model"] == "mlp":
        return mlp_step_flops(MLP_SIZES, m), m
    flops = (conv_step_flops(m, 1, 6, 5, 28, grad_input=False)
             + conv_step_flops(m, 6, 16, 5, 10) + conv_step_flops(m, 16, 120, 5, 1)
             + mlp_step_flops([120, 84, 10], m, grad_input=True))
    return flops, m * 28 * 28


# -- data ----------------------------------------------------------------------------------
def load(c: dict) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(x_train, y_train, x_test, y_test, source): 60,000 training images (train +
    validation), standardised with their mean and std; (N, 1, 32, 32) for LeNet."""
    from bptorch.data import load_mnist

    data = load_mnist(c["dataset"], c["data_dir"])
    x = torch.cat([data.train[0], data.validation[0]])
    y = torch.cat([data.train[1], data.validation[1]])
    x_test, y_test = data.test
    if c["train_size"] is not None:
        x, y = x[:c["train_size"]], y[:c["train_size"]]
    if c["model"] == "lenet":  # zero-pad 28×28 to 32×32: background, as BioTorch's Pad(2)
        x = torch.nn.functional.pad(x.view(-1, 1, 28, 28), (2, 2, 2, 2))
        x_test = torch.nn.functional.pad(x_test.view(-1, 1, 28, 28), (2, 2, 2, 2))
    mean, std = x.mean(), x.std()
    return (x - mean) / std, y, (x_test - mean) / std, y_test, data.source


# -- training --------------------------------------------------------------------------------
def make_optimizer(net: nn.Module, c: dict) -> tuple[torch.optim.Optimizer, Any]:
    """The rule's optimizer and its MultiStepLR (milestones as fractions of the epochs)."""
    if c["optimizer"] == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    else:
        opt = torch.optim.SGD(net.parameters(), lr=c["lr"], momentum=0.9,
                              weight_decay=c["weight_decay"])
    milestones = sorted({max(1, round(f * c["epochs"])) for f in c["milestones"]})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, c["gamma"])


def train_epoch(model: nn.Module, cost, opt, x: Tensor, y: Tensor, batch_size: int,
                gen: torch.Generator, progress: bool, desc: str) -> None:
    from tqdm import tqdm

    model.train()
    perm = torch.randperm(x.shape[0], generator=gen)
    x, y = x[perm], y[perm]
    for k in tqdm(range(0, x.shape[0], batch_size), desc=desc, leave=False, file=sys.stderr,
                  disable=not progress, unit="batch"):
        opt.zero_grad(set_to_none=True)
        cost(model(x[k:k + batch_size]), y[k:k + batch_size]).backward()
        opt.step()


@torch.no_grad()
def errors(net: nn.Module, x: Tensor, y: Tensor) -> int:
    """How many rows of x the net misclassifies (eval mode: no dropout)."""
    net.eval()
    wrong = sum(int((net(x[i:i + EVAL_CHUNK]).argmax(1) != y[i:i + EVAL_CHUNK]).sum())
                for i in range(0, x.shape[0], EVAL_CHUNK))
    return wrong


# -- command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.feedback", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    d = DEFAULTS
    p.add_argument("--rule", choices=RULES, help=f"default {d['rule']}")
    p.add_argument("--model", choices=["lenet", "mlp"], help=f"default {d['model']}")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default mnist")
    p.add_argument("--epochs", type=cli.non_negative_int, help=f"default {d['epochs']}")
    p.add_argument("--batch-size", type=cli.positive_int, help=f"default {d['batch_size']}")
    p.add_argument("--seed", type=cli.non_negative_int,
                   help="weights, feedback matrices, shuffles, dropout "
                   f"(default {d['seed']})")
    p.add_argument("--optimizer", choices=["adam", "sgd"],
                   help="default: the rule's (RULE_CONFIGS); sgd has momentum 0.9")
    p.add_argument("--lr", type=cli.positive_float, help="default: the rule's")
    p.add_argument("--weight-decay", type=cli.non_negative_float, help="default: the rule's")
    p.add_argument("--milestones", type=cli.non_negative_float, nargs="+",
                   help="divide lr by 1/gamma at these fractions of the epochs "
                        "(default: the rule's)")
    p.add_argument("--gamma", type=cli.positive_float, help="default: the rule's")
    p.add_argument("--dropout", type=cli.probability, help=f"mlp only (default {d['dropout']})")
    p.add_argument("--train-size", type=cli.positive_int,
                   help="the first N of the 60,000 (default all)")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--diagnostics", action="store_true", default=None,
                   help="record the alignment angle per layer each epoch")
    p.add_argument("--threads", type=cli.threads,
                   help="torch intra-op threads, or auto (bptorch.threads; default auto)")
    p.add_argument("--json", metavar="PATH", type=cli.json_path,
                   help="write config and history here")
    p.add_argument("--plot", metavar="PATH", type=cli.plot_path,
                   help="draw test error and alignment here (.png, .pdf, .svg, ...)")
    p.add_argument("--from-json", metavar="PATH", nargs="+", type=cli.json_file,
                   help="saved runs: plot them (with --plot) or tabulate them (with --table)")
    p.add_argument("--table", action="store_true",
                   help="with --from-json: print a markdown table of the runs' best-epoch test "
                        "error next to BioTorch's")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    """defaults < the rule's optimizer and schedule < flags given on the command line."""
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    rule = flags.get("rule", DEFAULTS["rule"])
    config = {**DEFAULTS, **{k: v for k, v in RULE_CONFIGS[rule].items()}, **flags}
    config["milestones"] = list(config["milestones"])
    config["biotorch_error"] = BIOTORCH_ERROR[rule][config["dataset"] == "fashion-mnist"] \
        if config["model"] == "lenet" else None
    return config


def main(argv: Sequence[str] | None = None) -> dict:
    """Train one rule, print an epoch line each epoch; return config, history and final.

    torch's intra-op thread count is set from ``--threads`` for the run and restored after.
    """
    with keep_threads():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        if not (args.plot or args.table):
            parser.error("--from-json needs --plot or --table")
        if args.table:
            print(table(args.from_json))
        return replot(args.from_json, args.plot) if args.plot else {}

    c = config = resolve_config(args)
    set_threads(c["threads"], *step_work(c))
    x, y, x_test, y_test, source = load(c)
    config.update(n_train=x.shape[0], data_source=source, torch_version=str(torch.__version__),
                  torch_threads=torch.get_num_threads(), bptorch_version=bptorch.__version__)

    torch.manual_seed(c["seed"])  # weights, feedback matrices, dropout masks
    net, model = build(c, x[:1])
    cost = bnn.LogLikelihoodCost(logits=True)  # softmax on z^L, δ^L = softmax(z) − y
    opt, schedule = make_optimizer(net, c)
    gen = torch.Generator().manual_seed(c["seed"])  # the shuffles, the same for every rule
    progress = not args.no_progress and sys.stderr.isatty()
    probe = (x[:PROBE], y[:PROBE])
    loss_fn = lambda m, xb, yb: cost(m(xb), yb)  # noqa: E731

    history: dict[str, list] = {"test_error": [], "training_error": [], "lr": [],
                                "epoch_seconds": []}
    if c["diagnostics"]:
        history["alignment"] = []
    n_test, start_all = x_test.shape[0], time.perf_counter()
    for j in range(c["epochs"]):
        history["lr"].append(opt.param_groups[0]["lr"])
        start = time.perf_counter()
        train_epoch(model, cost, opt, x, y, c["batch_size"], gen, progress, f"Epoch {j}")
        seconds = time.perf_counter() - start
        schedule.step()
        k_test = errors(net, x_test, y_test)
        k_train = errors(net, x[:10_000], y[:10_000])
        history["test_error"].append(100 * k_test / n_test)
        history["training_error"].append(100 * k_train / min(10_000, x.shape[0]))
        history["epoch_seconds"].append(seconds)
        line = (f"Epoch {j}: test error {100 * k_test / n_test:.2f}% "
                f"(training {history['training_error'][-1]:.2f}%, {seconds:.1f} s)")
        if c["diagnostics"]:
            angles = alignment(model, *probe, loss_fn)
            history["alignment"].append(angles)
            line += "  angles " + " ".join(f"{n} {a:.0f}°" for n, a in angles.items())
        print(line, flush=True)

    best = min(range(c["epochs"]), key=history["test_error"].__getitem__) if c["epochs"] \
        else None
    final = {"best_test_error": history["test_error"][best] if best is not None else None,
             "best_epoch": best, "last_test_error":
             history["test_error"][-1] if c["epochs"] else 100 * errors(net, x_test, y_test)
             / n_test, "wall_seconds": time.perf_counter() - start_all}
    if best is not None:
        target = c["biotorch_error"]
        print(f"Best: test error {final['best_test_error']:.2f}% at epoch {best}"
              + (f" (BioTorch: {target}%)" if target is not None else ""))
    results = {"config": config, "history": history, "final": final}
    save_results(results, args.json, args.plot, plot)
    return results


def table(json_paths: Sequence[str]) -> str:
    """Markdown: model, dataset, rule, epochs, best-epoch test error, BioTorch's error, the
    target (BioTorch's + 0.2 points; Nøkland's 1.45% + 0.15 for the MLP with DFA), wall time."""
    import json
    from pathlib import Path

    rows = ["| model | dataset | rule | epochs | best test error | BioTorch | target | met | "
            "wall s |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for path in json_paths:
        run = json.loads(Path(path).read_text())
        c, f = run["config"], run["final"]
        ref = c.get("biotorch_error")
        target = ref + 0.2 if ref is not None else (1.6 if c["rule"] == "dfa" else None)
        met = "" if target is None else ("✔" if f["best_test_error"] <= target + 1e-9 else
                                         f"✗ by {f['best_test_error'] - target:.2f}")
        rows.append(f"| {c['model']} | {c['dataset']} | {c['rule']} | {c['epochs']} | "
                    f"{f['best_test_error']:.2f}% | {'—' if ref is None else f'{ref:.2f}%'} | "
                    f"{'—' if target is None else f'{target:.2f}%'} | {met} | "
                    f"{f['wall_seconds']:.0f} |")
    return "\n".join(rows)


# -- plots --------------------------------------------------------------------------------------
def replot(json_paths: Sequence[str], path: str) -> dict:
    import json
    from pathlib import Path

    runs = [json.loads(Path(p).read_text()) for p in json_paths]
    plot(runs, path)
    return {"runs": runs}


def plot(results: dict | list[dict], path: str) -> None:
    """Test error per epoch (left) and, for runs with ``--diagnostics``, each hidden
    layer's alignment angle with backprop's update (right; the output layer's is 0 under
    every rule), one colour per run, one line style per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results if isinstance(results, list) else [results]
    fig, (ax_err, ax_ang) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ["-", "--", ":", "-.", (0, (1, 4))]
    top = 100.0
    for i, run in enumerate(runs):
        c, h = run["config"], run["history"]
        label, color = f"{c['rule']} {c['model']} {c['dataset']}", f"C{i}"
        if c["lr"] != RULE_CONFIGS[c["rule"]]["lr"]:  # a run off the rule's own settings
            label += f" lr {c['lr']:g}"
        ax_err.plot(range(1, len(h["test_error"]) + 1), h["test_error"], color=color,
                    label=label, **markers(len(h["test_error"])))
        hidden = [n for n in h.get("alignment", [{}])[0]
                  if any(a[n] > 1e-3 for a in h["alignment"])]  # not the output layer
        for k, layer in enumerate(hidden):
            angles = [a[layer] for a in h["alignment"]]
            top = max(top, max(angles) + 5)
            ax_ang.plot(range(1, len(angles) + 1), angles, color=color,
                        ls=styles[k % len(styles)], label=f"{c['rule']} {layer}",
                        **markers(len(angles)))
    ax_err.set(xlabel="epoch", ylabel="test error (%)", title="Test error")
    ax_ang.axhline(90, color="gray", lw=0.5)
    ax_ang.set(xlabel="epoch", ylabel="degrees", ylim=(0, top),
               title="Angle between the rule's ∂C/∂W and backprop's")
    for ax in (ax_err, ax_ang):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
