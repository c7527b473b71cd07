"""Generate spectrograms with a trained person- (and condition-) conditioned DiT.

Needs only the trained DiT (``{step:07d}.pt`` from train_conditional_dit.py, or its ``pretrained/`` export) and
the exported encoder folder (``vavae_encoder_for_dit``, whose VA-VAE decodes and whose config holds the latent
statistics). Output, in the dataset's own layout so the data layer reads it like real data::

    <out>/ID_7/ID7_gen{seed}_Doppler{k}.jpg                  without walking conditions
    <out>/<Condition>/ID_7/ID7_gen{seed}_Doppler{k}.jpg      with walking conditions
    <out>/generation_info.json                               checkpoint, sampler settings, per-file labels
    <out>/__grid_by_person.jpg                               one row per person (the "__" prefix keeps the data
                                                             scanner from taking it for a loose sample)

Deterministic given the seed: sample k's starting noise comes from a generator seeded by (seed, k), so the
result does not depend on the batch size, and the ODE samplers add no noise of their own.
"""
from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import InitVar, asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from microdoppler_finetune.dit.model_setup import load_trained_dit, null_condition_id, sample_with_transport
from microdoppler_finetune.utils.images import to_uint8_hwc
from microdoppler_finetune.utils.progress import progress
from microdoppler_finetune.utils.tensors import pick_device
from models.transport import SAMPLING_METHODS, canonical_method, model_evaluations

GRID_FILE = "__grid_by_person.jpg"
INFO_FILE = "generation_info.json"
SAMPLERS = SAMPLING_METHODS  # euler (the release's), heun, midpoint, dpm++2m, unipc: models.transport.sample_ode


SETTING_KEYS = ("num_sampling_steps", "sampler", "cfg_scale", "cfg_interval_start", "shift", "seed", "batch_size")


@dataclass
class SamplerSettings:
    """The ODE sampler's settings, with the release's meanings (its defaults: dit.sample in the config schema).

    ``num_sampling_steps`` counts GRID POINTS as the release's option does: 250 points = 249 Euler steps
    (``ode_steps``). ``shift`` <= 0 means no timestep shift, ``cfg_scale`` <= 1 no guidance.
    ``steps`` (deprecated, not stored): integration steps; ``steps=N`` sets num_sampling_steps = N + 1.
    """

    num_sampling_steps: int = 250
    sampler: str = "euler"
    cfg_scale: float = 6.7
    cfg_interval_start: float = 0.125
    shift: float = 0.3
    seed: int = 0
    batch_size: int = 16
    guide: str = "both"  # what the unconditional branch of guidance drops: person, condition or both
    steps: InitVar[Optional[int]] = None

    def __post_init__(self, steps: Optional[int]):
        if steps is not None:
            warnings.warn(f"SamplerSettings(steps={steps}) is deprecated: steps counts Euler steps; use "
                          f"num_sampling_steps={int(steps) + 1} (grid points, the release's meaning).",
                          FutureWarning, stacklevel=3)
            self.num_sampling_steps = int(steps) + 1
        try:
            self.sampler = canonical_method(self.sampler)
        except ValueError:
            raise ValueError(f"Unknown sampler '{self.sampler}': choose {', '.join(SAMPLERS)}.") from None
        if int(self.num_sampling_steps) < 2:
            raise ValueError(f"num_sampling_steps counts grid points (250 = 249 Euler steps, as in the release) and "
                             f"must be >= 2, got {self.num_sampling_steps}.")

    @property
    def ode_steps(self) -> int:
        """Integration steps of the sampler: num_sampling_steps - 1."""
        return int(self.num_sampling_steps) - 1

    @property
    def model_evaluations(self) -> int:
        """Velocity evaluations per image (a guided one runs the conditional and unconditional rows together):
        one per step for euler, dpm++2m and unipc, two for heun and midpoint."""
        return model_evaluations(self.sampler, self.ode_steps)

    def describe(self) -> dict:
        """Plain dict for generation_info.json (with the number of integration steps spelled out)."""
        return {**asdict(self), "ode_steps": self.ode_steps, "guidance": self.cfg_scale > 1,
                "shifted": self.shift > 0 and self.shift != 1}

    @classmethod
    def from_config(cls, sample_cfg, **overrides) -> "SamplerSettings":
        """From ``cfg.dit.sample``; ``overrides`` that are not None win (e.g. command-line flags).

        The deprecated ``dit.sample.steps`` (Euler steps), when set, replaces num_sampling_steps by steps + 1,
        unless ``num_sampling_steps`` is overridden here.
        """
        values = {key: sample_cfg[key] for key in SETTING_KEYS}
        legacy = sample_cfg.get("steps")
        overrides = {key: value for key, value in overrides.items() if value is not None}
        if "num_sampling_steps" in overrides:
            legacy = None
        if overrides.get("steps") is not None:
            legacy = overrides.pop("steps")
        values.update(overrides)
        if legacy is not None:
            print(f"NOTE: steps={legacy} (Euler steps) is deprecated; it means num_sampling_steps={int(legacy) + 1} "
                  f"(grid points, the release's count). Use num_sampling_steps.", flush=True)
            values["num_sampling_steps"] = int(legacy) + 1
        return cls(num_sampling_steps=int(values["num_sampling_steps"]), sampler=str(values["sampler"]),
                   cfg_scale=float(values["cfg_scale"]), cfg_interval_start=float(values["cfg_interval_start"]),
                   shift=float(values["shift"]), seed=int(values["seed"]), batch_size=int(values["batch_size"]),
                   **({"guide": str(values["guide"])} if "guide" in values else {}))


@dataclass
class Job:
    """One image to generate."""

    person: int
    condition: Optional[int]  # None: the null condition (condition-free sampling) or a model without conditions
    number: int  # k-th image of this (person, condition)
    seen_in_training: Optional[bool] = None


# ------------------------------------------------------------------------------------------- what to generate


def _select(spec, names: Sequence[str], what: str) -> List[int]:
    if spec is None or spec == "all" or spec == ["all"]:
        return list(range(len(names)))
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item in names:
            chosen.append(names.index(item))
            continue
        number = _number_in(item)
        matches = [i for i, n in enumerate(names) if number is not None and _number_in(n) == number]
        if len(matches) == 1:
            chosen.append(matches[0])
        else:
            raise ValueError(f"Unknown {what} '{item}'. Known: {', '.join(names)}.")
    return chosen


def _number_in(text: str) -> Optional[int]:
    match = re.fullmatch(r"(?:ID[_\- ]?)?0*(\d+)", str(text).strip(), re.IGNORECASE)
    return int(match.group(1)) if match else None


def plan_jobs(data_info: dict, *, per_person: int, persons="all", conditions=None, pairs: str = "all",
              uses_conditions: bool = False) -> List[Job]:
    """The images to generate: per_person for every chosen person (x chosen condition, filtered by ``pairs``).

    ``conditions`` None: the null condition (a condition-free sample per person). ``pairs``: all | seen | unseen
    (person x condition pairs that did / did not occur in the training split).
    """
    person_names = list(data_info["person_names"])
    condition_names = list(data_info.get("condition_names") or [])
    chosen_persons = _select(persons, person_names, "person")
    if per_person < 1:
        raise ValueError(f"per_person must be >= 1, got {per_person}.")
    if pairs not in ("all", "seen", "unseen"):
        raise ValueError(f"pairs must be all, seen or unseen, got '{pairs}'.")
    if conditions is None:
        if pairs != "all":
            raise ValueError(f"--pairs {pairs} needs --conditions (which walking conditions to pair with).")
        return [Job(p, None, k) for p in chosen_persons for k in range(per_person)]
    if not uses_conditions:
        raise ValueError("This DiT was trained without walking conditions; leave out --conditions/--pairs.")
    chosen_conditions = _select(conditions, condition_names, "condition")
    seen = {(int(p), int(c)) for p, c in data_info.get("seen_pairs", [])}
    jobs = []
    for p in chosen_persons:
        for c in chosen_conditions:
            was_seen = (p, c) in seen
            if (pairs == "seen" and not was_seen) or (pairs == "unseen" and was_seen):
                continue
            jobs.extend(Job(p, c, k, was_seen) for k in range(per_person))
    if not jobs:
        raise ValueError(f"No person x condition pair to generate with --pairs {pairs} (every chosen pair was "
                         f"{'seen' if pairs == 'unseen' else 'unseen'} in training).")
    return jobs


# ------------------------------------------------------------------------------------------- sampling


def noise_key(person: int, condition: Optional[int], number: int) -> int:
    """The identity of one generated image: its noise does not depend on which other images are requested."""
    return (int(person) * 1_000_033 + (0 if condition is None else int(condition) + 1)) * 1_000_003 + int(number)


def seeded_noise(shape: Sequence[int], seed: int, keys: Sequence[int]) -> torch.Tensor:
    """Starting noise [len(keys), *shape]: one CPU generator per image, seeded by (seed, key)."""
    out = torch.empty((len(keys), *shape))
    for row, key in enumerate(keys):
        generator = torch.Generator().manual_seed((int(seed) * 7_919_000_017 + int(key)) % (2**63 - 1))
        out[row] = torch.randn(tuple(shape), generator=generator)
    return out


@torch.no_grad()
def generate_latents(model: torch.nn.Module, persons: Sequence[int], conditions: Optional[Sequence[Optional[int]]],
                     latent_shape: Sequence[int], settings: SamplerSettings,
                     device: str | torch.device = "cpu", show_progress: bool = False,
                     keys: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Normalised latents [N, C, h, w] (DiT space) for the given person (and condition) ids.

    ``keys``: one noise key per image (default: its position); same seed + same key -> same starting noise.
    ``show_progress``: a progress bar over the images.
    """

    model.eval()  # eval mode: no label dropout while sampling (guidance asks for the null rows itself)
    total = len(persons)
    null_condition = null_condition_id(model)
    out = []
    bar = progress(total=total, desc="sampling", unit="image") if show_progress else None
    for start in range(0, total, settings.batch_size):
        stop = min(start + settings.batch_size, total)
        batch_keys = list(keys[start:stop]) if keys is not None else list(range(start, stop))
        noise = seeded_noise(latent_shape, settings.seed, batch_keys).to(device)
        person = torch.tensor(list(persons[start:stop]), dtype=torch.long, device=device)
        condition = None
        if null_condition is not None:
            values = [null_condition if conditions is None or conditions[i] is None else int(conditions[i])
                      for i in range(start, stop)]
            condition = torch.tensor(values, dtype=torch.long, device=device)
        out.append(sample_with_transport(model, noise, person, condition, settings).float().cpu())  # B x C x h x w
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return torch.cat(out, dim=0)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, latents_mean: Sequence[float],
                   latents_std: Sequence[float], *, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """DiT-space latents -> images [N, 3, H, W] in [-1, 1] (de-normalised with the encoder's statistics)."""
    vae.eval()
    shape = (1, -1, 1, 1)
    mean = torch.tensor(list(latents_mean), dtype=torch.float32).view(shape)
    std = torch.tensor(list(latents_std), dtype=torch.float32).view(shape)
    images = []
    for start in range(0, latents.shape[0], batch_size):
        z = latents[start:start + batch_size].float() * std + mean  # back to the VA-VAE's latent space
        images.append(vae.decode(z.to(device)).float().clamp(-1, 1).cpu())
    return torch.cat(images, dim=0)


def to_pil(image: torch.Tensor, size: Optional[int] = None):
    """[3, H, W] in [-1, 1] -> an RGB PIL image, resized (bicubic) to size x size when given."""
    from PIL import Image

    pil = Image.fromarray(to_uint8_hwc(image), mode="RGB")
    if size is not None and pil.size != (size, size):
        pil = pil.resize((size, size), Image.BICUBIC)
    return pil


def save_grid(images: torch.Tensor, nrow: int, path: str | Path) -> Path:
    """Images [N, 3, H, W] in [-1, 1] as one JPG, ``nrow`` images per row."""
    from torchvision.utils import make_grid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images.float().clamp(-1, 1), nrow=max(1, nrow), padding=2, pad_value=1.0)
    to_pil(grid).save(path, quality=95)
    return path


# ------------------------------------------------------------------------------------------- file layout


def person_folder_name(name: str) -> str:
    """The scanner's person-folder form ID_<n> (a "07" folder of the person/condition layout becomes ID_7)."""
    number = _number_in(name)
    if number is not None:
        return f"ID_{number}"
    if not re.fullmatch(r"ID[_\- ]?\d+", name, re.IGNORECASE):
        raise ValueError(f"Person name '{name}' has no number; generated folders must be named ID_<n> for the data "
                         f"scanner to read them.")
    return name


def sample_relative_path(person_name: str, condition_name: Optional[str], seed: int, number: int) -> str:
    folder = person_folder_name(person_name)
    file = f"{folder.replace('_', '')}_gen{int(seed)}_Doppler{int(number)}.jpg"
    return f"{condition_name}/{folder}/{file}" if condition_name else f"{folder}/{file}"


# ------------------------------------------------------------------------------------------- whole run


def generate_dataset(checkpoint: str | Path, vae_encoder: str | Path, out_dir: str | Path, *,
                     per_person: int = 16, persons="all", conditions=None, pairs: str = "all",
                     settings: Optional[SamplerSettings] = None, image_size: Optional[int] = None,
                     use_ema: bool = True, device: str | torch.device = "auto", trust_pickle: bool = False,
                     grid_per_person: int = 8) -> dict:
    """Sample, decode and write JPGs + generation_info.json + the per-person grid; returns the info dict.

    ``checkpoint``: a ``{step:07d}.pt`` training checkpoint or a ``pretrained/`` folder (see
    microdoppler_finetune.dit.export.resolve_trained_dit for run folders).
    """
    from microdoppler_finetune.latents.export import load_exported_vae, read_export_info, read_latent_statistics

    settings = settings or SamplerSettings()
    device = pick_device(device)
    started = time.time()
    model, info = load_trained_dit(checkpoint, use_ema=use_ema, trust_pickle=trust_pickle, device=device)
    data_info = info["data"]
    export_info = read_export_info(vae_encoder)
    if data_info.get("vae_identity") and export_info["vae_identity"] != data_info["vae_identity"]:
        raise ValueError(f"{checkpoint} was trained on latents of VA-VAE {data_info['vae_identity']}, but "
                         f"--vae_encoder {vae_encoder} is {export_info['vae_identity']}: its decoder would turn "
                         f"these latents into garbage. Pass the encoder folder the DiT was trained with.")
    vae = load_exported_vae(vae_encoder).to(device)
    latents_mean, latents_std = read_latent_statistics(vae_encoder)
    uses_conditions = bool(info["dit_config"].get("num_conditions", 0))
    jobs = plan_jobs(data_info, per_person=per_person, persons=persons, conditions=conditions, pairs=pairs,
                     uses_conditions=uses_conditions)
    size = int(image_size or data_info.get("image_size") or 256)
    person_names, condition_names = data_info["person_names"], data_info.get("condition_names") or []

    latents = generate_latents(model, [j.person for j in jobs], [j.condition for j in jobs],
                               data_info["latent_shape"], settings, device, show_progress=True,
                               keys=[noise_key(j.person, j.condition, j.number) for j in jobs])
    images = decode_latents(vae, latents, latents_mean, latents_std, batch_size=settings.batch_size, device=device)
    out_dir = Path(out_dir)
    files = []
    for position, (job, image) in enumerate(zip(jobs, images)):
        condition = condition_names[job.condition] if job.condition is not None else None
        rel = sample_relative_path(person_names[job.person], condition, settings.seed, job.number)
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        to_pil(image, size).save(target, quality=95)
        files.append({"file": rel, "person": person_names[job.person], "person_id": job.person,
                      "condition": condition, "condition_id": job.condition,
                      "seen_in_training": job.seen_in_training, "sample_index": position})
    grid_rows = []
    for p in sorted({j.person for j in jobs}):
        rows = [i for i, j in enumerate(jobs) if j.person == p][:grid_per_person]
        grid_rows.append(rows)
    width = max(len(r) for r in grid_rows)
    grid_images = torch.stack([images[r[i]] if i < len(r) else torch.ones_like(images[0])
                               for r in grid_rows for i in range(width)])
    save_grid(grid_images, nrow=width, path=out_dir / GRID_FILE)
    seconds = time.time() - started
    result = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": int(info.get("step", -1)),
        "weights": info.get("weights", "ema" if use_ema else "model"),
        "vae_encoder": str(Path(vae_encoder).resolve()),
        "vae_identity": export_info["vae_identity"],
        "sampler": settings.describe(),
        "image_size": size,
        "latent_shape": list(data_info["latent_shape"]),
        "per_person": per_person,
        "pairs": pairs,
        "conditions_used": uses_conditions and conditions is not None,
        "null_condition": uses_conditions and conditions is None,
        "device": str(device),
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / max(len(jobs), 1), 4),
        "grid": GRID_FILE,
        "files": files,
    }
    (out_dir / INFO_FILE).write_text(json.dumps(result, indent=2))
    print(f"Wrote {len(files)} images to {out_dir} ({seconds:.1f} s)", flush=True)
    return result
