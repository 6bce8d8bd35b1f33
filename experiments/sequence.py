"""Sequence models on MNIST: an LSTM that reads each image row by row, and a small vision
transformer whose tokens are image patches (issue 13; beyond the book, whose chapter 5
explains why plain recurrent nets learn slowly and chapter 6 ends with convolutional nets).

    python -m experiments.sequence --model lstm          # 28 steps of 28 pixels: >= 98.5%
    python -m experiments.sequence --model transformer   # 16 patches of 7×7: >= 98.0%

Every layer is a bptorch module whose backward is written out: LSTM (backpropagation
through time), MultiheadAttention (the softmax Jacobian row by row), LayerNorm, GELU,
Linear; ``--engine native`` trains the same net built from torch.nn, from the same initial
weights (state_dict copied) and on the same mini-batches. The cost is the log-likelihood of
softmax(z^L), averaged over the mini-batch.

* lstm: LSTM(28, hidden) over the 28 rows, then Linear(hidden, 10) on h_T.
* transformer: each 7×7 patch is a token (Linear(49, dim)) plus a learned position
  embedding, ``depth`` pre-norm blocks x += MHA(LN(x)); x += MLP(LN(x)) with
  MLP = Linear(dim, mlp), GELU, Linear(mlp, dim), then LN and Linear(dim, 10) on a class
  token (``--pool cls``) or on the mean of the tokens (``--pool mean``).

Training: Adam (lstm) or AdamW (transformer), the learning rate ramped up over the first
``--warmup`` steps and multiplied by ``--eta-decay`` after every epoch. Each epoch prints
``Epoch j: k / 10000`` (test images right), then validation accuracy, training cost (first
10,000 training images) and seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import bptorch
from bptorch import cli
from bptorch import nn as bnn
from bptorch.threads import keep_threads, set_threads
from experiments.mnist import replot, save_results

# The recipes: chosen to reach the targets in a few epochs on a small CPU.
MODELS: dict[str, dict[str, Any]] = {
    "lstm": dict(hidden=128, layers=1, forget_bias=1.0, optimizer="adam", eta=2e-3,
                 eta_decay=0.8, warmup=0, weight_decay=0.0, epochs=12, batch_size=128),
    "transformer": dict(patch=7, dim=64, depth=4, heads=4, mlp=128, pool="cls",
                        optimizer="adamw", eta=2e-3, eta_decay=0.75, warmup=100,
                        weight_decay=0.05, epochs=12, batch_size=64),
}
TARGET_ACCURACY = {"lstm": 0.985, "transformer": 0.980}
DEFAULTS: dict[str, Any] = dict(
    model="lstm", hidden=None, layers=None, forget_bias=None, patch=None, dim=None, depth=None, heads=None,
    mlp=None, pool=None, optimizer=None, eta=None, eta_decay=None, warmup=None, weight_decay=None,
    epochs=None,
    batch_size=None, seed=0, engine="bptorch", train_size=None, data_dir=None, threads="auto")
COST_SUBSET = 10_000
EVAL_CHUNK = 1_000


# -- the nets --------------------------------------------------------------------------
class RowLSTM(nn.Module):
    """LSTM over the image's rows (batch_first (N, 28, 28)), Linear on the last h_T."""

    def __init__(self, c: dict, lib) -> None:
        super().__init__()
        self.lstm = lib.LSTM(28, c["hidden"], c["layers"], batch_first=True)
        self.head = lib.Linear(c["hidden"], 10)
        h = c["hidden"]
        with torch.no_grad():  # forget gates start at σ(forget_bias) (torch's init: σ(0) = ½)
            for k in range(c["layers"]):  # gates are stacked (i, f, g, o) in the biases
                getattr(self.lstm, f"bias_ih_l{k}")[h:2 * h] = c["forget_bias"]
                getattr(self.lstm, f"bias_hh_l{k}")[h:2 * h] = 0.0

    def forward(self, x: Tensor) -> Tensor:
        _output, (h_n, _c_n) = self.lstm(x.view(-1, 28, 28))
        return self.head(h_n[-1])  # z^L, (N, 10)


class Block(nn.Module):
    """Pre-norm transformer block: x += MHA(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, lib) -> None:
        super().__init__()
        self.norm1 = lib.LayerNorm(dim)
        self.attn = lib.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = lib.LayerNorm(dim)
        self.mlp = nn.Sequential(lib.Linear(dim, mlp), lib.GELU(), lib.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        a = self.norm1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PatchTransformer(nn.Module):
    """A small vision transformer: p×p patches as tokens, learned positions; the head
    reads a class token (``pool="cls"``) or the mean of the patch tokens (``"mean"``)."""

    def __init__(self, c: dict, lib) -> None:
        super().__init__()
        p, dim = c["patch"], c["dim"]
        if 28 % p:
            raise ValueError(f"--patch must divide 28, got {p}")
        self.patch, self.pool, tokens = p, c["pool"], (28 // p) ** 2
        self.embed = lib.Linear(p * p, dim)
        if self.pool == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            tokens += 1
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, c["heads"], c["mlp"], lib)
                                      for _ in range(c["depth"])])
        self.norm = lib.LayerNorm(dim)
        self.head = lib.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        n, p, g = x.shape[0], self.patch, 28 // self.patch
        patches = x.view(n, g, p, g, p).transpose(2, 3).reshape(n, g * g, p * p)
        tokens = self.embed(patches)
        if self.pool == "cls":
            tokens = torch.cat([self.cls.expand(n, -1, -1), tokens], 1)
        h = self.norm(self.blocks(tokens + self.pos))
        return self.head(h[:, 0] if self.pool == "cls" else h.mean(1))  # z^L, (N, 10)


def build_net(c: dict, lib) -> nn.Module:
    """The net of ``c["model"]`` from ``lib``: ``bptorch.nn`` or ``torch.nn`` (same keys)."""
    return RowLSTM(c, lib) if c["model"] == "lstm" else PatchTransformer(c, lib)


def cost_fn(engine: str):
    """Mean log-likelihood of softmax(z^L)."""
    return bnn.LogLikelihoodCost(logits=True) if engine == "bptorch" else nn.CrossEntropyLoss()


def make_optimizer(net: nn.Module, c: dict) -> torch.optim.Optimizer:
    """Adam, or AdamW with decoupled weight decay on the matrices only (not biases, norms,
    embeddings' class token or positions)."""
    if c["optimizer"] == "adam":
        return torch.optim.Adam(net.parameters(), lr=c["eta"], weight_decay=c["weight_decay"])
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and n not in ("cls", "pos")]
    rest = [p for n, p in net.named_parameters() if not (p.dim() >= 2 and n not in ("cls", "pos"))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                              {"params": rest, "weight_decay": 0.0}], lr=c["eta"])


# -- training --------------------------------------------------------------------------
def learning_rate(c: dict, epoch: int, step: int) -> float:
    """η · decay^epoch, ramped up linearly over the first ``warmup`` steps of the run."""
    ramp = min(1.0, (step + 1) / c["warmup"]) if c["warmup"] else 1.0
    return c["eta"] * c["eta_decay"] ** epoch * ramp


def train_epoch(net, cost, opt, x: Tensor, y: Tensor, c: dict, gen: torch.Generator,
                progress: bool, desc: str, epoch: int = 0) -> None:
    from tqdm import tqdm

    net.train()
    n, m = x.shape[0], c["batch_size"]
    perm = torch.randperm(n, generator=gen)
    x, y = x[perm], y[perm]
    steps_before = epoch * -(-n // m)
    for i, k in enumerate(tqdm(range(0, n, m), desc=desc, leave=False, file=sys.stderr,
                               disable=not progress, unit="batch")):
        for group in opt.param_groups:
            group["lr"] = learning_rate(c, epoch, steps_before + i)
        opt.zero_grad(set_to_none=True)
        cost(net(x[k:k + m]), y[k:k + m]).backward()
        opt.step()


@torch.no_grad()
def logits(net: nn.Module, x: Tensor) -> Tensor:
    net.eval()
    return torch.cat([net(x[i:i + EVAL_CHUNK]) for i in range(0, x.shape[0], EVAL_CHUNK)])


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.sequence", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--model", choices=list(MODELS), help="default lstm")
    p.add_argument("--hidden", type=cli.positive_int, help="lstm: hidden size H (default 128)")
    p.add_argument("--layers", type=cli.positive_int, help="lstm: stacked layers (default 1)")
    p.add_argument("--forget-bias", type=cli.finite_float,
                   help="lstm: the forget gates' total bias at init, so f starts at σ(b) "
                        "(default 1; 0 gives torch's f ≈ ½, whose gradient halves every step "
                        "back: experiments.vanishing_time)")
    p.add_argument("--patch", type=cli.positive_int, help="transformer: patch side (default 7)")
    p.add_argument("--dim", type=cli.positive_int, help="transformer: embedding width (default 64)")
    p.add_argument("--depth", type=cli.positive_int, help="transformer: blocks (default 4)")
    p.add_argument("--heads", type=cli.positive_int,
                   help="transformer: attention heads (default 4)")
    p.add_argument("--mlp", type=cli.positive_int,
                   help="transformer: MLP hidden width (default 128)")
    p.add_argument("--pool", choices=["cls", "mean"],
                   help="transformer: classify from a class token or the mean token "
                        "(default cls)")
    p.add_argument("--optimizer", choices=["adam", "adamw"],
                   help="default adam (lstm), adamw (transformer)")
    p.add_argument("--eta", type=cli.positive_float, help="learning rate (default 2e-3)")
    p.add_argument("--eta-decay", type=cli.positive_float,
                   help="multiply η by this after every epoch "
                                                   "(default 0.8 (lstm), 0.75 (transformer))")
    p.add_argument("--warmup", type=cli.non_negative_int,
                   help="ramp η up linearly over this many first steps "
                                              "(default 0 (lstm), 100 (transformer))")
    p.add_argument("--weight-decay", type=cli.non_negative_float,
                   help="default 0 (lstm), 0.05 (transformer)")
    p.add_argument("--epochs", type=cli.non_negative_int, help="default 12")
    p.add_argument("--batch-size", type=cli.positive_int,
                   help="default 128 (lstm), 64 (transformer)")
    p.add_argument("--seed", type=cli.non_negative_int, help="weights and shuffles (default 0)")
    cli.add_engine(p, ("bptorch", "native"), None, help_default="bptorch")
    p.add_argument("--train-size", type=cli.positive_int,
                   help="train on the first N images (default all "
                                                  "50,000)")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--threads", type=cli.threads,
                   help="torch intra-op threads, or auto (default auto)")
    cli.add_results_flags(p, "the learning curves")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


# the flags that shape one model's net only; given for the other model they are an error
ARCHITECTURE = {"lstm": ("hidden", "layers", "forget_bias"),
                "transformer": ("patch", "dim", "depth", "heads", "mlp", "pool")}


def resolve_config(args: argparse.Namespace) -> dict:
    """defaults < the model's recipe < flags given on the command line. The config records
    every flag; the other model's architecture flags are left out (and an error if given)."""
    model = args.model or DEFAULTS["model"]
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    other = [k for m, keys in ARCHITECTURE.items() if m != model for k in keys]
    wrong = [k for k in other if k in flags]
    if wrong:
        raise ValueError(f"--{wrong[0]} applies to --model "
                         f"{'lstm' if wrong[0] in ARCHITECTURE['lstm'] else 'transformer'}, "
                         f"not {model}")
    config = {k: v for k, v in DEFAULTS.items() if k not in other}
    config.update(MODELS[model])
    config.update(flags)
    config["model"] = model
    config["target_test_accuracy"] = TARGET_ACCURACY[model]
    if model == "transformer":  # checked here, before the data loads
        if 28 % config["patch"]:
            raise ValueError(f"--patch: expected a divisor of 28, the image side (1, 2, 4, 7, "
                             f"14 or 28), got {config['patch']}")
        if config["dim"] % config["heads"]:
            raise ValueError(f"--dim: expected a multiple of --heads {config['heads']} (each "
                             f"head takes dim/heads features), got {config['dim']}")
    return config


def step_work(net: nn.Module, cost, c: dict, x: Tensor, y: Tensor) -> tuple[float, int]:
    """(FLOPs, GEMM rows) of one training step, for bptorch.threads.choose_threads: the
    FLOPs counted on one mini-batch (the RNG is left as it was; the gradients it leaves
    are cleared by the first step); the rows are the batch's (× tokens for the
    transformer, whose GEMMs run over every token)."""
    from bptorch.threads import count_flops

    m = c["batch_size"]
    flops = count_flops(lambda: cost(net(x[:m]), y[:m]).backward())
    tokens = 1 if c["model"] == "lstm" else (28 // c["patch"]) ** 2 + 1
    return flops, m * tokens


@keep_threads()
def main(argv: Sequence[str] | None = None) -> dict:
    """Train one model, print one line per epoch; return config, history and final.

    torch's intra-op thread count is set from ``--threads`` for the run and restored after.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if (saved := cli.replay(parser, args, replot)) is not None:
        return saved

    try:
        c = config = resolve_config(args)
    except ValueError as e:
        parser.error(str(e))
    from bptorch.data import load_mnist

    data = load_mnist(data_dir=c["data_dir"])
    x_train, y_train = data.train
    if c["train_size"] is not None:
        x_train, y_train = x_train[:c["train_size"]], y_train[:c["train_size"]]
    n = x_train.shape[0]
    (x_val, y_val), (x_test, y_test) = data.validation, data.test

    torch.manual_seed(c["seed"])  # the initial weights, drawn once by the bptorch net
    net = build_net(c, bnn)
    if c["engine"] == "native":
        native = build_net(c, nn)
        native.load_state_dict(net.state_dict())  # torch.nn's keys: the same state_dict
        net = native
    cost, opt = cost_fn(c["engine"]), make_optimizer(net, c)
    set_threads(c["threads"], *step_work(net, cost, c, x_train, y_train))
    config.update(n_train=n, data_source=data.source, torch_version=str(torch.__version__),
                  torch_threads=torch.get_num_threads(), bptorch_version=bptorch.__version__)
    gen = torch.Generator().manual_seed(c["seed"])  # the shuffles
    progress = not args.no_progress and sys.stderr.isatty()

    history: dict[str, list] = {"test_accuracy": [], "validation_accuracy": [],
                                "training_cost": [], "epoch_seconds": []}
    for j in range(c["epochs"]):
        start = time.perf_counter()
        train_epoch(net, cost, opt, x_train, y_train, c, gen, progress, f"Epoch {j}", j)
        seconds = time.perf_counter() - start
        k_test = int((logits(net, x_test).argmax(1) == y_test).sum())
        k_val = int((logits(net, x_val).argmax(1) == y_val).sum())
        with torch.no_grad():
            tc = float(cost(logits(net, x_train[:COST_SUBSET]), y_train[:COST_SUBSET]))
        history["test_accuracy"].append(k_test / len(y_test))
        history["validation_accuracy"].append(k_val / len(y_val))
        history["training_cost"].append(tc)
        history["epoch_seconds"].append(seconds)
        print(f"Epoch {j}: {k_test} / {len(y_test)}  (validation {k_val} / {len(y_val)}, "
              f"training cost {tc:.4f}, {seconds:.1f} s)", flush=True)

    k_test = int((logits(net, x_test).argmax(1) == y_test).sum())
    k_val = int((logits(net, x_val).argmax(1) == y_val).sum())
    acc = history["test_accuracy"]
    final = {"test_accuracy": k_test / len(y_test), "validation_accuracy": k_val / len(y_val),
             "best_test_accuracy": max(acc) if acc else k_test / len(y_test),
             "best_epoch": acc.index(max(acc)) if acc else None,
             "wall_seconds": sum(history["epoch_seconds"])}
    results = {"config": config, "history": history, "final": final}
    save_results(results, args.json, args.plot)
    return results


if __name__ == "__main__":
    main()
