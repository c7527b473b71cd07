"""Train/validation data of the VA-VAE stages, read from the one manifest step3 wrote (never re-split here).

The loaders shard the data over DDP processes themselves (the Trainer runs with ``use_distributed_sampler=False``):
the training order is one seeded permutation per epoch whatever the number of processes, dealt out round-robin,
so n processes with batch b read the images one process with batch n·b reads; and a run resumed from a
mid-epoch checkpoint continues the interrupted epoch where it stopped instead of reading its first batches again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from microdoppler_finetune.data import MicroDopplerDataset, load_manifest


class ResumableSampler(DistributedSampler):
    """A seeded shuffle split round-robin over ``num_replicas`` processes (one process too) that can skip the
    part of one epoch an interrupted run already trained on.

    The length stays the full epoch's, so Lightning's batch counter (restored from the checkpoint) ends the
    resumed epoch at the same batch as an uninterrupted run.
    """

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.resume_epoch: Optional[int] = None
        self.resume_samples = 0

    def resume_at(self, epoch: int, samples: int) -> None:
        """In ``epoch``, start after this process's first ``samples`` samples (the batches already trained)."""
        self.resume_epoch, self.resume_samples = int(epoch), max(0, int(samples))

    def __iter__(self):
        indices = list(super().__iter__())  # this epoch's permutation (seed + epoch), this process's share
        if self.epoch == self.resume_epoch:
            indices = indices[self.resume_samples:]
        return iter(indices)


class VAEDataModule(pl.LightningDataModule):
    def __init__(self, manifest_path: str | Path, *, image_size: int, batch_size: int, num_workers: int = 0,
                 flip: bool = False, seed: int = 0):
        super().__init__()
        self.seed = int(seed)
        self.manifest_path = Path(manifest_path)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.flip = bool(flip)
        self.manifest = load_manifest(self.manifest_path)
        self.train_set: Optional[MicroDopplerDataset] = None
        self.val_set: Optional[MicroDopplerDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = MicroDopplerDataset(self.manifest, "train", image_size=self.image_size, flip=self.flip)
        # Validation never flips: its numbers must compare across epochs and runs.
        self.val_set = MicroDopplerDataset(self.manifest, "val", image_size=self.image_size, flip=False)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(f"{self.manifest_path}: the train split has {len(self.train_set)} and the val split "
                             f"{len(self.val_set)} images; both are needed. Re-run step3 with more data or other "
                             f"split fractions into a new --dataset_dir.")

    def _processes(self) -> tuple[int, int]:
        """(world size, rank) of the Trainer running this data module; (1, 0) outside one."""
        trainer = self.trainer
        return (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)

    def _loader(self, dataset, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_sampler(self) -> ResumableSampler:
        """This process's training sampler; after a resume from a mid-epoch checkpoint it skips the batches of
        the interrupted epoch that were trained before the checkpoint (Lightning restores its loop counters
        before it asks for the loaders)."""
        world, rank = self._processes()
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, seed=self.seed)
        trainer = self.trainer
        if trainer is not None and trainer.fit_loop.restarting:
            # 'processed': batches whose training step ran ('completed' lags by one in a checkpoint written at
            # the end of a training batch, which is where ours are written)
            done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            sampler.resume_at(trainer.current_epoch, done * self.batch_size)
        return sampler

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        self.setup()
        world, rank = self._processes()
        # In order; with DDP each process takes every world-th image (the last ones repeated to even the shares)
        sampler = (DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1
                   else None)
        return self._loader(self.val_set, sampler)

    def fixed_val_images(self, count: int) -> torch.Tensor:
        """The same ``count`` validation images every epoch: one per person in turn, in manifest order."""
        self.setup()
        if count <= 0:
            return torch.empty(0)
        # Person ids from the manifest rows (reading dataset items would decode every image).
        by_person: dict[int, list[int]] = {}
        rows = self.manifest.entries_for("val")
        for index, row in enumerate(rows):
            by_person.setdefault(int(row["person_id"]), []).append(index)
        chosen: list[int] = []
        depth = 0
        while len(chosen) < min(count, len(rows)):
            for person in sorted(by_person):
                if depth < len(by_person[person]) and len(chosen) < count:
                    chosen.append(by_person[person][depth])
            depth += 1
        return torch.stack([self.val_set[i]["image"] for i in chosen])
