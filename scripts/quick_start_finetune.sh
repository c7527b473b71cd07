#!/usr/bin/env bash
# Quick start: bash scripts/quick_start_finetune.sh {demo|data|vae|dit|both} [pipeline options]
#
#   demo  whole pipeline on simulated data with the CPU demo profile (no data, GPU or internet needed)
#   data  set up and split your own data:       ... data --data_root /path/to/spectrograms
#   vae   split + three-stage VA-VAE + export + latent cache (preset from the GPUs found, or --preset)
#   dit   DiT training + samples + evaluation on the latents of a vae run
#   both  vae then dit                          ... both --kaggle   (finds the dataset under /kaggle/input)
#
# Every extra option goes to `python -m microdoppler_finetune.pipeline MODE ...` (see --help there).
# Rerunning the same command continues where it stopped.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-demo}"
shift || true
source "$REPO_ROOT/scripts/install.sh"
exec "$MDF_PYTHON" -m microdoppler_finetune.pipeline "$mode" "$@"
