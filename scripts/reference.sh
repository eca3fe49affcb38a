#!/usr/bin/env bash
# Reference accuracies of the default configs (README table): 3 seeds each of
#   MNIST-1D CNN, MNIST-1D MLP (reference training: Adam 1e-2, batch 100, 6000 steps),
#   Fashion-MNIST 2-D CNN (AdamW 1e-3, 5 epochs).
# Records go to $DROPENS_RESULTS/reference (default results/reference); complete runs are skipped.
# Then: .venv/bin/python analysis/reference_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 0 1 2; do
  .venv/bin/dropens train study=reference data=mnist1d model=cnn1d seed=$seed trainer.enable_progress_bar=false "$@"
  .venv/bin/dropens train study=reference data=mnist1d model=mlp seed=$seed trainer.enable_progress_bar=false "$@"
  .venv/bin/dropens train study=reference data=fashion_mnist model=cnn2d seed=$seed trainer.enable_progress_bar=false "$@"
done
