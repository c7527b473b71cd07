"""DiT training on the VA-VAE latent cache: loop, EMA, checkpoints, validation, fine-tuning options, export.

Entry: :func:`train_dit` (``python microdoppler_finetune/train_conditional_dit.py``).
"""
from microdoppler_finetune.dit.checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint
from microdoppler_finetune.dit.contrastive import PooledFeatureTap, supervised_contrastive_loss
from microdoppler_finetune.dit.ema import DiTEMA
from microdoppler_finetune.dit.export import load_pretrained, resolve_trained_dit, write_pretrained
from microdoppler_finetune.dit.finetune import LoraSettings, TrainableRule, apply_lora, apply_trainable_rule, merge_lora
from microdoppler_finetune.dit.trainer import DiTTrainer, train_dit

__all__ = ["train_dit", "DiTTrainer", "DiTEMA", "write_pretrained", "load_pretrained", "resolve_trained_dit",
           "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "supervised_contrastive_loss", "PooledFeatureTap", "LoraSettings", "TrainableRule", "apply_lora",
           "apply_trainable_rule", "merge_lora"]
