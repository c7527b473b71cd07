"""One entry for everything (the name our users know); the pipeline's command line is microdoppler_finetune.pipeline.

    python -m models.main_microdoppler_finetune demo
    python models/main_microdoppler_finetune.py both --data_root /kaggle/input/<dataset> --kaggle
"""
from __future__ import annotations

import sys

from microdoppler_finetune.workflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
