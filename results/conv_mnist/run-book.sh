#!/bin/sh
# The book's chapter 6 table at its own settings (issue 25), one preset after another, at
# the lowest priority. Each run checkpoints after every epoch (NAME.ckpt.pt, not committed)
# and rewrites NAME.json; run this script again to continue where it stopped.
#   nohup nice -n 19 sh results/conv_mnist/run-book.sh >/dev/null 2>&1 &
# Name presets to run only those, e.g. two chains on a 2-core machine:
#   nohup sh results/conv_mnist/run-book.sh two-conv expanded >/dev/null 2>&1 &
#   nohup sh results/conv_mnist/run-book.sh relu-l2 dropout >/dev/null 2>&1 &
cd "$(dirname "$0")/../.." || exit 1
out=results/conv_mnist
presets="${*:-simple two-conv relu-l2 expanded dropout}"
for preset in $presets; do
    extra=""
    [ "$preset" = dropout ] && extra="--save-test-probs $out/$preset-book-seed0.test-probs.pt"
    nice -n 19 python -m experiments.conv_mnist --preset "$preset" --threads 1 --no-progress \
        --seed 0 --json "$out/$preset-book-seed0.json" --resume $extra \
        >>"$out/logs/$preset-book-seed0.log" 2>&1 || exit 1
done
[ $# -eq 0 ] && touch "$out/logs/BOOK_DONE"
exit 0
