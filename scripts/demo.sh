#!/usr/bin/env bash
# The main job, offline, on CPU: generate the embedded head-phantom dataset, then train and test
# Skip-TS on it through the unmodified anomalib CLI. Writes metrics and anomaly-map images.
# anomalib 2.7's CLI ignores the config's seed_everything; anomalib_skipts.seeded_cli applies it
# and then runs that same CLI, so the demo gives the same numbers every time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONWARNINGS=ignore
start=$(date +%s)
.venv/bin/python -m anomalib_skipts.seeded_cli train --config configs/demo_cpu.yaml "$@"
run=results/demo/SkipTS/head_phantom/latest
echo
echo "Demo finished in $(( $(date +%s) - start )) s."
echo "  metrics (per epoch and test): $(ls -d results/demo/csv/version_*/metrics.csv | tail -1)"
echo "  anomaly-map images:           $run/images/"
echo "  checkpoint:                   $run/weights/lightning/model.ckpt"
