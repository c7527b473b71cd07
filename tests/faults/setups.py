"""Tiny inputs the fault tests build in-process (a few seconds on one thread): a simulated dataset and its split,
the 'test' VA-VAE (f2, 4 latent channels) exported with a latent cache, random LPIPS weights."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

SIZE = 32


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def simulated_dataset(root: Path, *, people: int = 3, per_person: int = 8) -> Path:
    """<root>/data (simulated spectrograms) split into <root>/work/dataset; returns the dataset folder."""
    from microdoppler_finetune.data import prepare_dataset
    from microdoppler_finetune.simulator import simulate_dataset

    simulate_dataset(root / "data", people=people, per_person=per_person, image_size=SIZE, seed=0, workers=1,
                     recordings_per_person=4, progress=False)
    return Path(prepare_dataset(root / "data", root / "work" / "dataset", seed=0, log=None)).parent


def exported_test_vae(root: Path) -> Path:
    """The 'test' VA-VAE (random, seeded) exported with its latent cache into <root>/work (step5 --export --cache);
    returns the VA-VAE file."""
    from microdoppler_finetune import step5_validate_export
    from models.vavae import create_vavae, save_ldm_safetensors

    torch.manual_seed(0)
    vae = save_ldm_safetensors(create_vavae("test", sample_size=SIZE), root / "vae.safetensors")
    assert step5_validate_export.main(["--checkpoint", str(vae), "--export", "--cache", "--work_dir",
                                       str(root / "work"), "--preset", "cpu_demo", "--image_size", str(SIZE),
                                       "--set", "data.num_workers=0"]) == 0
    return vae


@contextlib.contextmanager
def random_lpips_weights(home: Path):
    """Random AlexNet weights where torchvision's cache expects them, TORCH_HOME pointing there meanwhile."""
    from models.perceptual import write_random_backbone_weights

    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    try:
        write_random_backbone_weights("alex")
        yield home
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous
