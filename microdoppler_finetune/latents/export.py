"""Export the fine-tuned VA-VAE for the DiT, with its latent statistics inside, and identify it by a hash.

``<work_dir>/export/vavae_encoder_for_dit/``::

    config.json                          VAVAE config, latents_mean/latents_std filled in (per channel)
    diffusion_pytorch_model.safetensors  VAVAE weights (encoder, decoder, quant convs, linear_proj)
    vae/                                 the same autoencoder as a plain diffusers AutoencoderKL (no linear_proj),
                                         its config also carrying latents_mean/latents_std
    export_info.json                     source checkpoint and its sha256, identity of the exported weights,
                                         metrics summary, alignment target, latent statistics provenance

Loading::

    from models.vavae import VAVAE
    vae = VAVAE.from_pretrained(".../vavae_encoder_for_dit")            # everything, stats in vae.config

    from diffusers import AutoencoderKL
    ae = AutoencoderKL.from_pretrained(".../vavae_encoder_for_dit/vae")  # encode/decode only

(``from_pretrained(dir, subfolder="vae")`` gives the same model: diffusers 0.42 then reads the config from vae/
but the weights from the top-level file when one exists, and those hold the same autoencoder tensors plus
linear_proj, which it reports as unused.)

The identity of a VA-VAE (``vae_identity``) is a sha256 over its state_dict: every tensor's name, dtype, shape
and raw bytes, in sorted name order. It does not depend on the file format, so the latent cache, the DiT and
the export can all check that they talk about the same weights.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from microdoppler_finetune.utils.files import swap_in_folder, temporary_sibling
from microdoppler_finetune.utils.tensors import state_dict_fingerprint

EXPORT_DIRNAME = "vavae_encoder_for_dit"
AUTOENCODER_SUBFOLDER = "vae"
EXPORT_INFO_FILE = "export_info.json"
IDENTITY_NOTE = ("sha256 over the VAVAE state_dict: for each tensor in sorted name order, its name, dtype, shape "
                 "and raw bytes (microdoppler_finetune.latents.export.vae_identity)")


def vae_identity(model: torch.nn.Module) -> str:
    """The identity hash of a VA-VAE's weights (see the module docstring)."""
    return state_dict_fingerprint(model)


def exported_encoder_in(work_dir: str | Path) -> Optional[str]:
    """step5's exported VA-VAE of a work dir, when there is one."""
    folder = Path(work_dir) / "export" / EXPORT_DIRNAME
    return str(folder) if (folder / EXPORT_INFO_FILE).is_file() else None


# ------------------------------------------------------------------------------------------- export


def read_export_info(export_dir: str | Path) -> dict:
    path = Path(export_dir) / EXPORT_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {export_dir} is not an encoder exported by step5 "
                                f"(python microdoppler_finetune/step5_validate_export.py --run <work_dir>/vae "
                                f"--export).")
    return json.loads(path.read_text())


def read_latent_statistics(export_dir: str | Path) -> tuple[list, list]:
    """latents_mean/latents_std from the exported encoder's config.json (VAVAE.save_pretrained): the one place
    every later stage (DiT training, sampling, evaluation) reads the latent statistics from."""
    export_dir = Path(export_dir)
    config_file = export_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--vae_encoder {export_dir} has no config.json: pass the folder step5 exported "
                                f"(<work_dir>/export/{EXPORT_DIRNAME}).")
    config = json.loads(config_file.read_text())
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if not mean or not std:
        raise ValueError(f"{config_file} has no latents_mean/latents_std: this encoder was saved without latent "
                         f"statistics. Export it with python microdoppler_finetune/step5_validate_export.py "
                         f"--checkpoint <VA-VAE> --export.")
    if len(mean) != len(std) or any(float(s) <= 0 for s in std):
        raise ValueError(f"{config_file}: latents_mean ({len(mean)}) and latents_std ({len(std)}) must have one "
                         f"value per channel, std > 0.")
    return [float(v) for v in mean], [float(v) for v in std]


def export_encoder_for_dit(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    latents_mean: Sequence[float],
    latents_std: Sequence[float],
    info: Optional[dict] = None,
) -> Path:
    """Save ``model`` (a VAVAE) for the DiT with its latent statistics; returns the export folder.

    ``info`` goes into export_info.json (source checkpoint, metrics, ...); the identity hash, the
    statistics and loading instructions are added here. The folder is written next to its final place and
    swapped in at the end, so a crash never leaves a half export that looks complete. After writing, the export
    is loaded back and its identity compared with the model's.
    """
    from diffusers import AutoencoderKL

    out_dir = Path(out_dir)
    if len(latents_mean) != len(latents_std):
        raise ValueError(f"latents_mean has {len(latents_mean)} values, latents_std {len(latents_std)}.")
    channels = int(model.config.latent_channels)
    if len(latents_mean) != channels:
        raise ValueError(f"The statistics have {len(latents_mean)} channels, the VA-VAE has {channels}.")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / EXPORT_INFO_FILE).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a step5 export (no {EXPORT_INFO_FILE}); refusing to "
                              f"replace it. Choose another --work_dir or move that folder.")
    # A CPU fp32 copy: the caller's model keeps its device and config (it may go on to encode the cache).
    model = copy.deepcopy(model).to("cpu").float().eval()
    identity = vae_identity(model)
    model.set_latent_stats(latents_mean, latents_std)
    autoencoder = model.as_autoencoder_kl()  # a weight copy without linear_proj; stats come with the config
    # diffusers pipelines normalise with (z - latents_mean) * scaling_factor / latents_std: scaling_factor 1
    # makes that exactly the DiT's normalisation (the AutoencoderKL default 0.18215 would not).
    autoencoder.register_to_config(scaling_factor=1.0, shift_factor=None)

    tmp = temporary_sibling(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    autoencoder.save_pretrained(tmp / AUTOENCODER_SUBFOLDER, safe_serialization=True)

    full = {
        "vae_identity": identity,
        "identity_note": IDENTITY_NOTE,
        "latents_mean": [float(v) for v in latents_mean],
        "latents_std": [float(v) for v in latents_std],
        "latent_channels": channels,
        "downsample_factor": int(getattr(model, "downsample_factor", 0)) or None,
        "how_to_load": {
            "vavae": f"from models.vavae import VAVAE; VAVAE.from_pretrained('{out_dir}')",
            "diffusers": f"from diffusers import AutoencoderKL; "
                         f"AutoencoderKL.from_pretrained('{out_dir / AUTOENCODER_SUBFOLDER}')",
            "normalise": "z_dit = (z - latents_mean) / latents_std per channel; decode z = z_dit * latents_std + "
                         "latents_mean",
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(info or {}),
    }
    (tmp / EXPORT_INFO_FILE).write_text(json.dumps(full, indent=2, default=str))

    _verify_export(tmp, identity, autoencoder, model.__class__, AutoencoderKL)
    return swap_in_folder(tmp, out_dir)


def _verify_export(folder: Path, identity: str, autoencoder, vavae_class, autoencoder_class) -> None:
    """Load what was written, with the same calls a user makes, and compare weights."""
    reloaded = vavae_class.from_pretrained(folder)
    got = vae_identity(reloaded)
    if got != identity:
        raise RuntimeError(f"The export in {folder} reloads with identity {got}, not {identity}: the VAVAE "
                           f"save_pretrained/from_pretrained round trip loses weights. Report this as a bug.")
    plain = autoencoder_class.from_pretrained(folder / AUTOENCODER_SUBFOLDER)
    if state_dict_fingerprint(plain) != state_dict_fingerprint(autoencoder):
        raise RuntimeError(f"The plain AutoencoderKL in {folder / AUTOENCODER_SUBFOLDER} does not reload with the "
                           f"weights that were saved. Report this as a bug.")


def load_exported_vae(export_dir: str | Path, *, check_identity: bool = True):
    """The exported VAVAE; with ``check_identity`` its weights must match export_info.json's identity."""
    from models.vavae import VAVAE

    export_dir = Path(export_dir)
    info = read_export_info(export_dir)
    model = VAVAE.from_pretrained(export_dir)
    if check_identity and vae_identity(model) != info["vae_identity"]:
        raise RuntimeError(f"The weights in {export_dir} (identity {vae_identity(model)}) are not the ones "
                           f"{EXPORT_INFO_FILE} names ({info['vae_identity']}): the folder was modified after "
                           f"export. Re-export with step5 --export.")
    return model.eval()
