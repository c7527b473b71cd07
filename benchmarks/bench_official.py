"""Training steps of our code and of the official LightningDiT / VA-VAE code, side by side in one process.

    # the official code is not part of this repository: point to a checkout of hustvl/LightningDiT
    python benchmarks/bench_official.py --official_src /path/to/LightningDiT
    python benchmarks/bench_official.py --official_src SRC --what dit --dit_presets tiny/2,S/2 --device cuda

Its Python dependencies that this project does not have (install them into a side folder and pass
``--official_deps``; nothing of them is imported by the project itself)::

    pip install --no-deps --target /tmp/official_deps torchdiffeq einops fairscale taming-transformers-rom1504

DiT: one training step = the flow-matching loss (MSE + cosine term, log-normal t: the official config) +
backward + AdamW step, for our ``models.dit.LightningDiT`` with ``models.transport.Transport`` and for the
official ``models.lightningdit.LightningDiT`` with its ``transport.create_transport`` at the same size, batch,
latent shape and device (no EMA, no clipping on either side). The two alternate step by step; the figure is the
median of per-pair ratios.

VA-VAE: one training step of each side's Lightning module under a Lightning Trainer (manual optimisation: the
autoencoder update with the adaptive GAN weight, then the discriminator update), GAN on, same architecture
(``--vae_preset``; the official ``ddconfig`` is built from it), 256 px images (the official VF loss reshapes
DINOv2's 16x16 token grid by image side / 16, so it runs at 256 px only), DINOv2-L alignment target, LPIPS-VGG
and the 3-layer PatchGAN with random weights on both sides (downloads are switched off for the official code by
patching its weight loaders in this process only). Ours runs twice: without the feature cache (every step runs
DINOv2, as the official code always does: a first epoch) and with it (every later epoch). Rounds alternate
between the variants.

Without ``--official_src`` (or when its dependencies are missing) the official side is skipped with a message
and only our figures are printed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Optional

import torch

from _bench_common import device_description, synchronize

OFFICIAL_HINT = ("pip install --no-deps --target /tmp/official_deps torchdiffeq einops fairscale "
                 "taming-transformers-rom1504 and pass --official_deps /tmp/official_deps")


class OfficialUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def official_import_path(src: Path, deps: Optional[Path], *extra: str):
    """sys.path with the official checkout (and its side dependencies) first; the official code imports a
    top-level package named ``models`` like ours, so ours is set aside while it imports and put back after."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "models" or k.startswith("models.")}
    paths = [str(src / e) if e else str(src) for e in extra or ("",)] + ([str(deps)] if deps else [])
    sys.path[:0] = paths
    try:
        yield
    finally:
        for path in paths:
            sys.path.remove(path)
        official = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "models" or k.startswith("models.")}
        sys.modules.update(ours)
        sys.modules.update({"_official_" + k: v for k, v in official.items()})


# ----------------------------------------------------------------------------------------------- DiT


def official_dit_pieces(src: Path, deps: Optional[Path]):
    try:
        with official_import_path(src, deps):
            lightningdit = importlib.import_module("models.lightningdit")
            transport = importlib.import_module("transport")
    except ImportError as exc:
        raise OfficialUnavailable(f"the official DiT code does not import ({exc}); {OFFICIAL_HINT}") from exc
    return lightningdit, transport


def dit_step_comparison(preset: str, latent_size: int, channels: int, batch: int, classes: int, device,
                        official, repeats: int) -> dict:
    from models.dit import DIT_PRESETS, create_dit, preset_name
    from models.transport import Transport

    size = dict(DIT_PRESETS[preset_name(preset)])
    torch.manual_seed(0)
    ours = create_dit(preset, input_size=latent_size, in_channels=channels, num_classes=classes).to(device).train()
    transport = Transport(time_sampling="logit_normal", use_cosine_loss=True)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)
    x = torch.randn(batch, channels, latent_size, latent_size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step_ours():
        loss = transport.training_losses(ours, x, person=y)["loss"].mean()
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    compiled = create_dit(preset, input_size=latent_size, in_channels=channels, num_classes=classes).to(device)
    compiled.load_state_dict(ours.state_dict())
    compiled.train().compile_blocks()
    opt_compiled = torch.optim.AdamW(compiled.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)

    def step_compiled():  # dit.train.compile_blocks=true
        loss = transport.training_losses(compiled, x, person=y)["loss"].mean()
        opt_compiled.zero_grad(set_to_none=True)
        loss.backward()
        opt_compiled.step()

    steps = {"ours": step_ours, "ours_compiled": step_compiled}
    row = {"preset": preset, "latent": f"{channels}x{latent_size}x{latent_size}", "batch": batch,
           "params_ours_m": round(sum(p.numel() for p in ours.parameters()) / 1e6, 3)}
    if official is not None:
        lightningdit, official_transport = official
        theirs = lightningdit.LightningDiT(
            input_size=latent_size, patch_size=size["patch_size"], in_channels=channels,
            hidden_size=size["hidden_size"], depth=size["depth"], num_heads=size["num_heads"], num_classes=classes,
            use_qknorm=False, use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False).to(device).train()
        their_transport = official_transport.create_transport("Linear", "velocity", None, None, None,
                                                              use_cosine_loss=True, use_lognorm=True)
        opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)

        def step_theirs():  # as the official train.py computes its loss
            terms = their_transport.training_losses(theirs, x, dict(y=y))
            loss = terms["loss"].mean() + terms["cos_loss"].mean()
            opt_theirs.zero_grad()
            loss.backward()
            opt_theirs.step()

        steps["official"] = step_theirs
        row["params_official_m"] = round(sum(p.numel() for p in theirs.parameters()) / 1e6, 3)
    times = {name: [] for name in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in steps.items():
            synchronize()
            started = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - started)
    row["ours_s"] = statistics.median(times["ours"])
    row["ours_compiled_s"] = statistics.median(times["ours_compiled"])
    if "official" in times:
        row["official_s"] = statistics.median(times["official"])
        row["speedup_ours_vs_official"] = statistics.median(o / a for a, o in zip(times["ours"], times["official"]))
        row["speedup_ours_compiled_vs_official"] = statistics.median(
            o / a for a, o in zip(times["ours_compiled"], times["official"]))
    return row


# ----------------------------------------------------------------------------------------------- VA-VAE


def official_vavae_module(src: Path, deps: Optional[Path], preset: dict, lr: float):
    """The official AutoencoderKL + LPIPSWithDiscriminator (GAN from step 0, fixed vf_weight 0.1, margins 0.25 /
    0.5: our stage-3 settings), random weights, no downloads."""
    import timm
    import torchvision

    try:
        with official_import_path(src, deps, "vavae"):
            lpips_module = importlib.import_module("taming.modules.losses.lpips")
            foundation_module = importlib.import_module("ldm.models.foundation_models")
            autoencoder = importlib.import_module("ldm.models.autoencoder")
    except ImportError as exc:
        raise OfficialUnavailable(f"the official VA-VAE code does not import ({exc}); {OFFICIAL_HINT}") from exc
    # No downloads: random VGG / DINOv2 weights (as ours below), patched in these modules only.
    lpips_module.models = types.SimpleNamespace(vgg16=lambda pretrained=True, **kw: torchvision.models.vgg16(
        weights=None))
    lpips_module.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None

    def create_model(name, pretrained=True, **kwargs):
        return timm.create_model(name.replace("hf-hub:timm/", "").split(".")[0], pretrained=False, **kwargs)
    foundation_module.timm = types.SimpleNamespace(create_model=create_model)
    channels = list(preset["block_out_channels"])
    ddconfig = dict(double_z=True, z_channels=preset["latent_channels"], resolution=256, in_channels=3, out_ch=3,
                    ch=channels[0], ch_mult=[c // channels[0] for c in channels],
                    num_res_blocks=preset["layers_per_block"], attn_resolutions=[16], dropout=0.0)
    lossconfig = {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                  "params": dict(disc_start=0, kl_weight=1e-6, disc_weight=0.5, vf_weight=0.1, adaptive_vf=False,
                                 distmat_margin=0.25, cos_margin=0.5)}
    with official_import_path(src, deps, "vavae"), contextlib.redirect_stdout(io.StringIO()):
        module = autoencoder.AutoencoderKL(ddconfig=ddconfig, lossconfig=lossconfig,
                                           embed_dim=preset["latent_channels"], use_vf="dinov2", reverse_proj=True)
    module.learning_rate = lr
    return module


def our_vavae_module(preset_name_: str, use_cache: bool, lr: float):
    from models.discriminator import create_discriminator
    from models.foundation import FoundationFeatureCache, create_foundation_model
    from models.perceptual import create_lpips
    from models.vavae import create_vavae
    from vae_training.module import VAVAEFineTuneModule

    torch.manual_seed(0)
    vae = create_vavae(preset_name_, foundation_dim=1024)
    foundation = create_foundation_model("vit_large_patch14_dinov2.lvd142m", pretrained=False,
                                         latent_size=256 // vae.downsample_factor)
    cache = FoundationFeatureCache.for_model(foundation, in_memory=True) if use_cache else None
    stage = dict(name="bench", epochs=1, learning_rate=lr, vf_weight=0.1, distmat_margin=0.25, cos_margin=0.5,
                 disc_start=0, init_from="random")
    loss_cfg = dict(perceptual_weight=1.0, kl_weight=1e-6, disc_weight=0.5, adaptive_vf=False)
    with contextlib.redirect_stderr(io.StringIO()):
        lpips = create_lpips("vgg", allow_random_backbone=True, download=False)
    return VAVAEFineTuneModule(vae, create_discriminator("patchgan"), stage=stage, loss_cfg=loss_cfg,
                               train_cfg={"gradient_accumulation": 1}, perceptual=lpips, foundation=foundation,
                               feature_cache=cache, alignment_target="random-init DINOv2-L")


def vavae_step_comparison(args, device) -> dict:
    import lightning.pytorch as pl

    from models.vavae import VAVAE_PRESETS

    preset = VAVAE_PRESETS[args.vae_preset]
    batch, steps = args.vae_batch, args.vae_steps
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch * (steps + 1), 3, 256, 256, generator=generator) * 2 - 1

    class Items(torch.utils.data.Dataset):
        def __init__(self, hwc: bool):
            self.hwc = hwc

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            image = images[i].permute(1, 2, 0) if self.hwc else images[i]  # the official get_input wants HWC
            return {"image": image, "path": f"bench/{i}.jpg", "index": i, "person_id": 0, "condition_id": 0,
                    "flipped": False}

    modules = {"ours, no feature cache (1st epoch)": (our_vavae_module(args.vae_preset, False, 1e-4), False),
               "ours, feature cache (later epochs)": (our_vavae_module(args.vae_preset, True, 1e-4), False)}
    note = None
    if args.official_src is not None:
        try:
            modules["official"] = (official_vavae_module(args.official_src, args.official_deps, preset, 1e-4), True)
        except OfficialUnavailable as exc:
            note = f"official VA-VAE skipped: {exc}"
            print(note, flush=True)
    cached = modules["ours, feature cache (later epochs)"][0]
    cached.frozen.to(device)
    for item in torch.utils.data.DataLoader(Items(False), batch_size=batch):
        cached.alignment_features({"path": item["path"]}, item["image"].to(device))

    def lightning_of(module):
        """The official module is a ``pytorch_lightning`` one (the package's old name), ours a ``lightning.pytorch``
        one; each Trainer accepts only its own package's modules and callbacks."""
        try:
            import pytorch_lightning
        except ImportError:  # then the official module could not have been built either
            return pl
        return pytorch_lightning if isinstance(module, pytorch_lightning.LightningModule) else pl

    def timer_for(package):
        class Timer(package.Callback):
            def __init__(self):
                self.times = []

            def on_train_batch_start(self, trainer, pl_module, batch_, batch_idx):
                synchronize()
                self.started = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
                synchronize()
                self.times.append(time.perf_counter() - self.started)
        return Timer()

    def run(module, hwc: bool) -> float:
        package = lightning_of(module)
        timer = timer_for(package)
        trainer = package.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                                  accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                                  callbacks=[timer], log_every_n_steps=50)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(module, torch.utils.data.DataLoader(Items(hwc), batch_size=batch))
        return statistics.median(timer.times[1:])  # the first batch of a fit carries its setup

    times = {name: [] for name in modules}
    for _ in range(args.vae_rounds):
        for name, (module, hwc) in modules.items():
            times[name].append(run(module, hwc))
    row = {"preset": args.vae_preset, "image_size": 256, "batch": batch, "lpips": "vgg (random weights)",
           "foundation": "DINOv2-L (random weights)", "gan": "on", "adaptive_vf": False,
           "seconds": {name: statistics.median(values) for name, values in times.items()}, "note": note}
    if "official" in times:
        row["speedup_vs_official"] = {
            name: statistics.median(o / a for a, o in zip(values, times["official"]))
            for name, values in times.items() if name != "official"}
    return row


# ----------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official_src", type=Path, default=None, help="a checkout of hustvl/LightningDiT")
    parser.add_argument("--official_deps", type=Path, default=None,
                        help="a folder with torchdiffeq, einops, taming (pip install --target)")
    parser.add_argument("--what", default="dit,vavae")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dit_presets", default="tiny/2", help="comma list of models.dit presets")
    parser.add_argument("--dit_latent", default="16x16", help="channels x side of the latents (demo: 16x16)")
    parser.add_argument("--dit_batch", type=int, default=32)
    parser.add_argument("--dit_repeats", type=int, default=10)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--vae_preset", default="tiny", help="models.vavae preset (f16: tiny or f16d32)")
    parser.add_argument("--vae_batch", type=int, default=1)
    parser.add_argument("--vae_steps", type=int, default=2, help="timed steps per round and variant")
    parser.add_argument("--vae_rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu")
    if args.official_src is not None and not (args.official_src / "models" / "lightningdit.py").is_file():
        print(f"--official_src {args.official_src} is not a LightningDiT checkout (no models/lightningdit.py): "
              f"the official side is skipped.")
        args.official_src = None
    if args.official_src is None:
        print("No official code (--official_src): only our steps are timed. Fetch hustvl/LightningDiT and pass "
              "its folder to compare.", flush=True)
    result = {"device": device_description() if device.type == "cuda" else f"cpu: {device_description()}",
              "official_src": str(args.official_src) if args.official_src else None, "dit": [], "vavae": None}
    what = set(args.what.split(","))
    if "dit" in what:
        official = None
        if args.official_src is not None:
            try:
                official = official_dit_pieces(args.official_src, args.official_deps)
            except OfficialUnavailable as exc:
                print(f"official DiT skipped: {exc}", flush=True)
        channels, side = (int(v) for v in args.dit_latent.split("x"))
        for preset in args.dit_presets.split(","):
            row = dit_step_comparison(preset.strip(), side, channels, args.dit_batch, args.classes, device, official,
                                      args.dit_repeats)
            result["dit"].append(row)
            print(json.dumps(row), flush=True)
    if "vavae" in what:
        result["vavae"] = vavae_step_comparison(args, device)
        print(json.dumps(result["vavae"]), flush=True)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def print_table(result: dict) -> None:
    print(f"\nTraining steps, ours vs the official code ({result['device']}); speed-up = official / ours")
    for row in result["dit"]:
        official = f"{row['official_s']:.4f} s" if "official_s" in row else "skipped"
        speedup = f"{row['speedup_ours_vs_official']:.2f}x" if "speedup_ours_vs_official" in row else "-"
        compiled = (f"{row['speedup_ours_compiled_vs_official']:.2f}x" if "speedup_ours_compiled_vs_official" in row
                    else "-")
        print(f"  DiT {row['preset']:6s} latents {row['latent']}, batch {row['batch']}: ours {row['ours_s']:.4f} s, "
              f"official {official} (its blocks compiled), speed-up {speedup}; ours with compile_blocks "
              f"{row['ours_compiled_s']:.4f} s, speed-up {compiled}")
    row = result.get("vavae")
    if row:
        print(f"  VA-VAE {row['preset']} at {row['image_size']} px, batch {row['batch']} (GAN on, DINOv2-L, "
              f"LPIPS-VGG):")
        for name, seconds in row["seconds"].items():
            speedup = row.get("speedup_vs_official", {}).get(name)
            print(f"    {name:38s} {seconds:8.3f} s" + (f"   speed-up {speedup:.2f}x" if speedup else ""))


if __name__ == "__main__":
    main()
