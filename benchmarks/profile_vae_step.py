"""Where the time of a VA-VAE fine-tuning step goes, part by part, for a config profile (default: the CPU demo).

    python benchmarks/profile_vae_step.py                                  # configs/cpu_demo.yaml, random images
    python benchmarks/profile_vae_step.py --manifest WORK/dataset/manifest.csv --data_root WORK/simulated
    python benchmarks/profile_vae_step.py --json out.json --repeats 7

Builds the stage module exactly as step4 does (vae_training.train.build_stage_model: the profile's VA-VAE preset,
LPIPS, alignment target with its feature cache, PatchGAN; random weights where the demo has them) and times,
each as the median of ``--repeats`` runs taken in turn (so a load change on a shared machine hits every part
alike):

* forward and backward of every network part: encoder, decoder, LPIPS, the discriminator's generator pass, the VF
  loss; the foundation model (DINOv2) without the cache and a cache hit;
* the adaptive GAN weight (two torch.autograd.grad calls to the decoder's last layer);
* the discriminator update and the two optimizer steps;
* the whole ``training_step`` with the GAN off (stage 1 of the demo) and on (stages 2 and 3), in a Lightning
  Trainer with the stage's CSV + TensorBoard loggers at its log interval, and the same without loggers (logging);
* data loading (a batch from the manifest's DataLoader, when a manifest is given);
* per-epoch work: a validation pass, the reconstruction grid, the loss-curve figure, a last.ckpt write.

Prints a table (seconds and share of the step) and, with ``--json``, writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from _bench_common import RandomImages, device_description, interleaved


def build(cfg_overrides: list[str], preset: str, work_dir: Path, stage_name: str):
    """(module, stage) as step4 builds them for ``stage_name`` of the preset's schedule."""
    from microdoppler_finetune.config import load_config
    from vae_training import stages as S
    from vae_training.train import build_stage_model

    cfg = load_config(preset, None, [f"run.work_dir={work_dir}", *cfg_overrides])
    stage = next(s for s in S.resolve_stages(cfg) if s["name"] == stage_name)
    built = build_stage_model(cfg, dict(stage, init_from="random"), init_checkpoint=None, target_cache={})
    return cfg, built.module, stage


def batch_source(cfg, args):
    """Batches of the profile's size: from the manifest (train split) or fixed random images."""
    size, batch = int(cfg.data.image_size), int(cfg.vae_train.batch_size)
    if args.manifest:
        from microdoppler_finetune.data import MicroDopplerDataset, load_manifest

        manifest = load_manifest(args.manifest, data_root=args.data_root)
        dataset = MicroDopplerDataset(manifest, "train", image_size=size)
    else:
        dataset = RandomImages(64, size, prefix="profile")
    return dataset, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu_demo")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--manifest", default=None, help="a step3 manifest.csv: real images and data loading")
    parser.add_argument("--data_root", default=None, help="where the manifest's images are (if moved)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainer_steps", type=int, default=4, help="timed training_step calls per setting")
    parser.add_argument("--no_unlogged", action="store_true", help="skip the steps without loggers (quicker)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    report = profile(args)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def profile(args) -> dict:
    import contextlib
    import io

    from vae_training import losses as L

    work = Path(tempfile.mkdtemp(prefix="profile_vae_"))
    with contextlib.redirect_stdout(io.StringIO()):  # the builders' loud "random weights" banners
        cfg, module, stage1 = build(args.set, args.preset, work, "stage1")
        _, module_gan, stage2 = build(args.set, args.preset, work, "stage2")
    dataset, batch_size = batch_source(cfg, args)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=int(cfg.data.num_workers))
    batch = next(iter(loader))
    x = batch["image"]
    vae, lpips, foundation, disc = module.vae, module.frozen.perceptual, module.frozen.foundation, module.discriminator
    module.train()
    cache = module.feature_cache
    features = foundation(x).float()
    if cache is not None:
        cache.features_for_batch(batch, x, foundation)  # fill: the timed lookups are hits
    cfg_loss = module.loss_config
    parts: dict[str, Callable[[], object]] = {}

    def fwd_bwd(forward: Callable[[], torch.Tensor]):
        def run():
            forward().backward()
        return run

    # ---- pieces, forward alone and forward + backward (backward = the difference)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(x))
        z = moments[:, : moments.shape[1] // 2].contiguous()
        recon = vae.decode(z)
    parts["encoder fwd"] = lambda: vae.encoder(x)
    parts["encoder fwd+bwd"] = fwd_bwd(lambda: vae.quant_conv(vae.encoder(x)).square().mean())
    parts["decoder fwd"] = lambda: vae.decode(z)
    parts["decoder fwd+bwd"] = fwd_bwd(lambda: vae.decode(z).square().mean())
    recon_req = recon.clone().requires_grad_(True)
    if lpips is not None:
        parts["LPIPS fwd"] = lambda: lpips(x, recon_req)
        parts["LPIPS fwd+bwd"] = fwd_bwd(lambda: lpips(x, recon_req).sum())
    parts["foundation (DINOv2) fwd, no cache"] = lambda: foundation(x)
    if cache is not None:
        parts["feature cache hit"] = lambda: cache.features_for_batch(batch, x, foundation)
    proj_req = vae.linear_proj(z).detach().requires_grad_(True)
    parts["VF loss fwd"] = lambda: L.vf_loss(proj_req, features, distmat_margin=0.25, cos_margin=0.5)
    parts["VF loss fwd+bwd"] = fwd_bwd(lambda: L.vf_loss(proj_req, features, distmat_margin=0.25,
                                                         cos_margin=0.5)[0])
    disc.requires_grad_(False)
    parts["disc generator pass fwd"] = lambda: disc(recon_req)
    parts["disc generator pass fwd+bwd"] = fwd_bwd(lambda: L.hinge_g_loss(disc(recon_req)))
    disc.requires_grad_(True)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-6, betas=(0.5, 0.9))

    def disc_update():
        loss, _ = L.discriminator_loss(disc, x, recon)
        loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
    parts["disc update (fwd real+fake, bwd, Adam)"] = disc_update
    opt_ae = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=1e-6, betas=(0.5, 0.9))

    def ae_adam():
        for p in vae.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        opt_ae.step()
    parts["autoencoder Adam step"] = ae_adam

    def adaptive():
        out = vae(x, sample=True)
        nll, _ = L.reconstruction_nll(x, out.reconstruction, lpips, cfg_loss.perceptual_weight)
        g = L.hinge_g_loss(disc(out.reconstruction))
        t0 = time.perf_counter()
        L.adaptive_weight(nll, g, vae.decoder_conv_out_weight, L.ADV_WEIGHT_MAX)
        return time.perf_counter() - t0
    disc.requires_grad_(False)
    adaptive_times = [adaptive() for _ in range(args.repeats)]
    disc.requires_grad_(True)

    def loss_fwd(with_gan: bool):
        def run():
            out = vae(x, sample=True)
            L.generator_loss(x, out.reconstruction, out.posterior, config=cfg_loss, disc_active=with_gan,
                             projected=out.projected, features=features,
                             perceptual=lpips if cfg_loss.perceptual_weight > 0 else None,
                             discriminator=disc if with_gan else None,
                             decoder_last_layer=vae.decoder_conv_out_weight,
                             encoder_last_layer=vae.encoder_conv_out_weight)
        return run

    times = interleaved(parts, repeats=args.repeats)
    times["adaptive GAN weight (2x autograd.grad)"] = statistics.median(adaptive_times)
    for key in list(times):
        if key.endswith("fwd+bwd"):
            base = key[: -len("fwd+bwd")]
            times[base + "bwd"] = max(0.0, times[key] - times.get(base + "fwd", 0.0))

    print("parts:", json.dumps({k: round(v, 4) for k, v in times.items()}), flush=True)
    # ---- the whole step in a Trainer, GAN off (stage 1) and on (stages 2-3), with and without loggers
    steps, breakdowns = {}, {}
    for name, mod in (("GAN off (stage 1)", module), ("GAN on (stages 2-3)", module_gan)):
        for logged in ((True,) if args.no_unlogged else (True, False)):
            label = f"training_step, {name}{'' if logged else ', no loggers'}"
            breakdowns[label] = {}
            steps[label] = trainer_step_time(mod, dataset, batch_size, cfg, work / f"logs_{len(steps)}", logged,
                                             args.trainer_steps, breakdowns[label])

    # ---- data loading: one batch from the loader (decode + collate), per batch
    data_time = None
    if args.manifest:
        def one_epoch_batches():
            started = time.perf_counter()
            count = 0
            for _ in loader:
                count += 1
                if count >= 10:
                    break
            return (time.perf_counter() - started) / count
        data_time = statistics.median(one_epoch_batches() for _ in range(3))

    # ---- per-epoch work
    per_epoch = epoch_work(module, cfg, dataset, batch_size, work, args.repeats)
    report = {
        "preset": args.preset, "overrides": args.set, "device": device_description(),
        "image_size": int(cfg.data.image_size), "batch_size": batch_size,
        "vae_preset": str(cfg.vae.preset), "lpips": str(cfg.vae_loss.lpips_net),
        "foundation": str(cfg.vae.vf_model), "disc_channels": int(cfg.vae_loss.disc_channels),
        "parts_seconds": {k: round(v, 5) for k, v in times.items()},
        "steps_seconds": {k: round(v, 5) for k, v in steps.items()},
        "step_breakdown_seconds": {k: {n: round(v, 5) for n, v in b.items()} for k, b in breakdowns.items()},
        "data_seconds_per_batch": None if data_time is None else round(data_time, 5),
        "per_epoch_seconds": {k: round(v, 5) for k, v in per_epoch.items()},
        "train_batches_per_epoch": -(-len(dataset) // batch_size) if args.manifest else None,
        "log_every_n_steps": int(cfg.vae_train.log_every_n_steps),
        "checkpoint_every_n_steps": int(cfg.vae_train.checkpoint_every_n_steps),
    }
    return report


INSTRUMENTED = ("alignment_features", "generator_step", "generator_terms", "manual_backward", "_all_ranks_finite",
                "_grads_finite", "on_before_optimizer_step", "_zero_gradient_disc_step", "toggle_optimizer",
                "untoggle_optimizer", "_log_train")


def trainer_step_time(module, dataset, batch_size, cfg, log_dir: Path, logged: bool, count: int,
                      breakdown: dict) -> float:
    """Median seconds per training batch in a Lightning Trainer (the stage's loggers, or none). ``breakdown``
    receives the mean seconds per batch spent in each of the module's step methods (INSTRUMENTED), in the
    loggers' writes and outside them all (Lightning's loop, the optimizers' step calls, the callbacks)."""
    import lightning.pytorch as pl

    from vae_training.stages import StageFolder
    from vae_training.train import stage_loggers

    warmup = 2
    spent: dict[str, float] = {}
    state = {"batch": -1, "depth": 0}

    def timed(name, fn):
        def wrapper(*a, **k):
            state["depth"] += 1
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                state["depth"] -= 1
                if state["batch"] >= warmup and state["depth"] == 0:  # outermost call only: no double counting
                    spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    originals = {name: getattr(module, name) for name in INSTRUMENTED if hasattr(module, name)}
    for name, fn in originals.items():
        setattr(module, name, timed(name, fn))

    class Timer(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state["batch"] = batch_idx
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self._t)

    timer = Timer()
    loggers = stage_loggers(StageFolder(log_dir, "stage")) if logged else False
    for logger in (loggers or []):
        logger.log_metrics = timed(f"logger write ({type(logger).__name__})", logger.log_metrics)
    every = max(1, int(cfg.vae_train.log_every_n_steps))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=warmup + count, limit_val_batches=0, logger=loggers,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0, accelerator="cpu", devices=1,
                         log_every_n_steps=every)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    trainer.fit(module, loader)
    for name in originals:
        delattr(module, name)  # back to the class's methods
    timed_steps = timer.times[warmup:]
    breakdown.update({name: value / len(timed_steps) for name, value in spent.items()})
    breakdown["rest of the batch (Lightning loop, optimizer.step calls, callbacks)"] = max(
        0.0, statistics.mean(timed_steps) - sum(spent.values()) / len(timed_steps))
    return statistics.median(timed_steps)


def epoch_work(module, cfg, dataset, batch_size, work: Path, repeats: int) -> dict:
    """Seconds of the once-per-epoch work: validation (per batch), the grid, the loss curves, a last.ckpt write."""
    import lightning.pytorch as pl

    from vae_training.callbacks import plot_loss_curves, save_last_checkpoint

    val_batches = 3
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=val_batches)
    grid_images = next(iter(loader))["image"][: int(cfg.vae_train.grid_images)]
    logs = sorted(work.glob("logs_*"))

    parts = {"validation, per batch": lambda: trainer.validate(module, loader, verbose=False),
             "reconstruction grid images": lambda: module.reconstruct_for_display(grid_images),
             "loss-curve figure": lambda: plot_loss_curves(logs[0] if logs else work, work / "curves.png"),
             "last.ckpt write": lambda: save_last_checkpoint(trainer, work / "profile_last.ckpt")}
    times = interleaved(parts, repeats=repeats)
    times["validation, per batch"] /= val_batches
    return times


def print_table(report: dict) -> None:
    step_on = report["steps_seconds"].get("training_step, GAN on (stages 2-3)")
    print(f"\nVA-VAE step profile: {report['preset']} ({report['vae_preset']}, {report['image_size']} px, batch "
          f"{report['batch_size']}, LPIPS {report['lpips']}, {report['foundation']}, disc {report['disc_channels']} "
          f"ch) on {report['device']}")
    print(f"{'part':48s} {'seconds':>9s} {'% of GAN-on step':>17s}")
    for key, value in report["parts_seconds"].items():
        share = f"{100 * value / step_on:.1f}" if step_on else ""
        print(f"{key:48s} {value:9.4f} {share:>17s}")
    for key, value in report["steps_seconds"].items():
        print(f"{key:48s} {value:9.4f}")
        for name, seconds in report["step_breakdown_seconds"].get(key, {}).items():
            print(f"    {name:60s} {seconds:9.4f}")
    if report["data_seconds_per_batch"] is not None:
        print(f"{'data loading, per batch':48s} {report['data_seconds_per_batch']:9.4f}")
    for key, value in report["per_epoch_seconds"].items():
        print(f"{'per epoch: ' + key:48s} {value:9.4f}")


if __name__ == "__main__":
    main()
