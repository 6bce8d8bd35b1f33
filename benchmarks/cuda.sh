#!/usr/bin/env bash
# The GPU check, one command for a machine with CUDA (run from the repository root):
#   tests     the CUDA-parametrized tests (every test that takes the `device` fixture);
#   resnet    meanwhile, experiments.resnet on cuda, one run per engine:epochs in $RESNET_RUNS;
#   bp4       benchmarks.bp4_forms --device cuda (BP4's two written-out forms, ResNet step);
#   layers    benchmarks.layers --device cuda --no-compile;
#   kernels   the same rows twice, BPTORCH_KERNELS=reference then =triton (the Triton
#             kernels of bptorch.kernels off and on; "auto", the layers row, is on), and
#             tests/test_kernels.py and tests/test_kernels2.py on the GPU (their CUDA
#             cases; the interpreter's on CPU). On CUDA the rows include attention at
#             (32, 8, 1024, 64) bfloat16 against F.scaled_dot_product_attention and
#             LSTM(256, 256) against cuDNN (benchmarks.layers.cuda_cases), and Embedding,
#             whose backward is the scatter-add kernel under "triton"/"auto";
#   cudagraph run.py's CUDA section (steps, throughput, CUDA graph of the explicit step);
#   compiled  the compiled ResNet step row of benchmarks.layers on cuda.
#   convkernels  the implicit-GEMM conv kernels (issue 23 item 2): benchmarks.bp4_forms
#             --device cuda --no-resnet (BP4 against cuDNN's weight-gradient kernel and BP2
#             against its input gradient, at every ResNet conv shape: the "triton/aten"
#             and "bp2_triton/bp2_aten" columns; target ≤ 1.5), and tests/test_conv_gemm.py's
#             CUDA cases (the kernels against the unfolded reference and torch).
# $STAGES picks the stages (default: all). Logs and JSONs go to $OUT (default
# /tmp/bptorch-cuda). The data come from $BPTORCH_DATA (mnist.pkl.gz and
# fashion-mnist/*.gz there are enough; no network is needed).
#   BPTORCH_DATA=~/.cache/bptorch bash benchmarks/cuda.sh
set -uo pipefail
OUT=${OUT:-/tmp/bptorch-cuda}
STAGES=${STAGES:-tests resnet bp4 layers kernels cudagraph compiled convkernels}
RESNET_RUNS=${RESNET_RUNS:-bptorch:20 native:20 bptorch:30 native:30}
RESNET_TIMEOUT=${RESNET_TIMEOUT:-300}
mkdir -p "$OUT"
export BPTORCH_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
has() { [[ " $STAGES " == *" $1 "* ]]; }
log="$OUT/tests.log"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name())"; echo "stages: $STAGES"; } >"$log" 2>&1
# build both data caches once, before the parallel users below
$PY -c "from bptorch.data import load_mnist; load_mnist('mnist'); load_mnist('fashion-mnist')" \
  >>"$log" 2>&1

pids=()
if has resnet; then
  for run in $RESNET_RUNS; do
    e=${run%%:*} n=${run##*:}
    timeout "$RESNET_TIMEOUT" $PY -m experiments.resnet --device cuda --engine "$e" \
      --epochs "$n" --threads 1 --no-progress --json "$OUT/resnet-$e-$n.json" \
      >"$OUT/resnet-$e-$n.log" 2>&1 &
    pids+=($!)
  done
fi

if has tests; then
  start=$(date +%s)
  timeout 240 $PY -m pytest -q -k cuda -n 8 -p no:cacheprovider -rfE >>"$log" 2>&1
  echo "[pytest rc $? in $(( $(date +%s) - start )) s]" >>"$log"
fi

bench="$OUT/bench.log"
: >"$bench"
start=$(date +%s)
if has bp4; then
  timeout 90 $PY -m benchmarks.bp4_forms --device cuda >>"$bench" 2>&1
  echo "[bp4_forms rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
fi
if has layers; then
  timeout 120 $PY -m benchmarks.layers --device cuda --no-compile >>"$bench" 2>&1
  echo "[layers rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
fi
if has kernels; then
  for k in reference triton; do
    echo "[kernels: BPTORCH_KERNELS=$k]" >>"$bench"
    BPTORCH_KERNELS=$k timeout 120 $PY -m benchmarks.layers --device cuda --no-compile \
      >>"$bench" 2>&1
    echo "[layers, kernels $k, rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
  done
  timeout 240 $PY -m pytest -q -p no:cacheprovider -rfE tests/test_kernels.py \
    tests/test_kernels2.py >>"$bench" 2>&1
  echo "[test_kernels rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
fi
if has cudagraph; then
  timeout 60 $PY -c "
from benchmarks.run import section_cuda
for t in section_cuda(quick=True):
    print(t.markdown())" >>"$bench" 2>&1
  echo "[section (f) rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
fi
if has compiled; then
  timeout 100 $PY -c "
import json
from benchmarks.layers import compiled_resnet_row
print(json.dumps(dict(compiled_resnet_row(9, 'cuda'), device='cuda')))" >>"$bench" 2>&1
  echo "[compiled ResNet rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
fi
if has convkernels; then
  echo "[convkernels: bp4_forms --no-resnet, the triton columns]" >>"$bench"
  timeout 120 $PY -m benchmarks.bp4_forms --device cuda --no-resnet >>"$bench" 2>&1
  echo "[bp4_forms --no-resnet rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -rfE tests/test_conv_gemm.py -k cuda \
    >>"$bench" 2>&1
  echo "[test_conv_gemm cuda rc $?, $(( $(date +%s) - start )) s]" >>"$bench"
fi

if [ ${#pids[@]} -gt 0 ]; then
  wait "${pids[@]}"
  # the run logs in one file (the device tool brings back at most 8 files)
  for f in "$OUT"/resnet-*.log; do echo "== $f"; cat "$f"; rm "$f"; done >"$OUT/resnet.log"
fi
