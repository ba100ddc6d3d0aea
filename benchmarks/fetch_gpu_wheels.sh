#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels the GPU machine lacks (its image has torch,
# pandas, pyarrow, pillow, timm, ...; see the device notes) into .whl/ for benchmarks/gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth dask==2026.8.0 distributed==2026.8.0 partd locket \
  tblib zict tornado umap-learn==0.5.12 pynndescent==0.7.0
ls .whl
