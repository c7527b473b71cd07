"""One entry for the whole pipeline: simulate (when no data) -> split -> VA-VAE -> export -> DiT -> samples ->
evaluation -> report.

    python -m microdoppler_finetune.pipeline demo              # CPU demo on simulated data
    python -m microdoppler_finetune.pipeline vae --data_root D --preset p100   # split + VA-VAE + export
    python -m microdoppler_finetune.pipeline dit --data_root D --preset p100   # DiT + samples + evaluation
    python -m microdoppler_finetune.pipeline both --data_root D               # everything, preset from the GPU

Rerunning the same command continues an interrupted run: finished stages are skipped, trainings resume.
"""
import sys

from microdoppler_finetune.workflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
