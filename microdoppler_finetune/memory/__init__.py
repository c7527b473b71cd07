"""GPU memory of training, measured per image on the meta device, and the batch / accumulation / checkpointing
plan that fits the users' GPUs (step1 prints it; benchmarks/bench_memory.py checks it)."""
from microdoppler_finetune.memory.activations import ActivationMemory, SavedTensorCounter, vavae_step_memory
from microdoppler_finetune.memory.plan import TARGETS, MemoryPlan, plan_targets, plan_vavae, setup_plans

__all__ = ["ActivationMemory", "MemoryPlan", "SavedTensorCounter", "TARGETS", "plan_targets", "plan_vavae",
           "setup_plans", "vavae_step_memory"]
