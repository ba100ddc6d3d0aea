#!/usr/bin/env bash
# One call on a GPU machine (device tool: carry [".whl"], timeout_s 580), every GPU figure of
# issue 10 in one go, each step under its own time limit so that one failure leaves the others:
#   1. SCALE_N 256 px JPEGs (benchmarks/scale.py's generator, one process per core);
#   2. benchmarks/decode.py: PIL vs nvJPEG decoding and the encode loop side by side, what the
#      choice changes in the pixels and maps, the nvJPEG race check (pytorch/vision#9606) with
#      and without ASAP's guard, and tf32 / bf16 maps against fp32 (ViT-B-32);
#   3. benchmarks/scale.py: the real `asap run --decode nvjpeg` end to end on SCALE_N images, frozen
#      ViT-B-32 (random weights saved as a local checkpoint: no hub; speed does not depend on the
#      weights), last line `e2e_img_per_s=A encode_efficiency=B driver_rss_mb=C`;
#   4. benchmarks/pipeline.py (PNG images, R and E) with whatever time is left.
# Needs the wheels from benchmarks/fetch_gpu_wheels.sh in .whl/. Logs go to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/asap-gpu-out}"
mkdir -p "$OUT"
BUDGET="${BUDGET:-560}"  # seconds for the whole script
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
left() { echo $((BUDGET - SECONDS)); }
step() {  # step NAME SECONDS command...: run with a limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, $(left) s left"; return; fi
  echo "== $name (limit ${limit} s, t=${SECONDS} s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -E '^\s*$|it/s\]|s/it\]'
  echo "== $name: rc ${PIPESTATUS[0]} at t=${SECONDS} s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(), 'cores', os.cpu_count())"
N="${SCALE_N:-100000}"
IMG="/tmp/asap-scale-$N"
step images 90 python3 -c "
import sys, time; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from scale import make_images
t = time.time(); make_images(Path('$IMG'), $N); print('images: $N in', round(time.time() - t, 1), 's')"
python3 -c "import open_clip, torch; torch.save(open_clip.create_model('ViT-B-32').state_dict(), '/tmp/vitb32-random.pt')"
step decode "${DECODE_LIMIT:-170}" python3 benchmarks/decode.py --images "$IMG" --n "${DECODE_N:-8192}" \
  --device cuda --model ViT-B-32 --pretrained /tmp/vitb32-random.pt --batch-size 512 --repeats 2
step scale "${SCALE_LIMIT:-330}" python3 benchmarks/scale.py --n "$N" --images "$IMG" \
  --device cuda --model ViT-B-32 --pretrained /tmp/vitb32-random.pt --ceiling-seconds 10 \
  -- --train-limit 20000 \
  --patience 12 --batch-size 512 --partition-size 4096 --decode nvjpeg --quiet
step pipeline 150 python3 benchmarks/pipeline.py --device cuda --models ViT-B-32 \
  --n-large 2048 --batch-size 128 --repeats 2
echo "done at t=${SECONDS} s"
