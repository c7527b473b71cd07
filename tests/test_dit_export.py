"""What the DiT trainer leaves behind besides checkpoints: diffusers' EMA, TensorBoard scalars, the pretrained/
export."""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_dit import tiny_model
from test_dit_training import PERSON_NAMES, _work_dir, make_tiny_setup, tiny_config

from microdoppler_finetune.dit import checkpointing as C
from microdoppler_finetune.dit.ema import DiTEMA
from microdoppler_finetune.dit.export import (
    SAMPLING_INFO_FILE,
    load_pretrained,
    read_sampling_info,
    resolve_trained_dit,
    write_pretrained,
)
from microdoppler_finetune.dit.logging import read_tensorboard_scalars
from microdoppler_finetune.dit.trainer import train_dit
from models.dit import LightningDiT, dit_config_dict

DATA_INFO = {"person_names": ["ID_1", "ID_2"], "condition_names": ["Normal", "Bag"], "latent_shape": [4, 8, 8],
             "image_size": 16, "vae_identity": "abc123", "seen_pairs": [[0, 0], [1, 1]],
             "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4, "train_count": 7}


def test_ema_is_diffusers_emamodel_with_decay_frozen_copies_exact_swaps_and_plain_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)  # a frozen part: copied, not averaged
    ema = DiTEMA(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    live = []
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        ema.step(model)
        live.append(value)
    # diffusers' schedule: update 1 copies (decay 0), then min(0.5, (1 + n) / (10 + n)) = 2/11, 3/12.
    expected = 1.0
    for n, value in ((1, 2.0), (2, 3.0)):
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    weights = ema.weights(model)
    torch.testing.assert_close(weights["0.weight"], torch.full((2, 3), expected))
    torch.testing.assert_close(weights["1.weight"], torch.full((1, 2), 3.0))  # frozen: the live value
    assert ema.num_updates == 3 and start.keys() == weights.keys()
    # Swapping the average in and out gives the live weights back bit for bit, and the mode too.
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in(model) as averaged:
        averaged.eval()
        torch.testing.assert_close(averaged[0].weight, torch.full((2, 3), expected))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Settings are plain types; a new EMA restored from them and the weights continues identically.
    settings = ema.settings()
    assert all(isinstance(v, (int, float, bool)) for v in settings.values()) and settings["optimization_step"] == 3
    other = DiTEMA(model, decay=0.5)
    other.load(weights, settings)
    ema.step(model)
    other.step(model)
    assert all(torch.equal(ema.weights(model)[k], other.weights(model)[k]) for k in weights)
    legacy = DiTEMA(model, decay=0.5)
    legacy.load(weights, None, legacy_updates=3)  # a checkpoint from before EMAModel ("ema_updates")
    assert legacy.num_updates == 3


def test_save_pretrained_export_round_trip_gives_the_same_outputs(tmp_path):
    model = tiny_model(num_classes=2, num_conditions=2)
    target = tmp_path / "run" / "pretrained"
    write_pretrained(model, DATA_INFO, 17, target)
    write_pretrained(model, DATA_INFO, 18, target)  # a second export replaces the first in one swap
    assert sorted(p.name for p in target.parent.iterdir()) == ["pretrained"]  # no temporary folders left
    assert {p.name for p in target.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors",
                                                  SAMPLING_INFO_FILE}
    info = read_sampling_info(target)
    assert info["step"] == 18 and info["weights"] == "ema" and info["person_names"] == ["ID_1", "ID_2"]
    assert "train_count" not in info and info["seen_pairs"] == [[0, 0], [1, 1]]
    direct = LightningDiT.from_pretrained(str(target)).eval()
    loaded, loaded_info = load_pretrained(target)
    assert not loaded.training and dit_config_dict(loaded) == dit_config_dict(model) == loaded_info["dit_config"]
    assert loaded_info["data"]["vae_identity"] == "abc123" and loaded_info["step"] == 18
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.75])
    with torch.no_grad():
        reference = model(x, t, [0, 2], [1, 2])
        assert torch.equal(loaded(x, t, [0, 2], [1, 2]), reference)
        assert torch.equal(direct(x, t, [0, 2], [1, 2]), reference)


def test_run_folder_resolves_to_the_export_unless_a_later_checkpoint_exists(tmp_path, capsys):
    run = tmp_path / "dit"
    (run / "checkpoints").mkdir(parents=True)
    for step in (5, 10):
        (run / "checkpoints" / f"{step:07d}.pt").write_bytes(b"x")
    assert resolve_trained_dit(run) == run / "checkpoints" / "0000010.pt"  # no export yet
    write_pretrained(tiny_model(num_classes=2, num_conditions=2), DATA_INFO, 10, run / "pretrained")
    assert resolve_trained_dit(run) == run / "pretrained"
    assert resolve_trained_dit(run / "pretrained") == run / "pretrained"
    assert resolve_trained_dit(run / "checkpoints") == run / "checkpoints" / "0000010.pt"
    (run / "checkpoints" / "0000012.pt").write_bytes(b"x")  # a run that stopped after the export
    assert resolve_trained_dit(run) == run / "checkpoints" / "0000012.pt"
    assert "later one" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        resolve_trained_dit(tmp_path / "missing")


def test_tiny_run_writes_tensorboard_scalars_a_plain_checkpoint_and_the_ema_export(tmp_path, one_torch_thread):
    root = tmp_path / "setup"
    make_tiny_setup(root, per_pair=4)
    work = _work_dir(tmp_path, (root, None, None))
    summary = train_dit(tiny_config(work, "dit.train.steps=4", "dit.train.log_every=2", "dit.train.val_every=2",
                                    "dit.train.checkpoint_every=0"))
    run = work / "dit"
    assert summary["pretrained"] == str(run / "pretrained")
    # TensorBoard event files next to train_log.csv, every logged scalar under train/ and val/.
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    scalars = read_tensorboard_scalars(run)
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    assert all(math.isfinite(value) for _, value in scalars["train/loss"])
    assert {"train/velocity_mse", "train/cosine_loss", "train/lr", "train/grad_norm", "train/steps_per_s",
            "val/loss", "val/loss_ema"} <= set(scalars)
    assert [step for step, _ in scalars["val/loss_ema"]] == [0, 2, 4]
    # The checkpoint: plain types and tensors (weights-only), the EMA in the released layout plus EMAModel's state.
    path = C.latest_checkpoint(run / "checkpoints")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["ema_state"]["optimization_step"] == 4 and ckpt["ema_state"]["decay"] == pytest.approx(0.9)
    assert set(ckpt["ema"]) == set(ckpt["model"])
    # The export: the EMA weights of the last step, loadable with from_pretrained, with what sampling needs.
    info = json.loads((run / "pretrained" / SAMPLING_INFO_FILE).read_text())
    assert info["step"] == 4 and info["weights"] == "ema" and info["person_names"] == PERSON_NAMES
    assert info["latent_shape"] == [4, 8, 8] and info["image_size"] == 16 and info["vae_identity"]
    exported = LightningDiT.from_pretrained(str(run / "pretrained"))
    for key, value in exported.state_dict().items():
        assert torch.equal(value, ckpt["ema"][key]), key
