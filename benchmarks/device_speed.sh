#!/usr/bin/env bash
# Issue 16's GPU check, as run on a lent GPU machine (docs/results.md "Speed"): the CUDA
# tests, then bench_device.py: a training step at batch 512 (AMP and FP32; in line, on a
# ready batch, in an epoch), the learned pipeline's stages at several batches, both
# localizers end to end on the same scenes, the host syncs of one call and the heaviest
# kernels (at the largest batch and at 2,048), the call replayed as a CUDA graph (and the
# Localizer with graphs on host-held batches, the user's path); the LM
# loop's two routes compared; the training step in FP32, without the network's ML
# refinement replayed from CUDA graphs, and with its batches' physics on the GPU.
#   OUT=<folder> [INFER="256 2048 8192 16384"] [GRAPHS="1024 2048 4096 8192 16384"] bash benchmarks/device_speed.sh
# Needs a CUDA torch; pydantic & co. come as wheels in .whl/ where the machine lacks them.
set -u
T0=$(date +%s)
OUT=${OUT:-reports/device}
. benchmarks/device_env.sh speed.log
df -h /dev/shm | tail -1  # prefetch=process passes its batches through shared memory
echo "== [$(elapsed) s] CUDA tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/integration/test_cuda.py 2>&1 | tail -15
echo "== [$(elapsed) s] training step at 512 (AMP), inference, versus classical, syncs, kernels, graphs"
timeout 300 python3 benchmarks/bench_device.py --device cuda --batch-sizes 512 --steps 20 \
  --inference-batches ${INFER:-256 2048 8192 16384} --classical-batches 128 \
  --graph-batches ${GRAPHS:-1024 2048 4096 8192 16384} --repeats 5 --out "$OUT/bench_device_amp.json"
echo "== [$(elapsed) s] host syncs and kernels at 2048; the Localizer on 8 x 2048 and 8 x 8192 host-held scenes, with and without graphs"
timeout 180 python3 benchmarks/bench_device.py --device cuda --batch-sizes \
  --inference-batches 2048 --localizer-batches 2048 8192 --repeats 3 \
  --out "$OUT/bench_device_2048.json"
echo "== [$(elapsed) s] the LM loop's shrinking sets instead of the masked route (host syncs)"
timeout 120 python3 benchmarks/bench_device.py --device cuda --batch-sizes --no-diagnostics \
  --inference-batches 2048 8192 16384 --lm-route shrinking --out "$OUT/bench_device_shrinking.json"
echo "== [$(elapsed) s] training steps at 512: AMP / FP32, with and without the refinement's graphs, interleaved"
timeout 120 python3 benchmarks/bench_device.py --device cuda --batch-sizes --inference-batches \
  --step-ab 512 --steps 20 --out "$OUT/bench_device_step_ab.json"
# a training step at 512 in FP32, and without the slots' ML refinement replayed from CUDA
# graphs (on by default since the fourth lease; prefetch=process was not faster there)
for variant in "fp32 optim.amp=false" "nographs cuda_graphs=false" \
               "simdev simulate_on=device"; do
  set -- $variant
  name=$1; shift
  echo "== [$(elapsed) s] training step at 512: $*"
  timeout 60 python3 benchmarks/bench_device.py --device cuda --batch-sizes 512 --steps 20 \
    --no-profile ${@/#/--set } --inference-batches --out "$OUT/bench_device_$name.json"
done
echo "== [$(elapsed) s] a training batch of 512: on the host, its draws alone, its physics on the GPU"
timeout 60 python3 benchmarks/bench_simulate.py --n 2048 --repeats 3 --device cuda \
  --out "$OUT/bench_device_simulate.json"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
# the lent machine returns at most 8 files from $OUT: the JSONs travel as one archive
(cd "$OUT" && tar -czf bench_device_json.tgz --remove-files bench_device_*.json)
echo "== [$(elapsed) s] done"
