"""Step 4: three-stage VA-VAE fine-tuning (the flags of the original Kaggle guide).

    python microdoppler_finetune/step4_train_vavae.py --data_root DATA --pretrained_path VAVAE.pt --stages 1,2,3 \
        --batch_size 8 --gradient_accumulation 2 --kaggle

Runs vae_training.train.train_vavae; see ``--help`` and vae_training/vavae_microdoppler_config.yaml.
"""
from __future__ import annotations

import sys

from microdoppler_finetune.utils.cli import run_main
from vae_training.cli import main

if __name__ == "__main__":
    sys.exit(run_main(lambda: main(prog="step4_train_vavae.py", description=__doc__)))
