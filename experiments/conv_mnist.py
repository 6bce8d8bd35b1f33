"""Reproduce chapter 6 of Nielsen's book (network3.py): convolutional nets on MNIST.

    python -m experiments.conv_mnist --preset simple      # conv 20@5×5, pool, FC 100: 98.78%
    python -m experiments.conv_mnist --preset two-conv    # + conv 40@5×5, pool: 99.06%
    python -m experiments.conv_mnist --preset relu-l2     # ReLU, η = 0.03, λ = 0.1: 99.23%
    python -m experiments.conv_mnist --preset expanded    # + one-pixel shifts (250k): 99.37%
    python -m experiments.conv_mnist --preset dropout     # + FC 1000-1000, dropout 0.5: 99.60%
    python -m experiments.conv_mnist --preset modern      # ours: most accuracy per CPU-minute

Every layer is a bptorch module (Conv2d, MaxPool2d, Dense, Dropout, Flatten, Linear)
whose backward is the seed's equations; ``--engine native`` trains the same net built
from torch.nn, from the same initial weights and on the same mini-batches.

The book's network3 conventions kept here: a conv-pool layer is conv, 2×2 max-pool, then
σ (pooling commutes with the per-map bias and with a monotone σ, so this equals σ then
pool); the output is softmax with the log-likelihood cost, averaged over the mini-batch;
the L2 term is (λ/2)·Σ‖W‖² / (number of mini-batches), so its gradient is λ·m/n·W (m
times network2's), and ``--l1``'s term (not in the book's chapter 6) likewise λ₁·Σ|W| /
(number of mini-batches), gradient λ₁·m/n·sgn(W); initial weights N(0, 1/n_out) with
n_out = maps·k²/pool² for a conv layer, biases N(0, 1), the softmax layer zeros.
network3 drops out a layer's *input* and scales weights by (1 − p) at test time; we use
inverted dropout (scale by 1/(1 − p) while training), the same in expectation.

``--threads`` (default ``auto``) sets torch's intra-op thread count through
``bptorch.threads`` from the work of one step (``step_work``): a convolution's im2col
GEMM has m·24² rows, enough to split, so ``auto`` uses every core (capped by
``OMP_NUM_THREADS``); on a machine busy with other work ``--threads 1`` is faster.

Without ``--preset`` the first preset runs. Each epoch prints the book's line
``Epoch j: k / 10000`` (test images right), then validation accuracy, training cost
(first 10,000 training images, with the L2 term) and training seconds.

With ``--json PATH`` every epoch ends by writing a checkpoint ``PATH.ckpt.pt`` (model,
optimizer, both RNG states, history, config) and the JSON so far (``"complete": false``
until the last epoch); ``--resume`` continues from it, bit for bit the run that was never
stopped, and refuses a checkpoint trained with other flags. ``--ensemble`` is the book's
five-net vote over runs saved with ``--save-test-probs``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bptorch
from bptorch import cli
from bptorch import nn as bnn
from bptorch.threads import (
    conv_step_flops, keep_threads, mlp_step_flops, set_threads,
)
from experiments.mnist import add_l1_grad, replot, save_results

# conv: [(maps, kernel)], each followed by a 2×2 max-pool; fc: hidden FC sizes; dropout:
# p on the input of each FC and the softmax layer; expand: the book's 250k shifted images;
# shift: random ±shift-pixel translations each batch; init: "book" (network3) or "torch".
PRESETS: dict[str, dict[str, Any]] = {
    "simple": dict(conv=[(20, 5)], fc=[100], activation="sigmoid", eta=0.1, lmbda=0.0,
                   epochs=60),
    "two-conv": dict(conv=[(20, 5), (40, 5)], fc=[100], activation="sigmoid", eta=0.1,
                     lmbda=0.0, epochs=60),
    "relu-l2": dict(conv=[(20, 5), (40, 5)], fc=[100], activation="relu", eta=0.03,
                    lmbda=0.1, epochs=60),
    "expanded": dict(conv=[(20, 5), (40, 5)], fc=[100], activation="relu", eta=0.03,
                     lmbda=0.1, epochs=60, expand=True),
    "dropout": dict(conv=[(20, 5), (40, 5)], fc=[1000, 1000], activation="relu", eta=0.03,
                    lmbda=0.0, epochs=40, expand=True, dropout=0.5),
    "modern": dict(conv=[(32, 5), (64, 5)], fc=[256], activation="relu", eta=1e-3,
                   lmbda=0.0, epochs=12, batch_size=64, dropout=0.25, shift=2,
                   optimizer="adam", eta_decay=0.8, init="torch"),
}
BOOK_ACCURACY = {"simple": 0.9878, "two-conv": 0.9906, "relu-l2": 0.9923, "expanded": 0.9937,
                 "dropout": 0.9960, "modern": None}
DEFAULTS: dict[str, Any] = dict(
    preset="simple", conv=[(20, 5)], fc=[100], activation="sigmoid", eta=0.1, lmbda=0.0, l1=0.0,
    epochs=60, batch_size=10, dropout=0.0, expand=False, shift=0, optimizer="sgd",
    eta_decay=1.0, init="book", seed=0, engine="bptorch", train_size=None, data_dir=None,
    threads="auto")
COST_SUBSET = 10_000
EVAL_CHUNK = 1_000


# -- the net ---------------------------------------------------------------------------
def build_net(c: dict, lib) -> nn.Sequential:
    """Conv-pool layers, FC layers and a linear output layer (z^L; the cost applies softmax)
    from ``lib``: ``bptorch.nn`` or ``torch.nn``."""
    native = lib is nn
    act = {"sigmoid": lib.Sigmoid, "relu": lib.ReLU}[c["activation"]]
    mods: list[nn.Module] = []
    maps, side = 1, 28
    for n_maps, k in c["conv"]:
        mods += [lib.Conv2d(maps, n_maps, k), lib.MaxPool2d(2), act()]
        maps, side = n_maps, (side - k + 1) // 2
    mods.append(lib.Flatten())
    n_in = maps * side * side
    for n_out in c["fc"]:
        if c["dropout"]:
            mods.append(lib.Dropout(c["dropout"]))
        # bptorch's Dense fuses σ into the layer: one backward computes δ = ∂C/∂a ⊙ σ'(z)
        mods += [lib.Linear(n_in, n_out), act()] if native else \
            [bnn.Dense(n_in, n_out, c["activation"])]
        n_in = n_out
    if c["dropout"]:
        mods.append(lib.Dropout(c["dropout"]))
    mods.append(lib.Linear(n_in, 10))
    return nn.Sequential(*mods)


def step_work(c: dict) -> tuple[float, int]:
    """(FLOPs, GEMM rows) of one training step of ``build_net(c)``, for
    ``bptorch.threads.choose_threads``: the convolutions' and the FC layers' GEMMs
    (``conv_step_flops``, ``mlp_step_flops``); rows are those of the largest GEMM, the
    first convolution's m·H_out² (im2col's rows)."""
    m, maps, side = c["batch_size"], 1, 28
    flops, rows = 0.0, m
    for i, (n_maps, k) in enumerate(c["conv"]):
        flops += conv_step_flops(m, maps, n_maps, k, side - k + 1, grad_input=i > 0)
        rows = max(rows, m * (side - k + 1) ** 2)
        maps, side = n_maps, (side - k + 1) // 2
    return flops + mlp_step_flops([maps * side * side, *c["fc"], 10], m, grad_input=True), rows


@torch.no_grad()
def book_init(net: nn.Sequential) -> None:
    """network3's init: W ~ N(0, 1/n_out) (n_out = maps·k²/4 for conv-pool), b ~ N(0, 1);
    the softmax layer starts at zero."""
    layers = [m for m in net if hasattr(m, "weight")]
    for i, m in enumerate(layers):
        if i == len(layers) - 1:
            m.weight.zero_(), m.bias.zero_()
            continue
        n_out = m.weight.shape[0] * (m.weight[0, 0].numel() / 4 if m.weight.dim() == 4 else 1)
        m.weight.normal_(0, math.sqrt(1 / n_out))
        m.bias.normal_(0, 1)


def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Same parameters in the same order (keys differ: Dense fuses Linear + σ)."""
    with torch.no_grad():
        for p, q in zip(dst.parameters(), src.parameters(), strict=True):
            p.copy_(q)


def cost_fn(engine: str):
    """Mean log-likelihood of softmax(z^L)."""
    return bnn.LogLikelihoodCost(logits=True) if engine == "bptorch" else nn.CrossEntropyLoss()


# -- data ------------------------------------------------------------------------------
def expand(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The book's expand_mnist.py: each image plus its four one-pixel shifts (down, up,
    right, left), the row or column that wraps around set to zero: 5× the data."""
    imgs = x.view(-1, 28, 28)
    out = [imgs]
    for d, axis in ((1, 1), (-1, 1), (1, 2), (-1, 2)):
        s = torch.roll(imgs, d, axis).clone()
        edge = 0 if d == 1 else 27
        if axis == 1:
            s[:, edge, :] = 0
        else:
            s[:, :, edge] = 0
        out.append(s)
    return torch.cat(out).view(-1, 784), labels.repeat(5)


def random_shift(x: Tensor, shift: int, gen: torch.Generator) -> Tensor:
    """Translate each (N, 1, 28, 28) image by its own random (dy, dx) ∈ [−shift, shift]²."""
    n = x.shape[0]
    xp = F.pad(x, (shift,) * 4)
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, n), generator=gen))
    rows = (dy[:, None] + torch.arange(28))[:, :, None]  # (N, 28, 1)
    cols = (dx[:, None] + torch.arange(28))[:, None, :]  # (N, 1, 28)
    return xp[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


# -- training --------------------------------------------------------------------------
def make_optimizer(net: nn.Module, c: dict, n: int) -> torch.optim.Optimizer:
    """network3's L2: gradient λ·m/n·W on the weights (not the biases)."""
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    decay = c["lmbda"] * c["batch_size"] / n
    groups = [{"params": weights, "weight_decay": decay}, {"params": biases, "weight_decay": 0}]
    if c["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=c["eta"])
    return torch.optim.SGD(groups, lr=c["eta"])


def train_epoch(net, cost, opt, x: Tensor, y: Tensor, c: dict, gen: torch.Generator,
                progress: bool, desc: str) -> None:
    from tqdm import tqdm

    net.train()
    n, m = x.shape[0], c["batch_size"]
    perm = torch.randperm(n, generator=gen)
    x, y = x[perm].view(-1, 1, 28, 28), y[perm]
    for k in tqdm(range(0, n, m), desc=desc, leave=False, file=sys.stderr,
                  disable=not progress, unit="batch"):
        xb, yb = x[k:k + m], y[k:k + m]
        if c["shift"]:
            xb = random_shift(xb, c["shift"], gen)
        opt.zero_grad(set_to_none=True)
        cost(net(xb), yb).backward()
        if c["l1"]:  # λ₁·m/n·sgn(W), network3's scaling of its L2 term
            add_l1_grad(net, c["l1"] * m, n)
        opt.step()


@torch.no_grad()
def logits(net: nn.Module, x: Tensor) -> Tensor:
    net.eval()
    return torch.cat([net(x[i:i + EVAL_CHUNK].view(-1, 1, 28, 28))
                      for i in range(0, x.shape[0], EVAL_CHUNK)])


@torch.no_grad()
def training_cost(net, cost, x: Tensor, y: Tensor, c: dict, n: int) -> float:
    """Mean cost on x plus network3's L2 term (λ/2)·Σ‖W‖²·m/n and the L1 term λ₁·Σ|W|·m/n."""
    value = float(cost(logits(net, x), y))
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    m = c["batch_size"]
    return (value + 0.5 * c["lmbda"] * m / n * sum(float(w.pow(2).sum()) for w in weights)
            + c["l1"] * m / n * sum(float(w.abs().sum()) for w in weights))


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.conv_mnist", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), help="default simple")
    p.add_argument("--epochs", type=cli.non_negative_int, help="default: the preset's (the book's)")
    p.add_argument("--batch-size", type=cli.positive_int, help="mini-batch size m (book: 10)")
    p.add_argument("--eta", type=cli.positive_float, help="learning rate η")
    p.add_argument("--lmbda", type=cli.non_negative_float, help="L2 regularisation λ")
    p.add_argument("--l1", type=cli.non_negative_float, help="L1 regularisation λ₁ (default 0)")
    p.add_argument("--eta-decay", type=cli.positive_float,
                   help="multiply η by this after every epoch (modern preset: 0.8)")
    p.add_argument("--seed", type=cli.non_negative_int,
                   help="weights, shuffles, dropout masks (default 0)")
    cli.add_engine(p, ("bptorch", "native"), None, help_default="bptorch")
    p.add_argument("--train-size", type=cli.positive_int,
                   help="train on the first N images (before expansion; default all 50,000)")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--threads", type=cli.threads,
                   help="torch intra-op threads, or auto: bptorch.threads.choose_threads "
                        "from the work per step (default auto)")
    cli.add_results_flags(p, "the learning curves", "a markdown table of the runs against the book")
    p.add_argument("--save-test-probs", metavar="PATH",
                   help="save softmax(z^L) on the test set (.pt), for --ensemble")
    p.add_argument("--ensemble", metavar="PATH", nargs="+", type=cli.existing_file,
                   help="the book's majority vote of saved test probabilities, then exit")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    cli.add_resume(p)
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    """defaults < preset < flags given on the command line."""
    config = dict(DEFAULTS)
    config.update(PRESETS[args.preset or DEFAULTS["preset"]])
    config.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    config["preset"] = args.preset or DEFAULTS["preset"]
    config["conv"] = [list(t) for t in config["conv"]]
    config["book_test_accuracy"] = BOOK_ACCURACY[config["preset"]]
    return config


def vote(probs: Tensor) -> Tensor:
    """The book's ensemble: each net votes for its argmax class, the most votes win.

    ``probs`` is (nets, N, classes) of softmax outputs. A tie between classes (five nets
    can split 2-2-1) goes to the tied class with the larger mean probability; the book
    does not say how it breaks ties. Returns (N,) class indices.
    """
    votes = F.one_hot(probs.argmax(2), probs.shape[2]).sum(0)  # (N, classes)
    tied = votes == votes.max(1, keepdim=True).values
    return torch.where(tied, probs.mean(0), -1.0).argmax(1)


def ensemble(paths: Sequence[str], data_dir: str | None) -> dict:
    """Majority vote (:func:`vote`) of several runs' saved test probabilities; the mean of
    their probabilities is recorded beside it for comparison."""
    from bptorch.data import load_mnist

    labels = load_mnist(data_dir=data_dir).test[1]
    probs = torch.stack([torch.load(p, weights_only=True) for p in paths])
    single = [float((q.argmax(1) == labels).float().mean()) for q in probs]
    acc = float((vote(probs) == labels).float().mean())
    mean_acc = float((probs.mean(0).argmax(1) == labels).float().mean())
    votes = F.one_hot(probs.argmax(2), probs.shape[2]).sum(0)
    ties = int(((votes == votes.max(1, keepdim=True).values).sum(1) > 1).sum())
    print(f"Ensemble of {len(paths)} by vote: {round(acc * len(labels))} / {len(labels)} "
          f"(mean probability {mean_acc:.4f}; single runs "
          f"{', '.join(f'{a:.4f}' for a in single)}; {ties} ties)")
    return {"ensemble_test_accuracy": acc, "rule": "majority vote of the nets' argmax, "
            "ties to the larger mean probability", "ties": ties,
            "mean_probability_test_accuracy": mean_acc, "single_test_accuracy": single,
            "runs": [Path(p).name for p in paths]}


def table(json_paths: Sequence[str]) -> str:
    """Markdown, a row per run: preset, the book's accuracy, the test accuracy at the epoch
    of best validation accuracy (network3's "corresponding test accuracy", the figure the
    book quotes), at the last epoch and at the best, epochs run of the config's, and the
    training seconds summed and per epoch (runs still going say so)."""
    import json

    rows = ["| preset | book | at best validation | last epoch | best epoch | epochs | "
            "train s | s/epoch |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path in json_paths:
        run = json.loads(Path(path).read_text())
        c, h = run["config"], run["history"]
        done, acc, secs = len(h["test_accuracy"]), h["test_accuracy"], h["epoch_seconds"]
        val = h["validation_accuracy"]
        # the last of equal bests: network3 updates on validation_accuracy >= best
        chosen = max(range(done), key=lambda j: (val[j], j))
        book = c.get("book_test_accuracy")
        status = "" if run.get("complete", True) else ", running"
        rows.append(f"| `{c['preset']}` | {'—' if book is None else f'{book:.2%}'} | "
                    f"{acc[chosen]:.2%} (epoch {chosen}) | {acc[-1]:.2%} | {max(acc):.2%} | "
                    f"{done} of {c['epochs']}{status} | {sum(secs):.0f} | "
                    f"{sum(secs) / done:.0f} |")
    return "\n".join(rows)


# -- checkpoints -------------------------------------------------------------------------
# Flags a resumed run may change: where the data is, how many threads, how far to train
# (the η schedule depends on the epoch index only, so more epochs extend the same run).
RESUMABLE_CHANGES = ("threads", "data_dir", "epochs")


def checkpoint_path(json_path: str | Path) -> Path:
    """The checkpoint sits next to the JSON: ``run.json`` -> ``run.ckpt.pt``."""
    return Path(json_path).with_suffix(".ckpt.pt")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill mid-write leaves the old one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def config_differences(saved: dict, config: dict, parser: argparse.ArgumentParser,
                       defaults: dict | None = None,
                       resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
    """The flags whose values differ between a checkpoint's config and this run's; keys
    that no flag sets (conv, fc, ...) come from ``--preset``. ``defaults`` and
    ``resumable``: another script's (experiments.private)."""
    defaults = DEFAULTS if defaults is None else defaults
    dests = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return sorted({dests.get(k, "--preset") for k in defaults
                   if k not in resumable and saved.get(k, defaults[k]) != config[k]})


def resume_state(args: argparse.Namespace, parser: argparse.ArgumentParser, config: dict,
                 epochs: int, defaults: dict | None = None,
                 resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> dict | None:
    """``--resume``: the checkpoint next to ``--json`` (None if there is none yet), after
    checking that it was trained with this run's flags and no more than ``epochs`` epochs;
    a parser error otherwise."""
    ckpt = checkpoint_path(args.json) if args.json else None
    if args.resume and ckpt is None:
        parser.error("--resume needs --json (the checkpoint sits next to it)")
    if not (args.resume and ckpt.exists()):
        return None
    state = torch.load(ckpt, weights_only=True)
    if differ := config_differences(state["config"], config, parser, defaults, resumable):
        parser.error(f"--resume: {ckpt} was trained with other values of "
                     f"{', '.join(differ)}")
    if state["epoch"] > epochs:
        parser.error(f"--resume: {ckpt} has {state['epoch']} epochs, more than --epochs "
                     f"{epochs}")
    return state


@keep_threads()
def main(argv: Sequence[str] | None = None) -> dict:
    """Train one preset, print the book's epoch lines; return config, history and final.

    torch's intra-op thread count is set from ``--threads`` for the run and restored after.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ensemble:
        result = ensemble(args.ensemble, args.data_dir)
        save_results(result, args.json, None)
        return result
    if (saved := cli.replay(parser, args, replot, table)) is not None:
        return saved

    c = config = resolve_config(args)
    set_threads(c["threads"], *step_work(c))
    from bptorch.data import load_mnist

    data = load_mnist(data_dir=c["data_dir"])
    x_train, y_train = data.train
    if c["train_size"] is not None:
        x_train, y_train = x_train[:c["train_size"]], y_train[:c["train_size"]]
    if c["expand"]:
        x_train, y_train = expand(x_train, y_train)
    n = x_train.shape[0]
    (x_val, y_val), (x_test, y_test) = data.validation, data.test
    config.update(n_train=n, data_source=data.source, torch_version=str(torch.__version__),
                  torch_threads=torch.get_num_threads(), bptorch_version=bptorch.__version__)

    torch.manual_seed(c["seed"])  # the initial weights
    net = build_net(c, bnn)
    if c["init"] == "book":
        book_init(net)
    if c["engine"] == "native":
        native = build_net(c, nn)
        copy_weights(native, net)
        net = native
    cost, opt = cost_fn(c["engine"]), make_optimizer(net, c, n)
    gen = torch.Generator().manual_seed(c["seed"])  # shuffles and shifts
    progress = not args.no_progress and sys.stderr.isatty()

    history: dict[str, list] = {"test_accuracy": [], "validation_accuracy": [],
                                "training_cost": [], "epoch_seconds": []}
    ckpt = checkpoint_path(args.json) if args.json else None
    if (state := resume_state(args, parser, config, c["epochs"])) is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # dropout masks
        history = state["history"]
        config["resumed_at"] = state["config"].get("resumed_at", [])
        if state["epoch"] < c["epochs"]:  # not a finished run read back
            config["resumed_at"].append(state["epoch"])
            print(f"Resuming {ckpt} after epoch {state['epoch'] - 1}", flush=True)
    first = len(history["test_accuracy"])

    for j in range(first, c["epochs"]):
        for group in opt.param_groups:
            group["lr"] = c["eta"] * c["eta_decay"] ** j
        start = time.perf_counter()
        train_epoch(net, cost, opt, x_train, y_train, c, gen, progress, desc=f"Epoch {j}")
        seconds = time.perf_counter() - start
        z_test = logits(net, x_test)
        k_test = int((z_test.argmax(1) == y_test).sum())
        k_val = int((logits(net, x_val).argmax(1) == y_val).sum())
        tc = training_cost(net, cost, x_train[:COST_SUBSET], y_train[:COST_SUBSET], c, n)
        history["test_accuracy"].append(k_test / len(y_test))
        history["validation_accuracy"].append(k_val / len(y_val))
        history["training_cost"].append(tc)
        history["epoch_seconds"].append(seconds)
        print(f"Epoch {j}: {k_test} / {len(y_test)}  (validation {k_val} / {len(y_val)}, "
              f"training cost {tc:.4f}, {seconds:.1f} s)", flush=True)
        if ckpt is not None:  # checkpoint first: a JSON never claims more than it holds
            save_atomic({"model": net.state_dict(), "optimizer": opt.state_dict(),
                         "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                         "history": history, "epoch": j + 1, "config": config}, ckpt)
            save_results({"config": config, "history": history,
                          "final": {"test_accuracy": k_test / len(y_test),
                                    "validation_accuracy": k_val / len(y_val)},
                          "complete": j + 1 == c["epochs"]}, args.json, None)

    if first == c["epochs"]:  # nothing trained here: no epoch's z_test
        z_test = logits(net, x_test)
    probs = torch.softmax(z_test, 1)
    final = {"test_accuracy": float((probs.argmax(1) == y_test).float().mean()),
             "validation_accuracy": history["validation_accuracy"][-1] if c["epochs"] else
             float((logits(net, x_val).argmax(1) == y_val).float().mean())}
    results = {"config": config, "history": history, "final": final, "complete": True}
    if args.save_test_probs:
        Path(args.save_test_probs).parent.mkdir(parents=True, exist_ok=True)
        torch.save(probs, args.save_test_probs)
    save_results(results, args.json, args.plot)
    return results


if __name__ == "__main__":
    main()
