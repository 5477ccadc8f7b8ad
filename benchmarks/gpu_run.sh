#!/usr/bin/env bash
# One GPU session, prepared to run unattended in ~7 minutes: CUDA correctness tests of the fast
# paths, then the inference and training benchmarks, each step under its own time limit so a slow
# step cannot lose the others' results. Everything lands in $OUT (at most 8 files).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh            # on a CUDA machine
#   DRY_RUN=1 OUT=/tmp/dry bash benchmarks/gpu_run.sh  # the same steps on CPU, tiny sizes (logic check)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ -n "${DRY_RUN:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_run.log"
: >"$LOG"

step() {  # step NAME SECONDS command...: run with a time limit, log its tail, never abort the script
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - start))s" | tee -a "$LOG"
  tail -n 40 "$OUT/$name.txt" >>"$LOG"
}

if [ -n "${DRY_RUN:-}" ]; then
  DEV=cpu
  INF_SMALL=(--models r18 --batches 1,2 --input-size 32 --rounds 2 --matmul-size 256 --paths eager,auto,fp32,bf16,bf16-all,bf16+1,onnxruntime)
  INF_COMPILED=(--models r18 --batches 1 --input-size 32 --rounds 2 --matmul-size 256 --paths eager,fp32-compiled --no-onnx)
  TRAIN=(--model r18 --batch 4 --classes 100 --input-size 32 --steps 2 --convergence-model r18 --convergence-steps 3 --identities 4)
  TEST_FILTER="cuda or gnap"
else
  DEV=cuda
  INF_SMALL=(--models r18,r50,r100 --batches 1,32,256 --paths eager,auto,fp32,fp16,fp16-all,fp16+1,bf16,onnxruntime)
  INF_COMPILED=(--models r50 --batches 1,32 --paths eager,fp16,fp16-compiled --no-onnx)
  TRAIN=(--model r50 --batch 128 --classes 10000 --steps 10 --compile --convergence-model r50 --convergence-steps 60 --identities 32)
  TEST_FILTER="cuda or gnap"
fi

{
  date -u
  nvidia-smi 2>&1 | head -20 || true
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 || true
} >>"$LOG" 2>&1

step tests 75 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast.py -k "$TEST_FILTER" -rs
step inference 110 "$PY" benchmarks/bench_inference.py --device $DEV "${INF_SMALL[@]}" --json "$OUT/inference.json"
step inference_compiled 130 "$PY" benchmarks/bench_inference.py --device $DEV "${INF_COMPILED[@]}" --json "$OUT/inference_compiled.json"
step train 80 "$PY" benchmarks/bench_train.py --device $DEV "${TRAIN[@]}" --json "$OUT/train.json"
echo "done $(date -u)" | tee -a "$LOG"
ls -la "$OUT" >>"$LOG"
