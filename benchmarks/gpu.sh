#!/usr/bin/env bash
# One call on a GPU machine: images/second for ViT-B-32 at 224 px with all 18 relevance maps, and
# the R / E ratios measured side by side; then benchmarks/scale.py end to end on SCALE_N generated
# images with a frozen ViT-B-32 (random weights saved as a local checkpoint: no hub; speed does not
# depend on the weights). Needs the wheels from benchmarks/fetch_gpu_wheels.sh carried in .whl/
# (device tool: carry [".whl"]). Last lines: `relevance_overhead=R pipeline_efficiency=E`, then
# `e2e_img_per_s=A encode_efficiency=B driver_rss_mb=C`. SCALE_N=0 skips the scale run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
PYTHONUNBUFFERED=1 timeout 480 python3 benchmarks/pipeline.py --device cuda --models ViT-B-32 \
  --n-large "${N_IMAGES:-2048}" --batch-size "${BATCH:-128}" --repeats 3
if [ "${SCALE_N:-100000}" != 0 ]; then
  python3 -c "import open_clip, torch; torch.save(open_clip.create_model('ViT-B-32').state_dict(), '/tmp/vitb32-random.pt')"
  PYTHONUNBUFFERED=1 timeout "${SCALE_TIMEOUT:-420}" python3 benchmarks/scale.py --n "${SCALE_N:-100000}" \
    --device cuda --model ViT-B-32 --pretrained /tmp/vitb32-random.pt -- --train-limit 20000 --batch-size 512 --quiet
fi
