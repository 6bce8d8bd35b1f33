"""A small residual network on Fashion-MNIST (or MNIST), built only from bptorch layers.

    python -m experiments.resnet                         # Fashion-MNIST, 20 epochs
    python -m experiments.resnet --dataset mnist         # digits (no horizontal flips)
    python -m experiments.resnet --engine native         # the same net in torch.nn
    python -m experiments.resnet --train-size 2000 --epochs 1   # a quick timing run

Beyond the book (chapter 6 stops at two conv layers): He et al.'s residual net for CIFAR
(arXiv:1512.03385, §4.2) scaled to 28×28 inputs. A 3×3 conv stem with 16 maps, three
stages of two basic blocks (16, 32, 64 maps at 28², 14², 7²; a block is conv-BN-ReLU-
conv-BN plus the identity, or a strided 1×1 conv-BN where the shape changes, then ReLU),
global average pooling and a linear layer: 14 weighted layers, 0.17 M parameters. Every
layer is a bptorch module (Conv2d, BatchNorm2d, ReLU, AdaptiveAvgPool2d, Flatten, Linear)
whose backward is written out; ``--engine native`` trains the same net built from
torch.nn, from the same initial weights, on the same mini-batches and augmentations.

The recipe (defaults): SGD with Nesterov momentum 0.9, weight decay 5e-4 on the conv and
linear weights (not on BatchNorm's γ, β or the biases), a one-cycle learning rate peaking
at η = 0.1, mini-batch 128, each image shifted by up to 2 pixels (a random crop of the
zero-padded image) and, on Fashion-MNIST, flipped left-right with probability ½; inputs
standardised with the training set's mean and standard deviation; softmax with the
log-likelihood cost. The model trains on the loader's 50,000 training images; each
epoch prints the test accuracy on the 10,000 test images, the validation accuracy, the
training cost (first 10,000 training images, no L2 term) and the training seconds.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import bptorch
from bptorch import cli
from bptorch import nn as bnn
from bptorch.threads import count_flops, keep_threads, set_threads
from experiments.conv_mnist import random_shift
from experiments.mnist import replot, save_results

DEFAULTS: dict[str, Any] = dict(
    dataset="fashion-mnist", widths=[16, 32, 64], blocks=2, epochs=20, batch_size=128,
    eta=0.1, momentum=0.9, weight_decay=5e-4, schedule="onecycle", shift=2, flip=None,
    seed=0, engine="bptorch", train_size=None, eval_size=None, data_dir=None, device="cpu",
    threads="auto")
COST_SUBSET = 10_000  # training images the per-epoch training cost is measured on
EVAL_CHUNK = 1_000


# -- the net ---------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), He et al.'s basic block.

    ``lib`` is ``bptorch.nn`` or ``torch.nn``: the two builds have the same state_dict keys.
    The shortcut is the identity, or a strided 1×1 conv + BN where the shape changes.
    """

    def __init__(self, lib, in_maps: int, maps: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = lib.Conv2d(in_maps, maps, 3, stride, 1, bias=False)
        self.bn1 = lib.BatchNorm2d(maps)
        self.relu = lib.ReLU()
        self.conv2 = lib.Conv2d(maps, maps, 3, 1, 1, bias=False)
        self.bn2 = lib.BatchNorm2d(maps)
        self.downsample = None
        if stride != 1 or in_maps != maps:
            self.downsample = nn.Sequential(lib.Conv2d(in_maps, maps, 1, stride, bias=False),
                                            lib.BatchNorm2d(maps))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def build_net(c: dict, lib) -> nn.Sequential:
    """Stem, ``len(widths)`` stages of ``blocks`` basic blocks (each stage after the first
    halves the maps' side), global average pooling, linear layer to 10 logits."""
    widths = c["widths"]
    mods: list[nn.Module] = [lib.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                             lib.BatchNorm2d(widths[0]), lib.ReLU()]
    maps = widths[0]
    for i, width in enumerate(widths):
        for j in range(c["blocks"]):
            mods.append(BasicBlock(lib, maps, width, 2 if i > 0 and j == 0 else 1))
            maps = width
    mods += [lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(maps, 10)]
    return nn.Sequential(*mods)


@torch.no_grad()
def he_init(net: nn.Module) -> None:
    """Convs N(0, 2/fan_out) (He et al., torchvision's ResNet init); BN γ = 1, β = 0; the
    linear layer keeps torch's default U(±1/√fan_in)."""
    for m in net.modules():
        if isinstance(m, (bnn.Conv2d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def cost_fn(engine: str):
    """Mean log-likelihood of softmax(z^L)."""
    return bnn.LogLikelihoodCost(logits=True) if engine == "bptorch" else nn.CrossEntropyLoss()


def make_optimizer(net: nn.Module, c: dict, steps: int):
    """SGD + Nesterov, weight decay on conv/linear weights only, and the η schedule."""
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": c["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}], lr=c["eta"],
                          momentum=c["momentum"], nesterov=c["momentum"] > 0)
    if c["schedule"] == "onecycle":  # warm up over the first 25%, then cosine down
        # (at least 8 steps: torch's OneCycleLR needs a warm-up of one step or more)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=c["eta"], total_steps=max(steps, 8), pct_start=0.25,
            cycle_momentum=False)
    elif c["schedule"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


# -- data ------------------------------------------------------------------------------
def augment(x: Tensor, c: dict, gen: torch.Generator) -> Tensor:
    """Random crop of the zero-padded image (a shift of up to ``shift`` pixels) and, if
    ``flip``, a left-right flip with probability ½, each image its own draw. Takes the
    raw pixels, so the padding is the images' own black background."""
    if c["shift"]:
        x = random_shift(x.cpu(), c["shift"], gen).to(x.device)
    if c["flip"]:
        flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# -- training --------------------------------------------------------------------------
def standardise(x: Tensor, c: dict) -> Tensor:
    """(x − mean)/std with the training set's pixel mean and standard deviation."""
    return (x - c["input_mean"]) / c["input_std"]


def train_epoch(net, cost, opt, sched, x: Tensor, y: Tensor, c: dict, gen: torch.Generator,
                progress: bool, desc: str) -> None:
    from tqdm import tqdm

    net.train()
    n, m = x.shape[0], c["batch_size"]
    perm = torch.randperm(n, generator=gen).to(x.device)
    x, y = x[perm], y[perm]
    for k in tqdm(range(0, n, m), desc=desc, leave=False, file=sys.stderr,
                  disable=not progress, unit="batch"):
        xb, yb = standardise(augment(x[k:k + m], c, gen), c), y[k:k + m]
        opt.zero_grad(set_to_none=True)
        cost(net(xb), yb).backward()
        opt.step()
        sched.step()


@torch.no_grad()
def logits(net: nn.Module, x: Tensor, c: dict) -> Tensor:
    """z^L for raw images x in eval mode (running BatchNorm statistics), in chunks."""
    net.eval()
    return torch.cat([net(standardise(x[i:i + EVAL_CHUNK], c))
                      for i in range(0, x.shape[0], EVAL_CHUNK)])


def step_flops(net: nn.Module, c: dict, device: torch.device) -> float:
    """FLOPs of one training step (forward and backward of a mini-batch), counted on a copy
    of the net so that the running statistics are left alone."""
    probe = copy.deepcopy(net).train()
    x = torch.zeros(c["batch_size"], 1, 28, 28, device=device)
    return count_flops(lambda: probe(x).sum().backward())


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.resnet", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    d = DEFAULTS
    p.add_argument("--dataset", choices=["fashion-mnist", "mnist"],
                   help=f"default {d['dataset']}")
    p.add_argument("--widths", type=cli.positive_int, nargs="+",
                   help=f"maps per stage (default {d['widths']})")
    p.add_argument("--blocks", type=cli.positive_int,
                   help=f"basic blocks per stage (default {d['blocks']})")
    p.add_argument("--epochs", type=cli.non_negative_int,
                   help=f"0: evaluate the initial net only (default {d['epochs']})")
    p.add_argument("--batch-size", type=cli.positive_int,
                   help=f"mini-batch size (default {d['batch_size']})")
    p.add_argument("--eta", type=cli.positive_float,
                   help=f"peak learning rate η (default {d['eta']})")
    p.add_argument("--momentum", type=cli.probability,
                   help=f"Nesterov momentum; 0 for plain SGD (default {d['momentum']})")
    p.add_argument("--weight-decay", type=cli.non_negative_float,
                   help=f"L2 on conv/linear weights (default {d['weight_decay']})")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"],
                   help=f"η schedule, stepped every mini-batch (default {d['schedule']})")
    p.add_argument("--shift", type=cli.non_negative_int,
                   help=f"random crop: shift each image by up to this many pixels "
                        f"(default {d['shift']}; 0: none)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction,
                   help="random left-right flips (default: on for fashion-mnist, off for mnist)")
    p.add_argument("--seed", type=cli.non_negative_int,
                   help="weights, shuffles, augmentation (default 0)")
    cli.add_engine(p, ("bptorch", "native"), None, help_default="bptorch")
    p.add_argument("--train-size", type=cli.positive_int,
                   help="train on the first N images (default all)")
    p.add_argument("--eval-size", type=cli.positive_int,
                   help="evaluate on the first N test and validation images (default all)")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--device", type=cli.device, help="default cpu")
    p.add_argument("--threads", type=cli.threads,
                   help="torch intra-op threads, or auto: bptorch.threads.choose_threads "
                        "from the work per step (default auto)")
    cli.add_results_flags(p, "the learning curves")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    """defaults < flags given on the command line; flip follows the dataset unless given."""
    config = dict(DEFAULTS)
    config.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    if config["flip"] is None:
        config["flip"] = config["dataset"] == "fashion-mnist"  # digits are not symmetric
    config["widths"] = list(config["widths"])
    return config


@keep_threads()
def main(argv: Sequence[str] | None = None) -> dict:
    """Train, print one line per epoch; return config, history and final accuracies.

    torch's intra-op thread count is set from ``--threads`` for the run and restored after.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if (saved := cli.replay(parser, args, replot)) is not None:
        return saved

    c = config = resolve_config(args)
    from bptorch.data import load_mnist

    device = torch.device(c["device"])
    data = load_mnist(c["dataset"], c["data_dir"], device=device)
    x_train, y_train = data.train
    if c["train_size"] is not None:
        x_train, y_train = x_train[:c["train_size"]], y_train[:c["train_size"]]
    (x_val, y_val), (x_test, y_test) = data.validation, data.test
    if c["eval_size"] is not None:
        x_val, y_val = x_val[:c["eval_size"]], y_val[:c["eval_size"]]
        x_test, y_test = x_test[:c["eval_size"]], y_test[:c["eval_size"]]
    x_train, x_val, x_test = (x.view(-1, 1, 28, 28) for x in (x_train, x_val, x_test))
    n = x_train.shape[0]
    # inputs are standardised with the statistics of the images trained on
    config.update(input_mean=float(x_train.mean()), input_std=float(x_train.std()))

    torch.manual_seed(c["seed"])  # the initial weights
    net = build_net(c, bnn).to(device)
    he_init(net)
    if c["engine"] == "native":
        native = build_net(c, nn).to(device)
        native.load_state_dict(net.state_dict())  # the same keys: a drop-in twin
        net = native
    threads = set_threads(c["threads"], flops=step_flops(net, c, device),
                          rows=c["batch_size"] * 28 * 28)
    steps = c["epochs"] * -(-n // c["batch_size"])
    cost, (opt, sched) = cost_fn(c["engine"]), make_optimizer(net, c, steps)
    gen = torch.Generator().manual_seed(c["seed"])  # shuffles and augmentation
    progress = not args.no_progress and sys.stderr.isatty()
    config.update(n_train=n, data_source=data.source,
                  parameters=sum(p.numel() for p in net.parameters()),
                  torch_version=str(torch.__version__), torch_threads=threads,
                  bptorch_version=bptorch.__version__)

    history: dict[str, list] = {"test_accuracy": [], "validation_accuracy": [],
                                "training_cost": [], "epoch_seconds": []}
    for j in range(c["epochs"]):
        start = time.perf_counter()
        train_epoch(net, cost, opt, sched, x_train, y_train, c, gen, progress, f"Epoch {j}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        k_test = int((logits(net, x_test, c).argmax(1) == y_test).sum())
        k_val = int((logits(net, x_val, c).argmax(1) == y_val).sum())
        with torch.no_grad():
            tc = float(cost(logits(net, x_train[:COST_SUBSET], c), y_train[:COST_SUBSET]))
        history["test_accuracy"].append(k_test / len(y_test))
        history["validation_accuracy"].append(k_val / len(y_val))
        history["training_cost"].append(tc)
        history["epoch_seconds"].append(seconds)
        print(f"Epoch {j}: {k_test} / {len(y_test)}  (validation {k_val} / {len(y_val)}, "
              f"training cost {tc:.4f}, {seconds:.1f} s)", flush=True)

    final = {"test_accuracy": float((logits(net, x_test, c).argmax(1) == y_test).float().mean()),
             "validation_accuracy": float((logits(net, x_val, c).argmax(1) == y_val)
                                          .float().mean())}
    results = {"config": config, "history": history, "final": final}
    save_results(results, args.json, args.plot)
    return results


if __name__ == "__main__":
    main()
