#!/usr/bin/env bash
# One command for a machine with one CUDA GPU (run from the repository root):
#   bash benchmarks/gpu_check.sh
# 1. builds drfast with its CUDA kernels (DRFAST_CUDA=ON) into the active Python environment
#    (or ./.venv-gpu when none is active; it needs a CUDA build of torch there),
# 2. runs every GPU test (pytest -m gpu),
# 3. benchmarks the CUDA kernel and the torch path against faiss-gpu at 1M and 8.8M rows, the placed
#    two-stage search (int8 first pass on the GPU, exact fp16 rows on the host; bit-identical to the
#    native exact scan) at 8.8M rows against faiss-gpu GpuIndexFlatIP fp16 + a rank pass, and runs 50
#    ADORE steps at 8.8M rows with the GPU capped at 11 GB (benchmarks/scripts/gpu_bench.py),
# printing one table. Budget: under 8 minutes on an H100/H200-class machine.
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-50}
SIZES=${SIZES:-"1000000 8841823"}
PLACED_SIZES=${PLACED_SIZES:-"8841823"}

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -d .venv-gpu ]; then python3 -m venv --system-site-packages .venv-gpu; fi
  . .venv-gpu/bin/activate
fi
python - <<'EOF' || { echo "gpu_check: needs torch with CUDA and a visible GPU"; exit 1; }
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
EOF

echo "== build with CUDA"
t0=$SECONDS
DRFAST_CUDA=ON pip install --quiet --no-build-isolation --no-deps -e . 2>&1 | tail -5 \
  || DRFAST_CUDA=ON pip install --quiet --no-deps -e . 2>&1 | tail -5
python -c "import drfast, json; print(json.dumps(drfast.build_info()))"
echo "build: $((SECONDS - t0)) s"

echo "== GPU tests"
t0=$SECONDS
DRFAST_CUDA_KERNEL=1 python -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15
echo "GPU tests: $((SECONDS - t0)) s"

echo "== benchmarks"
t0=$SECONDS
python -m benchmarks.scripts.gpu_bench --sizes $SIZES --placed-sizes $PLACED_SIZES --steps "$STEPS" --gpu-memory 11GB
echo "benchmarks: $((SECONDS - t0)) s"
