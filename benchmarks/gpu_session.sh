#!/usr/bin/env bash
# Every GPU measurement in one run, for a session that is lent a GPU (15 minutes in all; the
# timeouts below sum to 560 s, under the device's 600 s per command).
# Check it on the CPU first:  GPU_DRY=1 bash benchmarks/gpu_session.sh
# On the device machine (constriction comes as a carried wheel, see the README):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#   export PYTHONPATH=/tmp/site:$PWD; bash benchmarks/gpu_session.sh
# Results land in $OUT (or benchmarks/results) and come back with the run.
set -uo pipefail
DATA=${DATA:-../shared/data/kodak}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if [ -n "${GPU_DRY:-}" ]; then  # the same steps, tiny, on the CPU
  python3 -m pytest -q tests/test_robustness.py -k "gpu or thread" -p no:warnings
  python3 -m benchmarks.speed --data "$DATA" --iters 3 --warmup 1 --quality-iters 5 --dataset --dataset-images 2 --out /tmp/gpu_dry
  exit
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# 1. a file encoded on the GPU decodes on the CPU within 0.05 dB and 1 level per pixel
timeout 60 python3 -m pytest -q tests/test_robustness.py -k gpu -p no:warnings 2>&1 | tail -3 | tee "$OUT/gpu_determinism.txt"
# 2. ms per image-iteration, images/s, PSNR, memory and the floor, per configuration;
#    then all 24 images at the default rate point, files written, wall clock
timeout 330 python3 -m benchmarks.speed --data "$DATA" --quality-iters 600 --dataset --out "$OUT"
# 3. the kodak rate-distortion profile on the first 8 images (resumable: rerun to extend)
timeout 170 python3 -m benchmarks.rd --profile kodak --data "$DATA" --images 8 --bank 8 --codecs ddcodec --out "$OUT"
