#!/usr/bin/env bash
# One call on a GPU machine: images/second for ViT-B-32 at 224 px with all 18 relevance maps, and
# the R / E ratios measured side by side. Needs the wheels from benchmarks/fetch_gpu_wheels.sh
# carried in .whl/ (device tool: carry [".whl"]). Prints the benchmark's lines, last line
# `relevance_overhead=R pipeline_efficiency=E`.
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
