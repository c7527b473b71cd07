"""The DiT training loop: ``train_dit(cfg)``.

A plain PyTorch loop (as in DiT/nanoGPT): AdamW, EMA (diffusers' EMAModel), gradient clipping, fp16 + GradScaler
/ bf16 / fp32, DDP under torchrun, optional gradient checkpointing, LoRA / frozen backbone / gradual unfreezing, an
auxiliary supervised-contrastive loss, a deterministic validation loss, sample grids, ``{step:07d}.pt``
checkpoints, a progress bar, TensorBoard scalars, and at the end the EMA model as a diffusers folder
(``<run_dir>/pretrained``, see microdoppler_finetune.dit.export).

Rerunning the same command resumes from the checkpoint with the highest step number in
``<run_dir>/checkpoints``: model, EMA, optimizer, scaler, step, RNG states and best validation loss come back,
and the architecture (including LoRA adapters) is the checkpoint's, whatever the command line says.

Every random draw of a step (batch order, posterior samples, t, noise, label dropout) comes from generators
seeded by the seed and the step, so a resumed run repeats exactly what an uninterrupted one would have done; the
posterior samples, noise and times by each sample's place in the step's global batch too, so two processes with
batch B draw what one process with batch 2B draws (label dropout, drawn inside the model, differs per rank).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from microdoppler_finetune.config import save_config
from microdoppler_finetune.dit import checkpointing as C
from microdoppler_finetune.dit.contrastive import PooledFeatureTap, supervised_contrastive_loss
from microdoppler_finetune.dit.data import DiTData, LatentSplit, load_dit_data, run_dir_of, validation_noise
from microdoppler_finetune.dit.distributed import (
    DistInfo,
    any_rank_true,
    barrier,
    cleanup_distributed,
    mean_over_ranks,
    setup_distributed,
)
from microdoppler_finetune.dit.ema import DiTEMA
from microdoppler_finetune.dit.export import PRETRAINED_DIRNAME, write_pretrained
from microdoppler_finetune.dit.finetune import (
    LoraSettings,
    TrainableRule,
    apply_lora,
    apply_trainable_rule,
    optimizer_parameters,
)
from microdoppler_finetune.dit.logging import TrainLog
from microdoppler_finetune.dit.model_setup import (
    build_dit,
    dit_config_of,
    enable_gradient_checkpointing,
    model_forward,
    num_blocks_of,
)
from microdoppler_finetune.dit.nonfinite import nonfinite_advice, nonfinite_cause
from microdoppler_finetune.dit.objective import (
    deterministic_val_loss,
    make_transport,
    sample_timesteps,
    velocity_loss_terms,
)
from microdoppler_finetune.utils.plain import to_plain
from microdoppler_finetune.utils.progress import progress
from microdoppler_finetune.utils.tensors import unwrap_model

STOP_FINISHED = "finished"
STOP_TIME_BUDGET = "time_budget"
STOP_NONFINITE = "nonfinite"
NONFINITE_STOP_FILE = "nonfinite_stop.pt"  # not a {step:07d}.pt: never resumed from


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: fp16 on CUDA GPUs without bf16 (T4, P100: with GradScaler), bf16 where supported, fp32 on CPU."""
    name = str(name).lower()
    if name not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision '{name}' not understood: use auto, fp32, fp16 or bf16.")
    if device.type != "cuda":
        if name in ("fp16", "bf16"):
            print(f"NOTE: precision {name} asked for on {device}: autocast is only used on CUDA, training in fp32.",
                  flush=True)
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(step) * 4099 + int(rank) * 131 + stream) % (2**63 - 1)


def learning_rate_at(step: int, base_lr: float, warmup_steps: int) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr


@dataclass
class BatchPlan:
    """Which training rows each step uses: a fresh permutation per epoch, seeded, split across ranks."""

    num_items: int
    batch_size: int  # per rank
    world_size: int
    rank: int
    seed: int

    def __post_init__(self):
        self.steps_per_epoch = self.num_items // (self.batch_size * self.world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.num_items} training latents are fewer than one batch ({self.batch_size} x "
                             f"{self.world_size} devices). Lower --batch_size.")
        self._epoch = -1
        self._order = None

    def rows(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(step_seed(self.seed, epoch, 0, stream=7))
            self._order = torch.randperm(self.num_items, generator=generator)
            self._epoch = epoch
        span = self.batch_size * self.world_size
        chunk = self._order[position * span:(position + 1) * span]
        return chunk[self.rank::self.world_size]

    def places(self, step: int) -> list:
        """The places of this rank's rows (``rows(step)``) in the step's global batch."""
        return list(range(self.rank, self.batch_size * self.world_size, self.world_size))


class DiTTrainer:
    def __init__(self, cfg: DictConfig, dist_info: DistInfo, data: DiTData, resume: Optional[dict],
                 resume_path: Optional[Path]):
        self.cfg = cfg
        self.dist = dist_info
        self.data = data
        self.device = dist_info.device
        t = cfg.dit.train
        self.train_cfg = t
        self.run_dir = run_dir_of(cfg)
        self.ckpt_dir = self.run_dir / C.CHECKPOINT_DIRNAME
        self.precision = resolve_precision(t.precision, self.device)
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        self.transport = make_transport(t.cosine_loss_weight)

        # Architecture: the checkpoint's when resuming (nanoGPT style), else from the config / init_from.
        ft = cfg.dit.finetune
        torch.manual_seed(int(t.seed))  # initial weights (and LoRA adapters) depend on the seed only
        if resume is not None:
            model = build_dit(resume["dit_config"], data=None, cfg=cfg, init_from=None)
            self.lora = LoraSettings.from_dict(resume.get("lora"))
        else:
            model = build_dit(None, data=data, cfg=cfg, init_from=ft.init_from)
            self.lora = (LoraSettings(int(ft.lora_rank), float(ft.lora_alpha or ft.lora_rank), tuple(ft.lora_targets),
                                      float(ft.dropout)) if int(ft.lora_rank) > 0 else None)
        if float(ft.dropout) > 0 and self.lora is None:
            raise ValueError("dit.finetune.dropout (--dropout) acts on the LoRA adapters' inputs, and the "
                             "LightningDiT itself has no dropout layers, so without LoRA it would do nothing. Add "
                             "--lora_rank N (e.g. 16), or leave --dropout out.")
        self.dit_config = dit_config_of(model)
        self.num_blocks = num_blocks_of(model)
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if t.compile_blocks:
            model.compile_blocks()
        if self.lora is not None:
            model = apply_lora(model, self.lora)
        self.model = model.to(self.device)
        self.rule = TrainableRule.from_config(ft)
        params = optimizer_parameters(self.model, self.rule, self.num_blocks)
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=float(t.learning_rate), betas=tuple(float(b) for b in t.betas),
                                           weight_decay=float(t.weight_decay))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.best_val_loss = math.inf
        self.skipped_total = 0
        self.ema = DiTEMA(self.model, float(t.ema_decay))  # over the unwrapped module's parameters (LoRA included)
        if resume is not None:
            self._load_state(resume, resume_path)
        self.trainable_summary = apply_trainable_rule(self.model, self.rule, self.step, self.num_blocks)
        self._current_last_blocks = self.rule.last_blocks_at(self.step)
        self.ddp_model = self._wrap_ddp()
        self.tap = PooledFeatureTap(self.model) if float(ft.contrastive_weight) > 0 else None
        self.plan = BatchPlan(len(data.train), int(t.batch_size), dist_info.world_size, dist_info.rank, int(t.seed))
        self.log = TrainLog(self.run_dir, enabled=dist_info.is_main, resume_step=self.step)
        self._decoder = None
        self._bar = None
        self.last_save_seconds = 0.0

    # ------------------------------------------------------------------------------------------- state

    def _load_state(self, state: dict, path: Optional[Path]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load(state["ema"], state.get("ema_state"), legacy_updates=state.get("ema_updates", 0))
        try:
            self.optimizer.load_state_dict(state["opt"])
        except ValueError as exc:
            raise ValueError(f"The optimizer state in {path} does not fit this run's trainable parameters ({exc}). "
                             f"The fine-tuning options (freeze_backbone, lora, unfreeze_schedule) must stay as "
                             f"they were when resuming; start a new --work_dir to change them.") from exc
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.skipped_total = int(state.get("skipped_steps", 0))
        C.restore_rng_state(state.get("rng"))

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.weights(self.model),  # the released layout: a state_dict under the model's names
            "ema_state": self.ema.settings(),  # EMAModel's counters and settings (plain types)
            "opt": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": C.capture_rng_state(),
            "best_val_loss": self.best_val_loss,
            "skipped_steps": self.skipped_total,
            "dit_config": self.dit_config,
            "lora": self.lora.to_dict() if self.lora else None,
            "data": self.data.describe(),
            "precision": self.precision,
            "config": to_plain(self.cfg),
        }

    def save(self) -> Optional[Path]:
        path = None
        tick = time.time()
        if self.dist.is_main:
            path = C.save_checkpoint(self.state_dict(), C.checkpoint_path(self.ckpt_dir, self.step))
            C.prune_checkpoints(self.ckpt_dir, int(self.train_cfg.keep_checkpoints))
            self.log.flush()
            self.say(f"step {self.step}: checkpoint {path}")
        barrier(self.dist)
        self.last_save_seconds = time.time() - tick
        return path

    # ------------------------------------------------------------------------------------------- model

    def _wrap_ddp(self) -> torch.nn.Module:
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # find_unused_parameters: label dropout to the null row and an unused condition table leave parameters
        # without gradients in some steps.
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(self.model, device_ids=ids, find_unused_parameters=True)

    def _maybe_unfreeze(self) -> None:
        blocks = self.rule.last_blocks_at(self.step)
        if blocks == self._current_last_blocks:
            return
        self.trainable_summary = apply_trainable_rule(self.model, self.rule, self.step, self.num_blocks)
        self._current_last_blocks = blocks
        # DDP registers gradient hooks for the parameters that train when it is built: rebuild it.
        self.ddp_model = self._wrap_ddp()
        if self.dist.is_main:
            print(f"step {self.step}: unfreeze schedule -> last {blocks} blocks train "
                  f"({self.trainable_summary['trainable_params']:,} trainable parameters)", flush=True)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------- steps

    def train_step(self) -> dict:
        t = self.train_cfg
        ft = self.cfg.dit.finetune
        self.ddp_model.train()  # train mode: label dropout to the null rows, LoRA/attention dropout active
        lr = learning_rate_at(self.step, float(t.learning_rate), int(t.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(t.seed, self.step, self.dist.rank, stream=1))  # dropout, label dropout
        rows = self.plan.rows(self.step)
        # Posterior sample, noise and time of each sample come from its own generator, seeded by its place in the
        # step's global batch: the same numbers for any number of processes (and on resume).
        places = self.plan.places(self.step)
        noise_gens = [torch.Generator().manual_seed(step_seed(t.seed, self.step, p, stream=2)) for p in places]
        time_gens = [torch.Generator().manual_seed(step_seed(t.seed, self.step, p, stream=3)) for p in places]
        x1, person, condition = self.data.train.batch(rows, resample=bool(t.resample_latents), generators=noise_gens)
        x1, person, condition = x1.to(self.device), person.to(self.device), condition.to(self.device)
        x0 = torch.stack([torch.randn(x1.shape[1:], generator=g) for g in noise_gens]).to(self.device)
        times = torch.cat([sample_timesteps(1, "cpu", generator=g) for g in time_gens]).to(self.device)
        use_cond = self.use_conditions
        with self._autocast():
            terms = velocity_loss_terms(
                lambda xt, tt: model_forward(self.ddp_model, xt, tt, person, condition if use_cond else None),
                x1, x0, times, self.transport)
            flow = terms["loss"].float().mean()
            loss = flow
            contrastive = None
            if self.tap is not None:
                contrastive = supervised_contrastive_loss(self.tap.take(), person, float(ft.contrastive_temperature))
                loss = loss + float(ft.contrastive_weight) * contrastive
        finite = bool(torch.isfinite(loss))
        if any_rank_true(self.dist, not finite):
            self.optimizer.zero_grad(set_to_none=True)
            cause = nonfinite_cause(x1, self.params, self.precision)
            return {"skipped": True, "loss": float(loss.detach()), "cause": cause}
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = float(t.grad_clip) if t.grad_clip and float(t.grad_clip) > 0 else math.inf
        grads = [p for p in self.params if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, max_norm)) if grads else 0.0
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self.optimizer.zero_grad(set_to_none=True)
            return {"skipped": True, "loss": float(loss.detach()), "grad_norm": grad_norm,
                    "cause": nonfinite_cause(x1, self.params, self.precision)}
        self.scaler.step(self.optimizer)  # with fp16, skips the update itself when gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        overflowed = scale_before is not None and self.scaler.get_scale() < scale_before
        if not overflowed:
            self.ema.step(self.model)
        return {"skipped": False, "loss": float(loss.detach()), "flow_loss": float(flow.detach()),
                "velocity_mse": float(terms["mse"].detach().float().mean()),
                "cosine_loss": float(terms["cosine"].detach().float().mean()),
                "contrastive_loss": float(contrastive.detach()) if contrastive is not None else None,
                "grad_norm": grad_norm, "lr": lr, "fp16_overflow": overflowed}

    @property
    def use_conditions(self) -> bool:
        return bool(self.dit_config.get("num_conditions", 0))

    @torch.no_grad()
    def validation_loss(self, module: torch.nn.Module) -> float:
        """Mean per-sample loss over the val latents at fixed timesteps with fixed noise (eval mode)."""
        t = self.train_cfg
        module.eval()  # eval mode: no label dropout, no dropout -> the same number for the same weights
        split: LatentSplit = self.data.val
        batch_size = max(1, int(t.batch_size))
        use_cond = self.use_conditions
        total, count = 0.0, 0
        for start in range(0, len(split), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(split)))
            x1 = split.fixed[rows].to(self.device)
            person = split.person[rows].to(self.device)
            condition = split.condition[rows].to(self.device) if use_cond else None
            with self._autocast():
                per_sample = deterministic_val_loss(
                    lambda xt, tt: model_forward(module, xt, tt, person, condition), x1,
                    lambda position: validation_noise(split, rows, int(t.val_seed), position),
                    [float(v) for v in t.val_timesteps], self.transport)
            total += float(per_sample.sum())
            count += len(rows)
        return total / max(count, 1)

    # ------------------------------------------------------------------------------------------- grids

    def sample_grid(self) -> Optional[Path]:
        """One row per person (EMA weights), decoded with the exported encoder's VA-VAE."""
        from microdoppler_finetune.dit.sampling import SamplerSettings, decode_latents, generate_latents, save_grid

        if self._decoder is None:
            from microdoppler_finetune.latents.export import load_exported_vae

            self._decoder = load_exported_vae(self.data.export_dir).to(self.device)
        t = self.train_cfg
        s = self.cfg.dit.sample
        per_person = int(t.grid_per_person)
        persons = [p for p in range(self.data.num_persons) for _ in range(per_person)]
        conditions = None
        if self.use_conditions:
            first_condition = {}
            for p, c in self.data.seen_pairs:
                first_condition.setdefault(p, c)
            conditions = [first_condition.get(p, 0) for p in persons]
        settings = SamplerSettings.from_config(s, num_sampling_steps=int(t.grid_steps) + 1)
        with self.ema.swapped_in(self.model):
            model = merged_eval_copy(self.model)  # a plain copy with the EMA weights, in eval mode
        latents = generate_latents(model, persons, conditions, self.data.latent_shape, settings, self.device)
        images = decode_latents(self._decoder, latents, self.data.latents_mean, self.data.latents_std,
                                batch_size=int(s.batch_size), device=self.device)
        path = self.run_dir / "samples" / f"grid_{self.step:07d}.jpg"
        save_grid(images, nrow=per_person, path=path)
        return path

    # ------------------------------------------------------------------------------------------- loop

    def say(self, message: str) -> None:
        """A line of the run's log on rank 0 (through the progress bar while one is shown, so it stays intact)."""
        if not self.dist.is_main:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def fit(self, time_budget_s: Optional[float] = None, started: Optional[float] = None) -> dict:
        t = self.train_cfg
        started = started if started is not None else time.time()
        total_steps = int(t.steps)
        last_log = time.time()
        steps_since_log = 0
        losses, flows, contrastives, norms = [], [], [], []
        mses, cosines = [], []
        nonfinite_in_a_row = 0
        causes: list = []
        stop_reason = STOP_FINISHED
        step_seconds = None
        s = self.trainable_summary
        self.say(f"DiT training: step {self.step} -> {total_steps}, {len(self.data.train)} train / "
                 f"{len(self.data.val)} val latents {self.data.latent_shape}, {self.data.num_persons} persons, "
                 f"{self.data.num_conditions} conditions (used: {self.use_conditions}), precision "
                 f"{self.precision}, {s['trainable_params']:,} of {s['total_params']:,} parameters train")
        if self.dist.is_main:  # resumable bar: starts at the checkpoint's step
            self._bar = progress(total=total_steps, initial=self.step, desc="DiT training", unit="step")
        try:
            if self.step == 0 and int(t.val_every) > 0:
                self.run_validation(started)  # the untrained baseline: the first point of the validation curve
            while self.step < total_steps:
                if time_budget_s is not None:
                    elapsed = time.time() - started
                    # Room for a few more steps, the final checkpoint and the export (measured once saved).
                    reserve = 3 * (step_seconds or 0.0) + max(10.0, 2.0 * self.last_save_seconds)
                    if any_rank_true(self.dist, elapsed + reserve >= time_budget_s):
                        stop_reason = STOP_TIME_BUDGET
                        break
                self._maybe_unfreeze()
                tick = time.time()
                result = self.train_step()
                took = time.time() - tick
                step_seconds = took if step_seconds is None else 0.9 * step_seconds + 0.1 * took  # running average
                if self._bar is not None:
                    self._bar.update(1)
                if result["skipped"]:
                    nonfinite_in_a_row += 1
                    self.skipped_total += 1
                    causes.append(result.get("cause", "loss"))
                    self.say(f"step {self.step}: non-finite loss/gradient ({result.get('loss')}, cause: "
                             f"{causes[-1]}), step skipped ({nonfinite_in_a_row} in a row, "
                             f"{self.skipped_total} in total)")
                    if nonfinite_in_a_row >= int(t.max_nonfinite_in_a_row):
                        stop_reason = STOP_NONFINITE
                        break
                    self.step += 1
                    continue
                nonfinite_in_a_row = 0
                causes = []
                self.step += 1
                steps_since_log += 1
                losses.append(result["loss"])
                flows.append(result["flow_loss"])
                mses.append(result["velocity_mse"])
                cosines.append(result["cosine_loss"])
                norms.append(result["grad_norm"])
                if result["contrastive_loss"] is not None:
                    contrastives.append(result["contrastive_loss"])
                if self.step % max(1, int(t.log_every)) == 0 or self.step == total_steps:
                    now = time.time()
                    row = {"step": self.step, "event": "train", "elapsed_s": round(now - started, 2),
                           "train_loss": mean_over_ranks(self.dist, sum(losses) / len(losses)),
                           "flow_loss": sum(flows) / len(flows), "velocity_mse": sum(mses) / len(mses),
                           "cosine_loss": sum(cosines) / len(cosines),
                           "contrastive_loss": sum(contrastives) / len(contrastives) if contrastives else None,
                           "lr": result["lr"], "grad_norm": sum(norms) / len(norms),
                           "skipped_steps": self.skipped_total,
                           "steps_per_s": round(steps_since_log / max(now - last_log, 1e-9), 4)}
                    self.log.write(row)
                    if self._bar is not None:
                        self._bar.set_postfix(loss=f"{row['train_loss']:.4f}", lr=f"{row['lr']:.1e}", refresh=False)
                    self.say(f"step {self.step}/{total_steps} loss {row['train_loss']:.4f} lr {row['lr']:.2e} "
                             f"grad_norm {row['grad_norm']:.3f} ({row['steps_per_s']:.2f} steps/s)")
                    losses, flows, contrastives, norms = [], [], [], []
                    mses, cosines = [], []
                    last_log, steps_since_log = now, 0
                if int(t.val_every) > 0 and (self.step % int(t.val_every) == 0 or self.step == total_steps):
                    self.run_validation(started)
                if int(t.sample_every) > 0 and self.step % int(t.sample_every) == 0 and self.dist.is_main:
                    self.sample_grid()
                if (int(t.checkpoint_every) > 0 and self.step % int(t.checkpoint_every) == 0
                        and self.step < total_steps):
                    self.save()
            if stop_reason != STOP_NONFINITE:
                self.save()
                self.export_pretrained()
            else:
                self.save_nonfinite_stop()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self.log.close()
        message = {STOP_FINISHED: f"finished {self.step} steps",
                   STOP_TIME_BUDGET: f"time budget reached at step {self.step}: rerun the same command to continue",
                   STOP_NONFINITE: f"stopped at step {self.step}: {t.max_nonfinite_in_a_row} non-finite steps in a "
                                   f"row. {nonfinite_advice(causes, self.train_cfg.learning_rate)} State at the stop: "
                                   f"{self.ckpt_dir / NONFINITE_STOP_FILE}; last good checkpoint: "
                                   f"{C.latest_checkpoint(self.ckpt_dir)} (a rerun resumes from it)."}
        self.say(message[stop_reason])
        if self.tap is not None:
            self.tap.remove()
        result = {"status": stop_reason, "step": self.step, "best_val_loss": self.best_val_loss,
                  "run_dir": str(self.run_dir), "latest_checkpoint": str(C.latest_checkpoint(self.ckpt_dir)),
                  "pretrained": str(self.run_dir / PRETRAINED_DIRNAME) if stop_reason != STOP_NONFINITE else None,
                  "precision": self.precision, "skipped_steps": self.skipped_total,
                  "trainable_params": self.trainable_summary["trainable_params"],
                  "total_params": self.trainable_summary["total_params"]}
        if stop_reason == STOP_NONFINITE:
            raise FloatingPointError(message[stop_reason])
        return result

    def save_nonfinite_stop(self) -> Optional[Path]:
        """The state where repeated non-finite steps stopped training, for a look at it; under a name that
        resuming never picks (the numbered checkpoints keep the last good state)."""
        path = None
        if self.dist.is_main:
            path = C.save_checkpoint(self.state_dict(), self.ckpt_dir / NONFINITE_STOP_FILE)
            self.log.flush()
        barrier(self.dist)
        return path

    def run_validation(self, started: float) -> None:
        if self.dist.is_main:
            val = self.validation_loss(unwrap_model(self.model))
            with self.ema.swapped_in(self.model) as averaged:  # the live weights come back exactly afterwards
                val_ema = self.validation_loss(averaged)
            if val_ema < self.best_val_loss:
                self.best_val_loss = val_ema
            self.log.write({"step": self.step, "event": "val", "elapsed_s": round(time.time() - started, 2),
                            "val_loss": val, "val_loss_ema": val_ema})
            self.say(f"step {self.step}: val loss {val:.4f} (EMA {val_ema:.4f}, best EMA {self.best_val_loss:.4f})")
        barrier(self.dist)

    def export_pretrained(self) -> Optional[Path]:
        """The EMA model (LoRA merged) as ``<run_dir>/pretrained`` (save_pretrained + sampling_info.json), rank 0."""
        path = None
        if self.dist.is_main:
            with self.ema.swapped_in(self.model):
                model = merged_eval_copy(self.model).to("cpu")
            path = write_pretrained(model, self.data.describe(), self.step, self.run_dir / PRETRAINED_DIRNAME,
                                    weights="ema", extra={"ema_decay": self.ema.decay})
            del model
            self.say(f"step {self.step}: EMA model exported to {path} (LightningDiT.from_pretrained)")
        barrier(self.dist)
        return path


def merged_eval_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain DiT for sampling: LoRA adapters merged into a copy (the training model keeps its adapters)."""
    import copy

    from microdoppler_finetune.dit.finetune import merge_lora

    return merge_lora(copy.deepcopy(model)).eval()


def train_dit(cfg: DictConfig) -> dict:
    """Train (or resume) the DiT described by ``cfg.dit``; returns a summary dict."""
    from vae_training.stages import parse_duration

    started = time.time()
    dist_info = setup_distributed(str(cfg.dit.train.device))
    try:
        run_dir = run_dir_of(cfg)
        say = (lambda m: print(m, flush=True)) if dist_info.is_main else (lambda m: None)
        resume_path, resume = C.load_latest_readable(run_dir / C.CHECKPOINT_DIRNAME, log=say)
        if dist_info.is_main:
            data = load_dit_data(cfg)  # builds the latent cache once when it is missing
            barrier(dist_info)
        else:
            barrier(dist_info)
            data = load_dit_data(cfg, build_cache=False)
        if resume is not None:
            check_resume_data(resume, data, resume_path)
            if dist_info.is_main:
                print(f"Resuming from {resume_path} (step {resume['step']}); the architecture comes from the "
                      f"checkpoint", flush=True)
        trainer = DiTTrainer(cfg, dist_info, data, resume, resume_path)
        if dist_info.is_main:
            save_config(cfg, trainer.run_dir / "config.yaml")
        return trainer.fit(parse_duration(cfg.dit.train.time_budget), started)
    finally:
        cleanup_distributed(dist_info)


def check_resume_data(resume: dict, data: DiTData, path: Path) -> None:
    saved = resume.get("data", {})
    if saved.get("vae_identity") and saved["vae_identity"] != data.vae_identity:
        raise ValueError(f"{path} was trained on latents of VA-VAE {saved['vae_identity']}, but this run's latent "
                         f"cache comes from {data.vae_identity}. Use a new --work_dir (or run_dir) for a new "
                         f"encoder.")
    if saved.get("person_names") and list(saved["person_names"]) != list(data.person_names):
        raise ValueError(f"{path} was trained with persons {saved['person_names']}, this cache has "
                         f"{data.person_names}. Use a new --work_dir for a new dataset.")
