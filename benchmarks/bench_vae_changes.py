"""Before/after ratios of the VA-VAE training-step changes, each variant timed in turn in ONE process.

    python benchmarks/bench_vae_changes.py                                    # the micro comparisons
    git archive c8954c3 vae_training | tar -x -C /tmp/base                    # a baseline's training code
    python benchmarks/bench_vae_changes.py --baseline_src /tmp/base           # + whole step, baseline vs now

Micro comparisons (the CPU demo's networks: tiny_f4 at 64 px, batch 8, LPIPS alex, PatchGAN 16 channels), each
the median of per-pair ratios (A and B run alternately, so machine load drifts hit both alike):

* adaptive GAN weight: generator_loss + backward (LPIPS and the discriminator backpropagated twice, as the
  official code does) vs generator_loss_for_step + backward of its surrogate (once);
* Adam: the default (foreach) implementation vs fused, on the autoencoder's parameters;
* gradient norm: a Python loop of per-tensor norms (twice per step before) vs one fused norm (once);
* channels_last memory format for the VA-VAE forward + backward (reported, not used by default on the CPU).

The DINOv2 features of a batch as the demo computes them (8x8 tokens upsampled, ``vae.vf_token_grid=8``) vs
before (16x16 tokens). On a CPU with native bf16 (AVX512-BF16 / AMX), also the whole training_step in a Lightning
Trainer under bf16-mixed vs 32-true, GAN off and on (faster, but the demo stays in fp32: its VA-VAE ended 1.9 dB
lower in validation PSNR under bf16). ``--skip_bf16`` leaves the bf16 rows out.

With ``--baseline_src`` (a folder holding a baseline's ``vae_training/module.py`` and ``losses.py``): the whole
training_step in a Lightning Trainer, baseline module vs current module on identical weights and batches, GAN
off (stage 1) and on (stages 2-3), rounds alternating between the two.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from _bench_common import RandomImages, device_description, paired_ratio


def build(stage_name: str, overrides=()):
    from microdoppler_finetune.config import load_config
    from vae_training import stages as S
    from vae_training.train import build_stage_model

    work = Path(tempfile.mkdtemp(prefix="bench_vae_changes_"))
    cfg = load_config("cpu_demo", None, [f"run.work_dir={work}", *overrides])
    stage = next(s for s in S.resolve_stages(cfg) if s["name"] == stage_name)
    with contextlib.redirect_stdout(io.StringIO()):
        built = build_stage_model(cfg, dict(stage, init_from="random"), init_checkpoint=None, target_cache={})
    return cfg, built.module


def micro(repeats: int) -> dict:
    from vae_training import losses as L
    from vae_training.module import _total_norm_tensor

    cfg, module = build("stage2")
    module.train()
    vae, lpips, disc = module.vae, module.frozen.perceptual, module.discriminator
    batch = int(cfg.vae_train.batch_size)
    size = int(cfg.data.image_size)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = module.frozen.foundation(x).float()
    disc.requires_grad_(False)  # as toggle_optimizer leaves it in the autoencoder update
    kwargs = dict(config=module.loss_config, disc_active=True, features=features, perceptual=lpips,
                  discriminator=disc, decoder_last_layer=vae.decoder_conv_out_weight,
                  encoder_last_layer=vae.encoder_conv_out_weight)

    def before():
        out = vae(x, sample=True)
        total, _ = L.generator_loss(x, out.reconstruction, out.posterior, projected=out.projected, **kwargs)
        total.backward()
        vae.zero_grad(set_to_none=True)

    def after():
        out = vae(x, sample=True)
        step = L.generator_loss_for_step(x, out.reconstruction, out.posterior, projected=out.projected, **kwargs)
        step.backward.backward()
        vae.zero_grad(set_to_none=True)

    results = {"generator loss + backward, GAN on (adaptive weight)": paired_ratio(after, before, repeats=repeats)}

    params = [p for p in vae.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    foreach = torch.optim.Adam(params, lr=1e-6, betas=(0.5, 0.9))
    fused = torch.optim.Adam(params, lr=1e-6, betas=(0.5, 0.9), fused=True)
    results["Adam step, autoencoder"] = paired_ratio(fused.step, foreach.step, repeats=max(repeats, 9))

    def loop_norm_twice():
        for _ in range(2):
            grads = [p.grad.detach() for p in params]
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def fused_norm_once():
        bool(torch.isfinite(_total_norm_tensor(params)))
    results["gradient norm per step (loop x2 vs fused x1)"] = paired_ratio(fused_norm_once, loop_norm_twice,
                                                                            repeats=max(repeats, 9))
    vae.zero_grad(set_to_none=True)

    vae_cl = copy.deepcopy(vae).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def fwd_bwd(model, images):
        def run():
            out = model(images, sample=False)
            (out.reconstruction.square().mean() + out.projected.square().mean()).backward()
            model.zero_grad(set_to_none=True)
        return run
    results["VA-VAE fwd+bwd, channels_last vs contiguous"] = paired_ratio(fwd_bwd(vae_cl, x_cl), fwd_bwd(vae, x),
                                                                         repeats=repeats)
    return results


def load_baseline(src: Path):
    """The baseline's module and losses, imported under private names (the baseline module uses the baseline
    losses)."""
    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        return module

    losses = load("_baseline_losses", src / "vae_training" / "losses.py")
    module = load("_baseline_module", src / "vae_training" / "module.py")
    module.L = losses
    return module


def image_loader(batch: int, size: int, count: int):
    return torch.utils.data.DataLoader(RandomImages(count, size), batch_size=batch)


def fill_feature_cache(module, loader) -> None:
    """Every timed step then reads the cache, as after the first epoch."""
    for item in loader:
        module.alignment_features(item, item["image"])


def median_step_seconds(module, loader, precision: str = "32-true") -> float:
    """Median training_step time of one epoch in a Lightning Trainer (the first batch carries the fit's setup)."""
    import lightning.pytorch as pl

    class Timer(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.started)

    timer = Timer()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         accelerator="cpu", devices=1, callbacks=[timer], log_every_n_steps=5, precision=precision)
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(module, loader)
    return statistics.median(timer.times[1:])


def alternate(run_a: Callable[[], float], run_b: Callable[[], float], rounds: int) -> dict:
    """a and b in turn, ``rounds`` times; speed-up = median of the per-round ratios b/a."""
    ratios, t_a, t_b = [], [], []
    for _ in range(rounds):
        b, a = run_b(), run_a()
        t_a.append(a)
        t_b.append(b)
        ratios.append(b / a)
    return {"a_seconds": statistics.median(t_a), "b_seconds": statistics.median(t_b),
            "speedup_b_over_a": statistics.median(ratios), "repeats": rounds}


STAGES = (("stage1", "GAN off (stage 1)"), ("stage2", "GAN on (stages 2-3)"))


def whole_step(src: Path, rounds: int, steps: int) -> dict:
    baseline = load_baseline(src)
    results = {}
    for stage_name, label in STAGES:
        cfg, current = build(stage_name)
        old = baseline.VAVAEFineTuneModule(
            copy.deepcopy(current.vae), copy.deepcopy(current.discriminator), stage=current.stage,
            loss_cfg=current.loss_cfg, train_cfg=current.train_cfg, perceptual=current.frozen.perceptual,
            foundation=current.frozen.foundation, feature_cache=current.feature_cache,
            alignment_target=current.alignment_target)
        batch, size = int(cfg.vae_train.batch_size), int(cfg.data.image_size)
        loader = image_loader(batch, size, batch * (steps + 1))
        fill_feature_cache(current, loader)
        results[f"training_step, {label}"] = alternate(lambda: median_step_seconds(current, loader),
                                                       lambda: median_step_seconds(old, loader), rounds)
    return results


def token_grid(repeats: int) -> dict:
    """The first epoch's DINOv2 features of one demo batch: the demo's coarser token grid vs the latent grid."""
    from models.foundation import create_foundation_model

    cfg, module = build("stage1")
    coarse = module.frozen.foundation  # built as the demo builds it (vae.vf_token_grid)
    fine = create_foundation_model(str(cfg.vae.vf_model), pretrained=False, latent_size=coarse.grid)
    batch = int(cfg.vae_train.batch_size)
    images = next(iter(image_loader(batch, int(cfg.data.image_size), batch)))["image"]
    (th, tw), (lh, lw) = coarse.token_grid, coarse.grid
    label = f"DINOv2 features of a batch, {th}x{tw} vs {lh}x{lw} tokens"
    return {label: paired_ratio(lambda: coarse(images), lambda: fine(images), repeats=repeats)}


def cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 (Intel Cooper Lake / Sapphire Rapids and newer, AMD Zen 4 and newer): only there can
    bf16 autocast speed the CPU up; elsewhere oneDNN emulates it."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:  # not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_bf16(rounds: int, steps: int) -> dict:
    """The whole training_step under bf16-mixed vs 32-true (same module, weights and batches), on a CPU with
    native bf16 only."""
    if not cpu_native_bf16():
        print("cpu_bf16: this CPU has no native bf16; skipped")
        return {}
    results = {}
    for stage_name, label in STAGES:
        cfg, module = build(stage_name)
        batch, size = int(cfg.vae_train.batch_size), int(cfg.data.image_size)
        loader = image_loader(batch, size, batch * (steps + 1))
        fill_feature_cache(module, loader)
        results[f"training_step bf16-mixed vs fp32, {label}"] = alternate(
            lambda: median_step_seconds(module, loader, "bf16-mixed"),
            lambda: median_step_seconds(module, loader, "32-true"), rounds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline_src", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and variant")
    parser.add_argument("--skip_micro", action="store_true")
    parser.add_argument("--skip_bf16", action="store_true", help="skip the CPU bf16 vs fp32 step comparison")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {} if args.skip_micro else micro(args.repeats)
    if args.baseline_src is not None:
        results.update(whole_step(args.baseline_src, args.rounds, args.steps))
    if not args.skip_micro:
        results.update(token_grid(args.repeats))
    if not args.skip_bf16 and not torch.cuda.is_available():
        results.update(cpu_bf16(args.rounds, args.steps))
    print(f"\nVA-VAE step changes on {device_description()} (A = now, B = before; speed-up = B/A, median of "
          f"per-pair ratios)")
    print(f"{'change':58s} {'now s':>9s} {'before s':>9s} {'speed-up':>9s}")
    for name, row in results.items():
        print(f"{name:58s} {row['a_seconds']:9.4f} {row['b_seconds']:9.4f} {row['speedup_b_over_a']:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": device_description(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
