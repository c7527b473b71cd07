"""Builds what a stage trains and aligns to: the VA-VAE, the alignment target, LPIPS, the discriminator.

Everything here says what it loaded and from where; whatever is NOT the real thing (random weights standing in
for pretrained ones) is announced loudly and recorded in the stage's result.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from microdoppler_finetune.weights.locate import find_pretrained
from microdoppler_finetune.weights.registry import registry_item_for_timm_model


def loud(message: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}\n!! " + "\n!! ".join(message.splitlines()) + f"\n{bar}\n", flush=True)


@dataclass
class AlignmentTarget:
    model: torch.nn.Module
    description: str  # goes into logs, stage_result.json and reports
    pretrained: bool
    feature_dim: int
    name: str


@dataclass
class VAEInit:
    model: torch.nn.Module
    source: str  # "pretrained", "random" or a stage name
    checkpoint: Optional[str]
    notes: list = field(default_factory=list)


def _is_local_path(name: str) -> bool:
    return any(sep in name for sep in ("/", "\\")) or Path(name).exists()


@contextlib.contextmanager
def seeded(seed: int):
    """Random weights that are the same in every process and every run (the global RNG is left untouched).

    A randomly initialised stand-in (alignment target, LPIPS backbone) must not change between stages, on
    resume, or between DDP ranks, or the loss it defines would change with it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def registered_weights_for_timm_model(name: str) -> Optional[Path]:
    """The copy of a timm model's weights that step2 downloaded or found (Kaggle input, local dir), if any."""
    item = registry_item_for_timm_model(name)
    return find_pretrained(item) if item else None


def build_alignment_target(cfg: DictConfig, latent_size: int) -> AlignmentTarget:
    """The frozen model whose features the latents are aligned to (DINOv2-L in the release).

    ``vae.vf_model`` is a timm model name (its pretrained weights are used when they can be loaded) or a
    local checkpoint (file or timm/Hugging Face folder). Without weights, ``vae.allow_random_vf`` decides
    between a clear error and a randomly initialised target that keeps the machinery running (demo/tests)
    and is reported as such everywhere.
    """
    from models.foundation import FoundationWeightsUnavailable, create_foundation_model

    name = str(cfg.vae.vf_model)
    # vae.vf_token_grid only ever coarsens: a grid finer than the latents would cost more for nothing
    token_grid = min(int(cfg.vae.vf_token_grid), int(latent_size)) if cfg.vae.vf_token_grid else None
    common = dict(latent_size=int(latent_size), imagenet_norm=bool(cfg.vae.vf_imagenet_norm), token_grid=token_grid)
    if _is_local_path(name):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"--vf_model {name}: no such file or folder. Give a timm model name or an "
                                    f"existing checkpoint of the alignment target.")
        model = create_foundation_model(checkpoint_path=str(path), pretrained=False,
                                        trust_pickle=bool(cfg.vae.trust_pickle), **common)
        return AlignmentTarget(model, f"{model.name} from checkpoint {path}{_grid_note(model)}", True,
                               model.feature_dim, model.name)
    if bool(cfg.vae.vf_pretrained):
        try:
            # step2's copy (the Hugging Face cache, Kaggle inputs), else timm's download (which fails within
            # seconds offline: create_foundation_model asks microdoppler_finetune.utils.hub first).
            local = registered_weights_for_timm_model(name)
            model = (create_foundation_model(name, checkpoint_path=str(local), pretrained=False, **common)
                     if local else create_foundation_model(name, pretrained=True, **common))
            return AlignmentTarget(model, f"pretrained {model.name} ({model.weights}){_grid_note(model)}", True,
                                   model.feature_dim, model.name)
        except FoundationWeightsUnavailable as exc:
            if not bool(cfg.vae.allow_random_vf):
                raise RuntimeError(f"{exc}\n(Demo only: --set vae.allow_random_vf=true aligns to a random-init "
                                   f"target instead.)") from exc
            reason = str(exc).splitlines()[0]
    else:
        reason = "vae.vf_pretrained is false"
    with seeded(int(cfg.run.seed)):
        model = create_foundation_model(name, pretrained=False, **common)
    description = f"random-init {model.name} (NOT pretrained DINOv2; seed {int(cfg.run.seed)}){_grid_note(model)}"
    loud(f"ALIGNMENT TARGET IS NOT PRETRAINED: {description}.\nReason: {reason}\n"
         f"The VF loss aligns latents to random features: fine for a demo or a test, meaningless for real "
         f"results. Real runs need the DINOv2 weights (or --vf_model with a local checkpoint).")
    return AlignmentTarget(model, description, False, model.feature_dim, model.name)


def _grid_note(model) -> str:
    if tuple(model.token_grid) == tuple(model.grid):
        return ""
    return (f", {model.token_grid[0]}x{model.token_grid[1]} tokens upsampled to the {model.grid[0]}x{model.grid[1]} "
            f"latent grid")


def find_pretrained_vae(cfg: DictConfig) -> Optional[Path]:
    """Explicit --pretrained_path, else microdoppler_finetune.weights.locate.find_pretrained (None: not found)."""
    if cfg.vae.pretrained_path:
        path = Path(cfg.vae.pretrained_path)
        if not path.exists():
            raise FileNotFoundError(f"--pretrained_path {path} does not exist. Point it at the released "
                                    f"vavae-imagenet256-f16d32-dinov2.pt (or our exported model folder).")
        return path
    found = find_pretrained("vavae")
    return Path(found) if found else None


def build_vae(cfg: DictConfig, init_from: str, checkpoint: Optional[Path]) -> VAEInit:
    """The stage's starting VA-VAE: loaded from ``checkpoint``, or the preset with random weights."""
    from models.vavae import create_vavae, load_vavae

    if checkpoint is not None:
        model = load_vavae(str(checkpoint), trust_pickle=bool(cfg.vae.trust_pickle))
        return VAEInit(model, init_from, str(checkpoint), [f"initialised from {checkpoint}"])
    if init_from == "pretrained" and not bool(cfg.vae.allow_random_init):
        raise FileNotFoundError(
            "No pretrained VA-VAE found. Pass --pretrained_path /path/to/vavae-imagenet256-f16d32-dinov2.pt (on "
            "Kaggle: attach the dataset that holds it), run step2 to download it, or (demo only) "
            "--set vae.allow_random_init=true.")
    model = create_vavae(str(cfg.vae.preset))
    note = f"random init of preset '{cfg.vae.preset}'"
    if init_from == "pretrained":
        loud(f"NO PRETRAINED VA-VAE: stage starts from a {note} (vae.allow_random_init is on).")
    return VAEInit(model, "random", None, [note])


def match_projection(vae_init: VAEInit, target: AlignmentTarget, cfg: DictConfig) -> VAEInit:
    """linear_proj must map the latents to the target's feature dim."""
    model = vae_init.model
    have = int(model.config.foundation_dim)
    if have == target.feature_dim:
        return vae_init
    if vae_init.checkpoint is None:
        from models.vavae import create_vavae

        fresh = create_vavae(str(cfg.vae.preset), foundation_dim=target.feature_dim)
        vae_init.notes.append(f"linear_proj created for the target's {target.feature_dim}-dim features")
        return VAEInit(fresh, vae_init.source, None, vae_init.notes)
    raise ValueError(
        f"The alignment target '{target.description}' gives {target.feature_dim}-dim features, but the VA-VAE "
        f"loaded from {vae_init.checkpoint} projects its latents to {have} dims (linear_proj). Use a target with "
        f"{have}-dim features (the release: vit_large_patch14_dinov2.lvd142m, 1024) or start from random weights.")


def build_perceptual(cfg: DictConfig) -> Optional[torch.nn.Module]:
    """Frozen LPIPS; a random backbone (demo) is announced loudly and recorded as such."""
    if float(cfg.vae_loss.perceptual_weight) <= 0:
        return None
    from models.perceptual import create_lpips

    with seeded(int(cfg.run.seed)):  # a random backbone (demo) must be the same in every stage and rerun
        model = create_lpips(net=str(cfg.vae_loss.lpips_net),
                             allow_random_backbone=bool(cfg.vae_loss.allow_random_lpips))
    if not model.backbone_pretrained:
        loud(f"LPIPS IS NOT THE REAL METRIC: {model.backbone_source}. The perceptual loss term and val_lpips use "
             f"a random {model.net_name} backbone.")
    return model


def describe_perceptual(model: Optional[torch.nn.Module]) -> str:
    if model is None:
        return "off (perceptual_weight 0)"
    state = "pretrained" if model.backbone_pretrained else "NOT PRETRAINED"
    return f"LPIPS {model.net_name} ({state}: {model.backbone_source})"


def build_discriminator(cfg: DictConfig) -> torch.nn.Module:
    from models.discriminator import create_discriminator

    return create_discriminator("patchgan", num_layers=int(cfg.vae_loss.disc_num_layers),
                                ndf=int(cfg.vae_loss.disc_channels))


def init_discriminator(discriminator: torch.nn.Module, checkpoint: Optional[Path], *, released: bool,
                       trust_pickle: bool = False) -> str:
    """Carry the discriminator over from the checkpoint the stage starts from (the released recipe does).

    Our stage checkpoints hold it under ``discriminator.``; the released VA-VAE file and step2's safetensors
    conversion of it under ``loss.discriminator.``. Every key of the file is accounted for in the printed key
    report (loaded into the discriminator, or ignored with the reason); weights that do not fit are an error.
    A file without a discriminator gives a random one, said in the log. Returns a one-line note for the stage.
    """
    from models.checkpoints import PickleRefusedError, load_state_file
    from models.discriminator import RELEASED_DISCRIMINATOR_PREFIX, load_discriminator_state

    def random_init(why: str, announce=print) -> str:
        note = f"discriminator: random init ({why})"
        announce(f"{note}.")
        return note

    if checkpoint is None:
        return random_init("the stage starts from random weights")
    if not Path(checkpoint).is_file():
        return random_init(f"{checkpoint} is not a single file")
    try:
        state = load_state_file(checkpoint, trust_pickle=trust_pickle)
    except PickleRefusedError:
        # The VA-VAE loader already stopped on (or was allowed) this file; the discriminator is optional.
        return random_init(f"{checkpoint} needs unpickling; not read for the discriminator", loud)
    state = state.get("state_dict", state)
    prefix = RELEASED_DISCRIMINATOR_PREFIX if released else "discriminator."
    sub = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not sub:
        why = f"no '{prefix}*' weights in {checkpoint}"
        return random_init(why, loud if released else print)
    others = sorted(key for key in state if not key.startswith(prefix))
    report = load_discriminator_state(
        discriminator, sub, source=f"{checkpoint} [{prefix}*]",
        ignored={"not the discriminator (the VA-VAE loader reports these)": others})
    print(report.describe(), flush=True)
    return f"discriminator: {report.loaded} tensors from {checkpoint} ({prefix}*)"
