"""VA-VAE fine-tuning as one entry: the same training as step4_train_vavae.py.

    python vae_training/vavae_finetune.py --config vae_training/vavae_microdoppler_config.yaml
    python vae_training/vavae_finetune.py --epochs 30 --lr 1e-5 --freeze-layers 3 --batch-size 8
"""
from __future__ import annotations

import sys

from microdoppler_finetune.utils.cli import run_main
from vae_training.cli import main

if __name__ == "__main__":
    sys.exit(run_main(lambda: main(prog="vavae_finetune.py", description=__doc__)))
