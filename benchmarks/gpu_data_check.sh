#!/usr/bin/env bash
# GPU checks of the data layer, one short run on a CUDA machine (about 4 minutes on an H200, 16 cores):
# the CUDA JPEG-decoding test; the decode rate of PIL workers vs nvjpeg on 20k mixed-size JPEGs; and
# (mode full) train -> influence -> prune -> retrain with --device cuda on that ImageNet-layout folder at
# --image-size 320, whose cache (8 GB) is over 3x the memory cgroup (LIMIT) every stage runs in.
#   bash benchmarks/gpu_data_check.sh OUTDIR [quick|full] [LIMIT]
set -u
out=${1:-/tmp/gpu-data-check}; mode=${2:-full}; limit=${3:-2560M}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nproc; free -g | head -2; head -3 /proc/self/cgroup
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/data/test_jpeg_decode.py -rs 2>&1 | tail -4
python3 benchmarks/make_image_folder.py /tmp/inet --layout imagenet --train 20000 --val 1000 --classes 100 --workers "$(nproc)"
for size in 64 224; do
  timeout 100 python3 benchmarks/jpeg_decode_bench.py /tmp/inet --n 20000 --image-size $size --workers "$(nproc)" --out "$out/decode$size.json" | tr '\n' ' '; echo
done
[ "$mode" = full ] || exit 0
args=(/tmp/inet --work /tmp/w --image-size 320 --device cuda --width 4 --depth 7)
python3 benchmarks/pipeline_rss.py "${args[@]}" --memory-limit "$limit" --stages build,in-memory,train,influence,prune,retrain --out "$out/pipeline.json" \
  || python3 benchmarks/pipeline_rss.py "${args[@]}" --stages build,train,influence,prune,retrain --out "$out/pipeline_nolimit.json"
