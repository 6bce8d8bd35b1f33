#!/bin/sh
# The book's chapter 6 table at its own settings (issue 25), one preset after another, at
# the lowest priority. Each run checkpoints after every epoch (NAME.ckpt.pt) and rewrites
# NAME.json; run this script again to continue where it stopped.
#   nohup nice -n 19 sh results/conv_mnist/run-book.sh >/dev/null 2>&1 &
# Name presets to run only those, e.g. two chains on a 2-core machine:
#   nohup sh results/conv_mnist/run-book.sh two-conv expanded >/dev/null 2>&1 &
#   nohup sh results/conv_mnist/run-book.sh relu-l2 dropout >/dev/null 2>&1 &
# SEEDS="1 2 3 4" runs those seeds (default 0): the ensemble's other four dropout nets,
#   SEEDS="1 2 3 4" nohup sh results/conv_mnist/run-book.sh dropout >/dev/null 2>&1 &
# and, when all five are complete, the vote:
#   python -m experiments.conv_mnist --ensemble results/conv_mnist/dropout-book-seed[0-4].test-probs.pt \
#       --json results/conv_mnist/ensemble-book.json
cd "$(dirname "$0")/../.." || exit 1
out=results/conv_mnist
presets="${*:-simple two-conv relu-l2 expanded dropout}"
for preset in $presets; do
    for seed in ${SEEDS:-0}; do
        name="$preset-book-seed$seed"
        extra=""
        [ "$preset" = dropout ] && extra="--save-test-probs $out/$name.test-probs.pt"
        nice -n 19 python -m experiments.conv_mnist --preset "$preset" --threads 1 --no-progress \
            --seed "$seed" --json "$out/$name.json" --resume $extra \
            >>"$out/logs/$name.log" 2>&1 || exit 1
    done
done
[ $# -eq 0 ] && touch "$out/logs/BOOK_DONE"
exit 0
