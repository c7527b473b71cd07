"""Training memory of the VA-VAE and the DiT per image, measured without a GPU.

The networks are built on PyTorch's ``meta`` device (shapes and dtypes only: no weights in memory, no compute)
and one training forward pass runs at batch 1 and batch 2 inside ``torch.autograd.graph.saved_tensors_hooks``:
every tensor autograd keeps for the backward pass goes through the hook and is counted once. Batch 2 minus
batch 1 is the activation memory of one more image; what does not grow with the batch (weights a layer saves
for its backward) is left out, because the weights are counted as parameters.

For gradient checkpointing the count is split by the blocks that get checkpointed (the encoder's and decoder's
blocks, the DiT's transformer blocks): with checkpointing only each block's input is kept, plus, during the
backward pass, one block's activations at a time (the largest is taken).

The same hooks run on real tensors (counted by storage, so views are not counted twice):
``benchmarks/bench_memory.py`` checks the meta count against them and, on a GPU, against the measured peak.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes per image kept for the backward pass, without and with gradient checkpointing."""

    per_image: int
    per_image_checkpointed: int

    def for_batch(self, batch: int, checkpointing: bool) -> int:
        return int(batch) * (self.per_image_checkpointed if checkpointing else self.per_image)


class SavedTensorCounter:
    """Counts the bytes autograd saves, in total and per checkpointable block (outermost block only)."""

    def __init__(self, blocks: Sequence[torch.nn.Module] = ()):
        self.total = 0
        self.per_block: dict[int, int] = {}
        self.block_inputs = 0
        self._seen: set = set()
        self._current: list[int] = []
        self._handles = []
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._enter(index)))
            self._handles.append(block.register_forward_hook(self._leave))

    def _enter(self, index: int):
        def hook(module, args):
            if not self._current:  # what checkpointing keeps of this block: its tensor inputs
                self.block_inputs += sum(_nbytes(a) for a in args if torch.is_tensor(a))
            self._current.append(index)
        return hook

    def _leave(self, module, args, output):
        self._current.pop()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = id(tensor) if tensor.device.type == "meta" else tensor.untyped_storage().data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            size = _nbytes(tensor) if tensor.device.type == "meta" else tensor.untyped_storage().nbytes()
            self.total += size
            if self._current:
                block = self._current[0]
                self.per_block[block] = self.per_block.get(block, 0) + size
        return tensor

    @contextmanager
    def counting(self) -> Iterator["SavedTensorCounter"]:
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
                yield self
        finally:
            for handle in self._handles:
                handle.remove()

    def checkpointed_total(self) -> int:
        """Saved bytes with each block checkpointed: everything outside the blocks, the blocks' inputs, and the
        largest block's activations (recomputed one block at a time in the backward pass)."""
        inside = sum(self.per_block.values())
        return self.total - inside + self.block_inputs + max(self.per_block.values(), default=0)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def measure(step: Callable[[int], tuple[Sequence[torch.nn.Module], Callable[[], object]]]) -> ActivationMemory:
    """``step(batch)`` returns (checkpointable blocks, a function running the training forward pass at that
    batch); it is measured at batch 1 and 2 and the difference is one image's activations."""
    totals = {}
    for batch in (1, 2):
        blocks, forward = step(batch)
        counter = SavedTensorCounter(blocks)
        with counter.counting():
            forward()
        totals[batch] = (counter.total, counter.checkpointed_total())
    return ActivationMemory(per_image=max(0, totals[2][0] - totals[1][0]),
                            per_image_checkpointed=max(0, totals[2][1] - totals[1][1]))


def vavae_blocks(vae: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules diffusers' Encoder/Decoder checkpoint: each down/up block and both mid blocks."""
    return [*vae.encoder.down_blocks, vae.encoder.mid_block, vae.decoder.mid_block, *vae.decoder.up_blocks]


def vavae_step_memory(vae: torch.nn.Module, perceptual: torch.nn.Module, discriminator: torch.nn.Module,
                      image_size: int, device: str = "meta") -> ActivationMemory:
    """One autoencoder update of a VA-VAE stage with the GAN on: VA-VAE forward (posterior sample, decoder,
    alignment head), LPIPS and the discriminator on the reconstruction; the frozen foundation features are a
    no-grad target (the feature cache) and save nothing."""
    def step(batch: int):
        x = torch.zeros(batch, 3, image_size, image_size, device=device)

        def forward():
            out = vae(x, sample=True)
            loss = perceptual(x, out.reconstruction).sum() - discriminator(out.reconstruction).mean()
            return loss + out.projected.float().pow(2).mean()
        return vavae_blocks(vae), forward
    return measure(step)


def dit_step_memory(model: torch.nn.Module, latent_size: int, channels: int, device: str = "meta") -> ActivationMemory:
    """One flow-matching training forward pass of the DiT (person and condition labels given)."""
    conditions = int(getattr(model.config, "num_conditions", 0) or 0)

    def step(batch: int):
        x = torch.zeros(batch, channels, latent_size, latent_size, device=device)
        t = torch.full((batch,), 0.5, device=device)
        person = torch.zeros(batch, dtype=torch.long, device=device)
        condition = torch.zeros(batch, dtype=torch.long, device=device) if conditions else None
        return list(model.blocks), lambda: model(x, t, person, condition)
    return measure(step)
