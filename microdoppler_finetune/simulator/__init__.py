"""Physics-based synthetic radar micro-Doppler spectrograms of walking people.

Boulic-Thalmann walking kinematics (``gait``) drive 16 ellipsoid body segments (``scatterers``) whose
radar returns, noise and clutter (``radar``, ``scene``) become STFT spectrograms rendered as JPEG images
(``render``) in the layouts of real datasets (``dataset``). Per-person, per-recording and per-condition
parameters (``people``) are deterministic from the seed. CLI: ``python -m microdoppler_finetune.simulate``.
"""
from microdoppler_finetune.simulator.dataset import (
    INFO_FILE,
    PARAMETERS_FILE,
    SIMULATOR_VERSION,
    image_file_name,
    simulate_dataset,
    simulate_recording_frames,
)
from microdoppler_finetune.simulator.people import CONDITION_NAMES, sample_person, sample_recording
from microdoppler_finetune.simulator.preview import render_preview_grid
from microdoppler_finetune.simulator.radar import BANDS, RadarSettings

__all__ = [
    "BANDS", "CONDITION_NAMES", "INFO_FILE", "PARAMETERS_FILE", "RadarSettings", "SIMULATOR_VERSION",
    "image_file_name", "render_preview_grid", "sample_person", "sample_recording", "simulate_dataset",
    "simulate_recording_frames",
]
