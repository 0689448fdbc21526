#!/usr/bin/env bash
# Set up .venv with everything the demo, the tests and the benchmarks need (idempotent).
# torch and torchvision are installed as a matched pair from the package registry first: the
# registry's torchvision only works with the registry's own torch build (a CUDA build that runs
# fine on CPU); a CPU-only torch wheel from elsewhere breaks `import torchvision`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_PAIR=("torch==2.15.0" "torchvision==0.29.2")
stamp=".venv/.skipts-setup-$( (cat pyproject.toml scripts/setup.sh) | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && .venv/bin/python -c "import anomalib_skipts, torchvision" 2>/dev/null; then
  exit 0
fi
echo "[setup] creating .venv and installing anomalib-skipts (first run: a few minutes, ~5 GB of torch)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_PAIR[@]}"
.venv/bin/python -m pip install -q -e ".[export,dicom,test,cluster]" "${TORCH_PAIR[@]}"
rm -f .venv/.skipts-setup-*
touch "$stamp"
echo "[setup] done: $(.venv/bin/python -c 'import torch, anomalib; print("torch", torch.__version__, "anomalib", anomalib.__version__)')"
