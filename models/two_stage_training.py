"""VA-VAE fine-tuning, then the DiT on its latents: the pipeline's `both` mode under its familiar name.

    python models/two_stage_training.py --data_root /kaggle/input/<dataset> --kaggle [--preset t4x2]

Every option of `python -m microdoppler_finetune.pipeline both --help` applies.
"""
from __future__ import annotations

import sys
from typing import Optional

from microdoppler_finetune.workflow.cli import main as pipeline_main


def main(argv: Optional[list[str]] = None) -> int:
    return pipeline_main(["both", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
