"""The book's configurations of :class:`bptorch.Network` on MNIST, in one table.

``experiments/mnist.py`` (``--preset``) and ``benchmarks/run.py`` (the epoch timings)
read them from here. Each preset gives:

* ``sizes``: neurons per layer, input first;
* ``cost``: "quadratic", "cross_entropy" or "log_likelihood" (softmax output);
* ``init``: "large", N(0, 1) weights (chapter 1), or "scaled", N(0, 1/n_in) (chapter 3);
* ``eta``: the SGD learning rate η; ``lmbda``: the L2 parameter λ (decay 1 − ηλ/n);
* ``batch_size``: the mini-batch size m; ``epochs``: passes over the training set.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BOOK_ACCURACY", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "ch1": dict(sizes=[784, 30, 10], cost="quadratic", init="large", eta=3.0, lmbda=0.0,
                batch_size=10, epochs=30),
    "ch1-100": dict(sizes=[784, 100, 10], cost="quadratic", init="large", eta=3.0,
                    lmbda=0.0, batch_size=10, epochs=30),
    "ch3": dict(sizes=[784, 100, 10], cost="cross_entropy", init="scaled", eta=0.5,
                lmbda=5.0, batch_size=10, epochs=30),
    "ch3-softmax": dict(sizes=[784, 100, 10], cost="log_likelihood", init="scaled", eta=0.5,
                        lmbda=5.0, batch_size=10, epochs=30),
}

# The accuracy the book reports for each preset (None: not given). Chapter 1 gives peak
# test accuracy; chapter 3's 97.92% is the final *validation* accuracy, of a run started
# with large_weight_initializer (the scaled init comes later in that chapter).
BOOK_ACCURACY: dict[str, float | None] = {
    "ch1": 0.9542, "ch1-100": 0.9659, "ch3": 0.9792, "ch3-softmax": None}
