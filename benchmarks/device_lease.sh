#!/usr/bin/env bash
# What ran on the lent GPU machine (README "GPU runs"): the CUDA tests, the device timings,
# then trainings of configs/train_gpu.yaml side by side until a deadline (as many epochs
# as the measured step time allows), exported for evaluation on the CPU.
#   OUT=<folder> DEADLINE_S=<seconds from start> RUNS="gpu_w48 [gpu_w64]" [BATCH=512 LR=3e-3] \
#     bash benchmarks/device_lease.sh
# Needs a CUDA torch; pydantic & co. come as wheels in .whl/ where the machine lacks them.
set -u
T0=$(date +%s)
OUT=${OUT:-reports/device}
DEADLINE_S=${DEADLINE_S:-500}
. benchmarks/device_env.sh lease.log

echo "== [$(elapsed) s] CUDA tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/integration/test_cuda.py 2>&1 | tail -25

if [ "${BATCH:-128}" = 128 ]; then  # stop 9: the timings of all batch sizes, FP32 training
echo "== [$(elapsed) s] device timings (recipe default: AMP on CUDA)"
timeout 120 python3 benchmarks/bench_device.py --device cuda --batch-sizes 32 128 512 \
  --inference-batches 256 2048 --out "$OUT/bench_device_amp.json"
echo "== [$(elapsed) s] device timings (FP32, as the training runs below)"
timeout 60 python3 benchmarks/bench_device.py --device cuda --batch-sizes 128 --no-profile \
  --set optim.amp=false --inference-batches --out "$OUT/bench_device_fp32.json"
AMP=false
else  # stop 10: the training batch only, AMP vs FP32; the faster one trains
echo "== [$(elapsed) s] device timings at batch $BATCH (AMP, then FP32)"
timeout 60 python3 benchmarks/bench_device.py --device cuda --batch-sizes "$BATCH" --no-profile \
  --inference-batches --out "$OUT/bench_device_amp.json"
timeout 60 python3 benchmarks/bench_device.py --device cuda --batch-sizes "$BATCH" --no-profile \
  --set optim.amp=false --inference-batches --out "$OUT/bench_device_fp32.json"
AMP=$(python3 -c "import json; t=lambda f: json.load(open(f))['training'][0]['seconds_per_step']; \
print(str(t('$OUT/bench_device_amp.json') < t('$OUT/bench_device_fp32.json')).lower())" \
  2>/dev/null || echo false)
fi
BENCH=$([ "$AMP" = true ] && echo amp || echo fp32)

echo "== [$(elapsed) s] trainings: ${RUNS:=gpu_w48} (batch ${BATCH:=128}, lr ${LR:=2e-3}, amp $AMP)"
STEP=$(python3 -c "import json; print(json.load(open('$OUT/bench_device_$BENCH.json'))\
['training'][0]['seconds_per_step'])" 2>/dev/null || echo 0.3)
VAL=$(python3 -c "import json; print(json.load(open('$OUT/bench_device_fp32.json'))\
['training'][0]['validation_s'])" 2>/dev/null || echo 5)
SPE=$(python3 -c "from risloc.training.config import load_train_config as f; \
print(f('configs/train_gpu.yaml', []).schedule.steps_per_epoch)")
LEFT=$(( DEADLINE_S - $(elapsed) - 15 ))
# runs side by side share the GPU: on the first lease two runs took 2.0x the time of one
N_RUNS=$(echo $RUNS | wc -w)
EPOCHS=$(python3 -c "print(max(2, int(0.92 * $LEFT / ($N_RUNS * $SPE * $STEP + $VAL + 3))))")
echo "step ${STEP}s at batch $BATCH (amp $AMP), validation ${VAL}s, ${LEFT}s left -> $EPOCHS epochs"
mkdir -p runs
for n in $RUNS; do
  case $n in
    gpu_w48) extra=() ;;
    gpu_w64) extra=(--set model.width=64 --set model.hidden=192) ;;
    *) echo "unknown run $n (gpu_w48, gpu_w64)" >&2; continue ;;
  esac
  python3 -m risloc train --config configs/train_gpu.yaml --out "runs/$n" \
    --epochs "$EPOCHS" --no-progress --set order.scenes=0 --set optim.batch_size="$BATCH" \
    --set optim.lr="$LR" --set optim.amp="$AMP" "${extra[@]}" > "runs/$n.log" 2>&1 &
  echo $! > "runs/$n.pid"
done
while [ "$(elapsed)" -lt "$DEADLINE_S" ]; do
  alive=0
  for n in $RUNS; do [ -f runs/$n.pid ] && kill -0 "$(cat runs/$n.pid)" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 5
done
for n in $RUNS; do
  if [ -f runs/$n.pid ] && kill -0 "$(cat runs/$n.pid)" 2>/dev/null; then
    echo "$n: still running at the deadline, stopped"; kill "$(cat runs/$n.pid)"
  fi
done
for n in $RUNS; do  # the trainings have exited before their checkpoints are exported
  [ -f runs/$n.pid ] && while kill -0 "$(cat runs/$n.pid)" 2>/dev/null; do sleep 1; done
done
echo "== [$(elapsed) s] export"
for n in $RUNS; do
  [ -f "runs/$n.log" ] || continue
  tail -4 "runs/$n.log"
  # a finished run wrote model.pt with its order head; export only a stopped one's best.pt
  [ -f "runs/$n/best.pt" ] && [ ! -f "runs/$n/model.pt" ] && python3 -c "from risloc.cli.main import app; app()" \
    export-model "runs/$n/best.pt" --out "runs/$n/model.pt"
  tar czf "$OUT/$n.tgz" "runs/$n.log" $(cd . && ls runs/$n/{model.pt,model.json,epochs.csv,metrics.json} 2>/dev/null)
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
echo "== [$(elapsed) s] done"
