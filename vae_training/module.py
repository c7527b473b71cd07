"""The Lightning module of one VA-VAE fine-tuning stage (manual optimisation, two optimizers).

Per batch: one autoencoder update (reconstruction NLL + KL + VF alignment + adaptive-weighted GAN term) and one
discriminator optimizer step — the Lightning GAN recipe (toggle_optimizer / manual_backward /
untoggle_optimizer). Counters that decide behaviour are ours, not Lightning's: ``ae_steps`` counts autoencoder
optimizer steps, the one unit of the schedule, the logs and the progress bar (Lightning's global_step counts
the steps of both optimizers, two per autoencoder step).

When the GAN starts (``disc_start``, in autoencoder steps): the generator's adversarial term is on once
``disc_start`` autoencoder steps are done; the discriminator learns from one autoencoder step earlier; before
that its optimizer steps with zero gradients. This is what the official code does with its global step
G = 2·disc_start − 1 (it compares G with a global step that advances twice per batch, evaluates the
discriminator's update after the autoencoder's, and multiplies the discriminator loss by 0 before G): Adam's
step count is then warm when the GAN switches on. See vae_training/vavae_microdoppler_config.yaml.

Validation is deterministic: each batch's posterior noise comes from a generator seeded from ``val_seed`` and
the batch index, and every validation number (losses, PSNR, L1, LPIPS) is computed on that one fixed-seed
reconstruction, with the same per-sample normalisation as training.

DDP (n processes, batch b each) computes what one process with batch n·b computes, up to float summation order:
every loss is a per-image mean, the posterior noise is drawn for the global batch and dealt out like the images
(posterior_noise), and the adaptive weights take the norms of the gradients averaged over the processes. Not
covered: the discriminator's BatchNorm statistics (per process, as in the official code) once the GAN is on.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from microdoppler_finetune.utils.images import psnr_uint8, to_uint8
from microdoppler_finetune.utils.plain import to_plain
from vae_training import losses as L

COUNTER_KEY = "vavae_finetune_counters"


class _FrozenModules:
    """Holds frozen helper networks outside the module tree.

    Not registered as submodules on purpose: they stay out of checkpoints (DINOv2-L alone is 1.2 GB), out of
    the optimizers, and out of DDP (no gradient hooks and no 300M-parameter broadcast at start).
    """

    def __init__(self, foundation: Optional[torch.nn.Module], perceptual: Optional[torch.nn.Module]):
        self.foundation = foundation
        self.perceptual = perceptual

    def modules(self):
        return [m for m in (self.foundation, self.perceptual) if m is not None]

    def to(self, device):
        for module in self.modules():
            module.to(device)

    def eval(self):
        # Always eval: LPIPS has dropout layers and a ViT may have dropout/drop-path; frozen targets must be
        # deterministic whatever mode Lightning puts the trainable module in.
        for module in self.modules():
            module.eval()


class VAVAEFineTuneModule(pl.LightningModule):
    def __init__(
        self,
        vae: torch.nn.Module,
        discriminator: torch.nn.Module,
        *,
        stage: dict,
        loss_cfg: dict,
        train_cfg: dict,
        perceptual: Optional[torch.nn.Module] = None,
        foundation: Optional[torch.nn.Module] = None,
        feature_cache: Any = None,
        alignment_target: str = "",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.vae = vae
        self.discriminator = discriminator
        self.frozen = _FrozenModules(foundation, perceptual)
        self.feature_cache = feature_cache
        self.stage = dict(stage)
        self.loss_cfg = dict(loss_cfg)
        self.train_cfg = dict(train_cfg)
        self.alignment_target = alignment_target
        # Loss weights: the run-wide ones (vae_loss) with this stage's vf_weight and margins.
        self.loss_config = L.GeneratorLossConfig.from_mappings(self.loss_cfg, self.stage)
        self.accumulation = max(1, int(self.train_cfg.get("gradient_accumulation", 1)))
        self.clip_val = float(self.train_cfg.get("gradient_clip_val") or 0.0)
        self.clip_algorithm = self.train_cfg.get("gradient_clip_algorithm", "norm")
        self.max_nonfinite = int(self.train_cfg.get("max_nonfinite_in_a_row", 5))
        self.val_seed = int(self.train_cfg.get("val_seed", 1234))
        # Training posterior noise is keyed by this seed and the step (see posterior_noise). seed_everything(run.seed
        # + stage index) ran just before the module is built: the same value on every DDP rank and on a resume.
        self.noise_seed = int(self.train_cfg.get("noise_seed", torch.initial_seed()))
        # Counters saved in checkpoints (on_save_checkpoint) so a resumed stage continues them.
        self.ae_steps = 0
        self.disc_steps = 0  # discriminator optimizer steps, the zero-gradient ones before it learns included
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.amp_skipped_steps = 0
        # Set by callbacks or the non-finite guard; read by the stage runner. Not saved.
        self.stop_reason: Optional[str] = None
        self.grad_norms: dict[str, torch.Tensor] = {}  # 0-d tensors (no device sync to read them each step)
        self._norm_before_step: dict[str, torch.Tensor] = {}
        self._skip_window = False
        self.freeze_encoder_levels(int(self.train_cfg.get("freeze_encoder_levels", 0)))
        if bool(self.train_cfg.get("gradient_checkpointing", False)):
            # Recompute the encoder's and decoder's block activations in the backward pass: about a third of the
            # activation memory for ~30 % more compute, for a GPU too small for the batch. Same gradients.
            self.vae.enable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------- setup

    def freeze_encoder_levels(self, count: int) -> None:
        """Freeze the first ``count`` encoder levels (and the input conv that feeds level 0)."""
        if count <= 0:
            return
        levels = list(self.vae.encoder_levels)
        if count > len(levels):
            raise ValueError(f"freeze_encoder_levels={count}, but the encoder has {len(levels)} levels.")
        frozen = levels[:count]
        conv_in = getattr(getattr(self.vae, "encoder", None), "conv_in", None)
        if conv_in is not None:
            frozen.append(conv_in)
        for module in frozen:
            module.requires_grad_(False)

    def trainable_vae_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.vae.parameters() if p.requires_grad]

    def configure_optimizers(self):
        lr = float(self.stage["learning_rate"])
        fused = self._use_fused_adam()
        # betas (0.5, 0.9): the released recipe (both optimizers)
        opt_ae = _adam(self.trainable_vae_parameters(), lr=lr, fused=fused)
        opt_d = _adam(list(self.discriminator.parameters()), lr=lr, fused=fused)
        return [opt_ae, opt_d]

    def _use_fused_adam(self) -> bool:
        """Fused Adam (one kernel for all parameters: ~3x faster steps on the CPU) unless 16-mixed precision:
        Lightning unscales gradients before on_before_optimizer_step (clipping, logged norms) only for
        optimizers that do not unscale inside step(), which fused ones do. ``vae_train`` key ``fused_adam``
        (train_cfg) turns it off."""
        if not bool(self.train_cfg.get("fused_adam", True)):
            return False
        precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else "32-true"
        return precision != "16-mixed"

    def on_train_start(self) -> None:
        # A resumed run restores the optimizers' param groups from the checkpoint, 'fused' flag included: use
        # this run's choice (e.g. a checkpoint of a 16-mixed run resumed in fp32, or one written before fused).
        fused = self._use_fused_adam()
        for optimizer in self.trainer.optimizers:
            _set_fused(optimizer, fused)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def on_fit_start(self) -> None:
        self.frozen.to(self.device)
        self.frozen.eval()

    def on_validation_start(self) -> None:
        self.frozen.to(self.device)

    def on_train_epoch_end(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.flush()  # persist new features so later stages and reruns reuse them

    def on_validation_epoch_end(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.flush()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counters = checkpoint.get(COUNTER_KEY)
        if counters is None:
            raise KeyError(f"The checkpoint has no '{COUNTER_KEY}' entry: it was not written by this trainer, so "
                           f"it cannot be resumed. Start the stage from it with init_from instead.")
        self.ae_steps = int(counters["ae_steps"])
        self.disc_steps = int(counters["disc_steps"])
        self.nonfinite_in_a_row = int(counters["nonfinite_in_a_row"])
        self.nonfinite_total = int(counters["nonfinite_total"])
        self.amp_skipped_steps = int(counters.get("amp_skipped_steps", 0))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[COUNTER_KEY] = {
            "ae_steps": self.ae_steps,
            "disc_steps": self.disc_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_total": self.nonfinite_total,
            "amp_skipped_steps": self.amp_skipped_steps,
        }
        # Plain values only, so the file loads with torch.load(weights_only=True) and models.vavae.load_vavae.
        checkpoint["vavae_config"] = {k: to_plain(v) for k, v in dict(self.vae.config).items()}
        checkpoint["vavae_stage"] = to_plain(self.stage)
        checkpoint["alignment_target"] = self.alignment_target

    # ------------------------------------------------------------------------------------------- pieces

    @property
    def gan_active(self) -> bool:
        """The generator's adversarial term is on once ``disc_start`` autoencoder steps are done."""
        return self.ae_steps >= int(self.stage["disc_start"])

    @property
    def disc_learning(self) -> bool:
        """The discriminator learns from one autoencoder step before the generator's GAN term starts (as the
        official code, which evaluates its discriminator update one global step after the autoencoder's)."""
        return self.ae_steps >= int(self.stage["disc_start"]) - 1

    @torch.no_grad()
    def alignment_features(self, batch: dict, x: torch.Tensor) -> torch.Tensor:
        """Frozen foundation features [B,C,h,w] (fp32), from the cache when there is one (train and val)."""
        if self.feature_cache is not None:
            return self.feature_cache.features_for_batch(batch, x, self.frozen.foundation).float()
        return self.frozen.foundation(x).float()

    def generator_terms(self, x: torch.Tensor, out, features: torch.Tensor, *,
                        with_gan: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The autoencoder loss and every term of it (vae_training.losses.generator_loss)."""
        step = self.generator_step(x, out, features, with_gan=with_gan)
        return step.total, step.logs

    def generator_step(self, x: torch.Tensor, out, features: torch.Tensor, *, with_gan: bool) -> L.GeneratorStep:
        """The autoencoder loss, its terms and the tensor to backpropagate (vae_training.losses.
        generator_loss_for_step: the adaptive weights reuse LPIPS's and the discriminator's image gradients)."""
        return L.generator_loss_for_step(
            x, out.reconstruction, out.posterior,
            config=self.loss_config,
            disc_active=with_gan,
            projected=out.projected,
            features=features,
            perceptual=self.frozen.perceptual if self.loss_config.perceptual_weight > 0 else None,
            discriminator=self.discriminator if with_gan else None,
            decoder_last_layer=self.vae.decoder_conv_out_weight,
            encoder_last_layer=self.vae.encoder_conv_out_weight,
            grad_scale=self._amp_scale() if self.training else 1.0,
            gradient_mean=self._mean_over_processes if self._world_size() > 1 else None,
        )

    def _world_size(self) -> int:
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def _mean_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce mean over the DDP processes: the adaptive weights then see the global batch's gradient at
        the last layers, as one process with the same global batch does (the official code uses each GPU's own)."""
        return self.trainer.strategy.reduce(tensor.contiguous(), reduce_op="mean")

    def posterior_noise(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """ε of this batch's posterior samples (B x z x h x w), independent of how the global batch is split.

        Drawn for the whole global batch from a generator seeded with ``seed`` (the same on every rank); this
        rank takes its rows. Lightning's DistributedSampler deals a global batch out round-robin (rank r holds
        rows r, r + world, ...), so one process with the global batch draws the very same ε for every image.
        """
        world, rank = self._world_size(), int(self.global_rank)
        factor = self.vae.downsample_factor
        shape = (x.shape[0] * world, int(self.vae.config.latent_channels), x.shape[-2] // factor,
                 x.shape[-1] // factor)
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed) % (2 ** 63))
        return torch.randn(shape, generator=generator, device=x.device)[rank::world]

    def _amp_scaler(self):
        """The fp16 GradScaler of 16-mixed precision (None for fp32 and bf16)."""
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def _amp_scale(self) -> float:
        scaler = self._amp_scaler()
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _window(self, batch_idx: int) -> tuple[bool, int]:
        """(step after this micro-batch?, micro-batches in this accumulation window)."""
        total = self.trainer.num_training_batches
        if not isinstance(total, int) or total <= 0 or math.isinf(total):
            total = batch_idx + self.accumulation  # unknown length: full windows only
        start = (batch_idx // self.accumulation) * self.accumulation
        size = min(self.accumulation, total - start)
        is_step = (batch_idx - start + 1) == size
        return is_step, size

    def _all_ranks_finite(self, value: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(value.detach()).all())
        # Every rank must take the same branch, or DDP's gradient all-reduce waits forever.
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _grads_finite(self, params, name: str) -> bool:
        """All gradients finite on every rank. The total norm computed for it (one fused norm, one device sync)
        is kept for on_before_optimizer_step, which logs it instead of computing it again."""
        if self.trainer.precision == "16-mixed":
            return True  # the AMP grad scaler checks (scaled) gradients itself and skips the step if needed
        norm = _total_norm_tensor(params)
        self._norm_before_step[name] = norm
        finite = bool(torch.isfinite(norm))
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _nonfinite(self, what: str, opts) -> None:
        """Skip this accumulation window: drop its gradients, count, and stop after too many in a row."""
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        self._skip_window = True
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        pl.utilities.rank_zero_warn(
            f"Non-finite {what} at autoencoder step {self.ae_steps}: step skipped "
            f"({self.nonfinite_in_a_row} in a row, {self.nonfinite_total} in total).")
        if self.nonfinite_in_a_row >= self.max_nonfinite and self.stop_reason is None:
            self.stop_reason = "nonfinite"
            self.trainer.should_stop = True

    # ------------------------------------------------------------------------------------------- training

    def training_step(self, batch: dict, batch_idx: int):
        opt_ae, opt_d = self.optimizers()
        is_step, window = self._window(batch_idx)
        if batch_idx % self.accumulation == 0:
            self._skip_window = False
        x = batch["image"]
        features = self.alignment_features(batch, x)
        gan, disc_learns = self.gan_active, self.disc_learning  # before this batch's step changes ae_steps

        # ---- autoencoder update (the discriminator is frozen by toggle_optimizer while it runs)
        self.toggle_optimizer(opt_ae)
        # Posterior sample, as in the released training; its noise keyed by step and micro-batch (posterior_noise)
        noise_key = (self.noise_seed * 1_000_003 + self.ae_steps) * 1009 + batch_idx % self.accumulation
        out = self.vae(x, sample=True, noise=self.posterior_noise(x, noise_key))
        step = self.generator_step(x, out, features, with_gan=gan)
        loss, terms = step.total, step.logs
        ae_ok = self._all_ranks_finite(loss)
        if not ae_ok:
            self._nonfinite("autoencoder loss", [opt_ae, opt_d])
        elif not self._skip_window:
            # step.backward has the gradients of the loss without a second pass through LPIPS / the discriminator
            self.manual_backward(step.backward / window)  # mean over the accumulation window
            del step
            if is_step:
                if self._grads_finite(self.trainable_vae_parameters(), "ae"):
                    scale_before = self._amp_scale()
                    opt_ae.step()  # clipping happens in on_before_optimizer_step (after AMP unscaling)
                    if self._amp_scale() < scale_before:
                        # 16-mixed: the grad scaler found inf/nan gradients, skipped the update and lowered its
                        # scale (normal for the first steps of a pixel-sum loss). Not an autoencoder step.
                        self.amp_skipped_steps += 1
                    else:
                        self.ae_steps += 1
                        self.nonfinite_in_a_row = 0
                else:
                    self._nonfinite("autoencoder gradient", [opt_ae, opt_d])
                opt_ae.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_ae)

        # ---- discriminator update (on detached reconstructions), or a zero-gradient step before it learns
        d_log: dict[str, torch.Tensor] = {}
        if disc_learns and ae_ok and not self._skip_window:
            self.toggle_optimizer(opt_d)
            d_loss, d_log = L.discriminator_loss(self.discriminator, x, out.reconstruction)
            if self._all_ranks_finite(d_loss):
                self.manual_backward(d_loss / window)
                if is_step:
                    if self._grads_finite(self.discriminator.parameters(), "disc"):
                        opt_d.step()
                        self.disc_steps += 1
                    opt_d.zero_grad(set_to_none=True)
            else:
                opt_d.zero_grad(set_to_none=True)
                pl.utilities.rank_zero_warn(f"Non-finite discriminator loss at autoencoder step {self.ae_steps}: "
                                            f"discriminator step skipped.")
            self.untoggle_optimizer(opt_d)
        else:
            if is_step and ae_ok and not self._skip_window:
                self._zero_gradient_disc_step(opt_d)
            zero = torch.zeros((), device=x.device)
            d_log = {"disc_loss": zero, "logits_real": zero, "logits_fake": zero}

        self._log_train(loss, terms, d_log, gan, x.shape[0])
        if self.stop_reason == "nonfinite":
            pl.utilities.rank_zero_warn(
                f"Stopping: {self.nonfinite_in_a_row} non-finite losses/gradients in a row. Try a lower "
                f"--learning_rate, --gradient_clip_val, fp32 (--precision 32) or --detect_anomaly.")

    def _zero_gradient_disc_step(self, opt_d) -> None:
        """One discriminator optimizer step with zero gradients, before the discriminator learns.

        The official code steps its discriminator optimizer every batch and multiplies the discriminator loss by 0
        before disc_start: gradients are zero, so Adam's moments stay zero and the weights do not move, but
        Adam's step count advances. When the GAN switches on, the bias corrections are then those of a long run
        (≈1) rather than of a fresh optimizer; with betas (0.5, 0.9) the first real updates are up to ~1.7x larger.
        No discriminator forward pass is needed for that: the gradients are set to zero directly.
        """
        for param in self.discriminator.parameters():
            param.grad = torch.zeros_like(param)
        self._norm_before_step["disc"] = torch.zeros((), device=self.device)  # known: no norm pass needed
        opt_d.step()
        self.disc_steps += 1
        opt_d.zero_grad(set_to_none=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradient clipping that really applies under manual optimisation.

        Trainer(gradient_clip_val=...) is refused with manual optimisation, so we clip here: this hook runs
        right before the step and, with 16-mixed, after the gradients were unscaled.
        """
        name = "ae" if optimizer is self.optimizers()[0].optimizer else "disc"
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # The norm _grads_finite took on these same gradients (fp32/bf16: nothing changed them since), else now.
        norm = self._norm_before_step.pop(name, None)
        self.grad_norms[f"{name}_before_clip"] = norm if norm is not None else _total_norm_tensor(params)
        if self.clip_val > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip_val,
                                gradient_clip_algorithm=self.clip_algorithm)
            self.grad_norms[f"{name}_after_clip"] = _total_norm_tensor(params)

    def _log_train(self, loss: torch.Tensor, terms: dict, d_log: dict, gan: bool, batch_size: int) -> None:
        values = {f"train_{k}": v.detach().float() for k, v in terms.items() if k != "total"}
        values["train_loss"] = loss.detach().float()
        values.update({f"train_{k}": v.float() for k, v in d_log.items()})
        values["train_gan_active"] = torch.tensor(float(gan))
        values["train_ae_step"] = torch.tensor(float(self.ae_steps))
        values.update(self._logger_step())
        values["train_nonfinite_total"] = torch.tensor(float(self.nonfinite_total))
        if self._amp_scaler() is not None:
            values["train_amp_scale"] = torch.tensor(self._amp_scale())
            values["train_amp_skipped_steps"] = torch.tensor(float(self.amp_skipped_steps))
        if "ae_before_clip" in self.grad_norms:
            values["train_grad_norm_ae"] = self.grad_norms["ae_before_clip"].float()
        if "disc_before_clip" in self.grad_norms:
            values["train_grad_norm_disc"] = self.grad_norms["disc_before_clip"].float()
        # Read back from the optimizers, so the log shows the rate really used (not the configured number).
        opt_ae, opt_d = self.optimizers()
        values["train_lr_ae"] = torch.tensor(float(opt_ae.param_groups[0]["lr"]))
        values["train_lr_disc"] = torch.tensor(float(opt_d.param_groups[0]["lr"]))
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size, prog_bar=False)

    def _logger_step(self, device=None) -> dict[str, torch.Tensor]:
        """'step' and 'epoch' of the log rows: Lightning hands a logged 'step' to every logger as the x value, so
        the CSV and TensorBoard logs count autoencoder steps, like the schedule (not Lightning's batches)."""
        return {"step": torch.tensor(float(self.ae_steps), device=device),
                "epoch": torch.tensor(float(self.current_epoch), device=device)}

    # ------------------------------------------------------------------------------------------- validation

    def _val_generator(self, batch_idx: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self._val_noise_seed(batch_idx))
        return generator

    def _val_noise_seed(self, batch_idx: int) -> int:
        return self.val_seed + 1_000_003 * batch_idx  # fixed per epoch

    def validation_step(self, batch: dict, batch_idx: int):
        x = batch["image"]
        # The same noise for every image whether validation runs in one process or is split over DDP ranks
        out = self.vae(x, sample=True, noise=self.posterior_noise(x, self._val_noise_seed(batch_idx)))
        features = self.alignment_features(batch, x)
        # GAN term skipped: the discriminator is still moving, so its value does not compare across epochs.
        # Adaptive weights fall back to their nominal values without a graph (see vae_training.losses).
        loss, terms = self.generator_terms(x, out, features, with_gan=False)
        recon = out.reconstruction.float()
        values = {f"val_{k}": v.detach().float() for k, v in terms.items()
                  if k in ("nll", "rec_l1", "kl", "vf", "vf_distmat", "vf_cos")}
        values["val_loss"] = loss.detach().float()
        values["val_psnr"] = torch.tensor(psnr_uint8(to_uint8(x), to_uint8(recon)).mean(), dtype=torch.float32)
        values["val_l1"] = (x.float() - recon).abs().flatten(1).mean(1).mean()
        if "lpips" in terms:  # mean of per-sample LPIPS, as in the training NLL
            values["val_lpips"] = terms["lpips"].float()
        elif self.frozen.perceptual is not None:
            values["val_lpips"] = L.per_sample_lpips(self.frozen.perceptual, x.float(), recon).mean()
        values["val_ae_step"] = torch.tensor(float(self.ae_steps), device=x.device)
        values.update(self._logger_step(x.device))
        self.log_dict(values, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    @torch.no_grad()
    def reconstruct_for_display(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions of fixed images with a fixed-seed posterior sample (the same every epoch)."""
        was_training = self.training
        self.eval()
        try:
            out = self.vae(images.to(self.device), sample=True, generator=self._val_generator(0))
            return out.reconstruction.float().cpu()
        finally:
            self.train(was_training)


def _fused_supported(params) -> bool:
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _adam(params: list, *, lr: float, fused: bool) -> torch.optim.Adam:
    """Adam with the released betas (0.5, 0.9); fused when asked and supported (torch >= 2.4 on the CPU), the
    default (foreach) implementation otherwise. Same update rule: fused computes it in one kernel."""
    if fused and _fused_supported(params):
        try:
            return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9), fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch without fused Adam on this device
            pass
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))


def _set_fused(optimizer, fused: bool) -> None:
    """Switch an Adam's param groups to (or from) the fused implementation, moving its step counters to where the
    fused kernel expects them (a float32 tensor on the parameter's device)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Lightning's LightningOptimizer wraps the torch one
    if not isinstance(inner, torch.optim.Adam):
        return
    params = [p for group in inner.param_groups for p in group["params"]]
    fused = bool(fused) and _fused_supported(params)
    for group in inner.param_groups:
        if bool(group.get("fused")) == fused:
            continue
        group["fused"] = fused if fused else None
        if fused:
            group["foreach"] = None
    if fused:
        for param, state in inner.state.items():
            step = state.get("step")
            if torch.is_tensor(step) and (step.device != param.device or step.dtype != torch.float32):
                state["step"] = step.to(device=param.device, dtype=torch.float32)


def _total_norm_tensor(params) -> torch.Tensor:
    """L2 norm over all gradients (0-d fp32 tensor; inf/nan when any gradient is), with one fused per-tensor norm
    (torch._foreach_norm) instead of a Python loop of norms."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if all(g.dtype == torch.float32 for g in grads) and len({g.device for g in grads}) == 1:
        norms = torch._foreach_norm(grads)
    else:
        norms = [torch.linalg.vector_norm(g.float()) for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))

