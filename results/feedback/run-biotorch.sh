#!/bin/sh
# BioTorch's LeNet table (issue 25), cell by cell: each rule on MNIST and Fashion-MNIST with
# BioTorch's per-rule Adam recipe (experiments.feedback --recipe biotorch-adam), three seeds,
# each seed's epoch chosen on 10,000 validation images held out of training; one JSON per
# seed (PATH.ckpt.pt after every epoch, so a run continues where it stopped: --resume). A
# complete JSON is skipped; run the script again to go on. Name cells (DATASET-RULE) to run
# only those; two chains on 2 cores:
#   nohup sh results/feedback/run-biotorch.sh fashion-mnist-dfa fashion-mnist-frsf ... &
# SEEDS="0" runs only those seeds (default 0 1 2), e.g. every cell's first seed first.
# REFIT=1 follows each complete seed with its refit (--refit): the same run on all 60,000
# training images for the epochs validation chose, PATH.refit.json beside PATH.json.
# The table, with each cell's median of three seeds:
#   python -m experiments.feedback --from-json results/feedback/*-biotorch-adam-seed*.json --table
cd "$(dirname "$0")/../.." || exit 1
out=results/feedback
cells="${*:-fashion-mnist-dfa fashion-mnist-frsf fashion-mnist-brsf fashion-mnist-usf \
fashion-mnist-fa fashion-mnist-bp mnist-dfa mnist-fa mnist-frsf mnist-brsf mnist-usf mnist-bp}"
complete() {  # a JSON that says its run is complete
    python -c "import json, sys; sys.exit(not json.load(open(sys.argv[1])).get('complete'))" \
        "$1" 2>/dev/null
}
for cell in $cells; do
    dataset="${cell%-*}"
    rule="${cell##*-}"
    for seed in ${SEEDS:-0 1 2}; do
        json="$out/lenet-$dataset-$rule-biotorch-adam-seed$seed.json"
        log="$out/logs/lenet-$dataset-$rule-biotorch-adam-seed$seed"
        complete "$json" || OMP_NUM_THREADS=1 nice -n 10 python -m experiments.feedback \
            --model lenet --rule "$rule" --dataset "$dataset" --recipe biotorch-adam \
            --seed "$seed" --resume --threads 1 --no-progress --json "$json" >>"$log.log" 2>&1 \
            || exit 1
        [ -n "$REFIT" ] || continue
        refit="${json%.json}.refit.json"
        complete "$refit" || OMP_NUM_THREADS=1 nice -n 10 python -m experiments.feedback \
            --refit "$json" --resume --threads 1 --no-progress --json "$refit" \
            >>"$log.refit.log" 2>&1 || exit 1
    done
done
exit 0
