#!/usr/bin/env bash
# The one prepared GPU run: CUDA tests, an end-to-end `fresnet train` of r50 from a RecordIO pack in
# bf16 and fp16, the training benchmark against arcface_torch's recipe, r100 rates and its largest
# batch, and a short inference check. One call, about 8 minutes; each step runs under its own time
# limit, so a slow step cannot lose the others' results. At most 9 files land in $OUT:
#
#   check.log         environment, every step's command, exit code, time and output tail, summary
#   tests.txt         pytest -m cuda (tests/test_cuda.py, the CUDA tests of tests/test_fast.py)
#   bench_train.txt   the benchmarks' output: training (r50 variants + convergence; r100 + largest batch),
#                     IJB feature extraction (r100, decode + align + embed), inference
#   bench_train.json  r50: samples/s per variant, ratio to arcface_torch, GPU memory, loss curves
#   bench_r100.json   r100: arcface_torch vs fresnet, largest batch
#   curves.png        the per-step loss of arcface_torch and fresnet from the same start
#   e2e.txt           `fresnet train` from the pack: bf16 (compiled) then fp16, with their samples/s; the
#                     training loader alone: worker decode vs GPU decode (bench_data.py --training-loader)
#   inference.json    optimize_for_inference on CUDA (r50, batch 1 and 256)
#   faces.json        photos -> embeddings (bench_faces.py): fresnet.FaceAnalysis vs InsightFace's path, 1/10/50
#                     faces per 1280x720 photo
#
# Worst case (every step at its limit) about 8.5 minutes; the limits are caps, not the expected times.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # on a CUDA machine (needs torch; no pip, no network)
#   DRY_RUN=1 OUT=/tmp/dry bash benchmarks/gpu_check.sh  # the same steps on the CPU at tiny sizes (logic check)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -n "${DRY_RUN:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: nothing to install there
export PYTHONUNBUFFERED=1
LOG="$OUT/check.log"
: >"$LOG"
START=$SECONDS
SCALE=1  # the dry run on a CPU is slower than the GPU: its limits stretch

step() {  # step NAME FILE SECONDS command...: run with a limit, append its output to FILE, log the tail
  local name=$1 file=$2 limit=$(($3 * SCALE)); shift 3
  [[ $file = /* ]] || file="$OUT/$file"
  echo "=== $name (t=$((SECONDS - START))s, limit ${limit}s): $*" | tee -a "$LOG"
  echo "=== $name: $*" >>"$file"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$file" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0))s" >>"$file"
  tail -n 25 "$file" >>"$LOG"
}

if [ -n "${DRY_RUN:-}" ]; then
  DEV=cpu
  SCALE=4
  export FRESNET_CUDA_TESTS_ON=cpu
  TESTS=("tests/test_cuda.py::test_forward_backward_on_cuda_matches_cpu_float64" -k "float64 and GDC or float64 and SE")
  SYNTH=(--identities 40 --images-per-identity 4 --holdout 10 --pairs 20 --size 32)
  NET='{input_size: [32, 32], filter_list: [16, 16, 32, 32, 64], units: [1, 1, 1, 1], emb_size: 64, net_output: E}'
  E2E=(max_steps=6 batch_size=16 log_every=2 num_workers=2)
  BENCH=(--model r18 --tiny --batch 8 --classes 40 --input-size 32 --steps 2 --warmup 1 --convergence-steps 6 --identities 20)
  R100=(--model r18 --tiny --batch 8 --classes 40 --input-size 32 --steps 2 --warmup 1 --variants arcface_torch,fresnet-eager)
  INF=(--models r18 --batches 1,2 --input-size 32 --rounds 2 --matmul-size 256 --paths eager,auto,fp32 --no-onnx)
  LOADER=(--batch-size 16 --steps 5 --workers 0 2)
  IJB=(--model r18 --faces 64 --distinct 16 --batch-size 16 --workers 2)
  FP16_E2E=(amp=bf16 compile=none)
  FACES=(--model r18 --faces 1,10 --photos 1 --rounds 1 --no-fast)
else
  DEV=cuda
  TESTS=(tests/test_cuda.py tests/test_fast.py -m cuda)
  SYNTH=(--identities 2000 --images-per-identity 2 --holdout 50 --pairs 200 --size 112)
  NET='{input_size: [112, 112]}'
  E2E=(max_steps=150 batch_size=128 log_every=25)
  BENCH=(--model r50 --batch 128 --classes 2000 --steps 12 --warmup 3
         --variants arcface_torch,fresnet-eager,fresnet-amp,fresnet-compiled,fresnet-cudagraphs
         --convergence-steps 300 --identities 200)
  R100=(--model r100 --batch 128 --classes 2000 --steps 6 --warmup 2 --variants arcface_torch,fresnet-amp --max-batch r100)
  INF=(--models r50 --batches 1,256 --paths eager,auto --rounds 5 --no-onnx)
  LOADER=(--batch-size 128 --steps 60 --workers 4 8 12)
  IJB=(--model r100 --fast --faces 20000 --distinct 1500 --batch-size 512)
  FP16_E2E=(amp=fp16 compile=none)
  FACES=(--model r50 --faces 1,10,50 --photos 4 --rounds 3)
fi

{
  date -u
  nvidia-smi 2>&1 | head -15 || true
  "$PY" - <<'EOF'
import sys, torch
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "bf16", torch.cuda.is_bf16_supported())
for name in ("torchvision", "triton", "onnxruntime", "safetensors", "yaml", "rich", "matplotlib", "graphviz"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError:
        print(name, "missing")
import fresnet, fresnet.train  # the project must import here, graphviz or not
print("fresnet", fresnet.__version__, "imports")
EOF
} >>"$LOG" 2>&1

# the RecordIO pack, written by the CLI in the background while the tests use the GPU
echo "=== synth (background): fresnet synth $WORK/data ${SYNTH[*]}" | tee -a "$LOG"
"$PY" -m fresnet synth "$WORK/data" "${SYNTH[@]}" >"$WORK/synth.txt" 2>&1 &
SYNTH_PID=$!

step tests tests.txt 120 "$PY" -m pytest -q -p no:cacheprovider -rs "${TESTS[@]}"
step bench_r50 bench_train.txt 150 "$PY" benchmarks/bench_train.py --device $DEV "${BENCH[@]}" \
  --json "$OUT/bench_train.json" --plot "$OUT/curves.png"

wait $SYNTH_PID; echo "=== synth: rc=$? $(tail -n 1 "$WORK/synth.txt")" | tee -a "$LOG"
COMMON=(--no-progress r50-arcface dataset="$WORK/data" "net=$NET" val_targets=[] checkpoint_every=0 overwrite=true)
step e2e_bf16 e2e.txt 45 "$PY" -m fresnet train "${COMMON[@]}" output="$WORK/e2e_bf16" amp=bf16 "${E2E[@]}"
step e2e_fp16 e2e.txt 35 "$PY" -m fresnet train "${COMMON[@]}" output="$WORK/e2e_fp16" "${FP16_E2E[@]}" "${E2E[@]}"
step loader e2e.txt 25 "$PY" benchmarks/bench_data.py --training-loader --rec "$WORK/data" --device $DEV "${LOADER[@]}"
step bench_r100 bench_train.txt 40 "$PY" benchmarks/bench_train.py --device $DEV "${R100[@]}" --json "$OUT/bench_r100.json"
step ijb_extract bench_train.txt 45 "$PY" benchmarks/bench_ijb.py --extract --device $DEV "${IJB[@]}"
step inference bench_train.txt 25 "$PY" benchmarks/bench_inference.py --device $DEV "${INF[@]}" --json "$OUT/inference.json"
# photos -> embeddings: fresnet.FaceAnalysis vs InsightFace's SCRFD + ArcFaceONNX (needs the oracle wheels
# and the scrfd sdist's graph, as `make venv` installs them; it says so and stops when they are absent)
step faces bench_train.txt 60 "$PY" benchmarks/bench_faces.py --device $DEV "${FACES[@]}" --json "$OUT/faces.json"

{
  echo "=== summary (t=$((SECONDS - START))s)"
  grep -h -E "passed|failed" "$OUT/tests.txt" | tail -n 1
  grep -h -E "^(arcface_torch|fresnet-[a-z0-9]+) +[0-9]" "$OUT/bench_train.txt"
  grep -h -E "^best:|mean over the last|batch [0-9]+: (fits|out of memory)|faces/s|^│ (1|10|50) " "$OUT/bench_train.txt"
  grep -h -E "^training on|^throughput:|^  decode=" "$OUT/e2e.txt"
  ls -la "$OUT"
} 2>&1 | tee -a "$LOG"
rm -rf "$WORK"
