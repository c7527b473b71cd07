"""The released sampler's conventions: num_sampling_steps = grid points, shift <= 0 / cfg <= 1 mean "off", the
official tiny checkpoint's samples reproduced through our sampling path, class tables without a null row."""
from __future__ import annotations

import logging

import pytest
import torch
from test_dit import need_official, tiny_model

from microdoppler_finetune.config import load_config
from microdoppler_finetune.dit.model_setup import sample_with_transport
from microdoppler_finetune.dit.sampling import SamplerSettings
from models.dit import dit_config_dict, load_dit, load_dit_state_dict
from models.transport import sample_ode, sampling_grid, steps_of_grid


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-4 * max(1.0, reference.abs().max().item())


def test_official_sampler_outputs_are_reproduced_by_our_sampling_path():
    """The official Euler sampler (12 grid points, shift 0.3, guidance 4 from t >= 0.125 on all channels) on the
    official tiny checkpoint's EMA weights: same noise and labels through sample_with_transport."""
    io = torch.load(need_official("lightningdit_sampler_io.pt"), weights_only=True)
    model = load_dit(need_official("lightningdit_tiny_official.pt"))  # EMA weights, eval mode
    assert model.person_null_id == io["null_id"]
    grid = sampling_grid(steps_of_grid(io["steps"]), io["shift"])
    torch.testing.assert_close(grid.float(), io["time_grid"].float(), rtol=0, atol=1e-6)
    labels = io["y"]
    for key, cfg_scale in (("samples_nocfg", 1.0), ("samples_cfg", float(io["cfg"]))):
        settings = SamplerSettings(num_sampling_steps=int(io["steps"]), sampler="euler", cfg_scale=cfg_scale,
                                   cfg_interval_start=float(io["cfg_start"]), shift=float(io["shift"]))
        out = sample_with_transport(model, io["z"].clone(), labels, None, settings)
        error = (out - io[key]).abs().max().item()
        assert error < _tolerance(io[key]), (key, error)
    # Reading the 12 as Euler steps (our old meaning) misses the guided reference by more than the tolerance.
    # (Measured: 5e-7 with 11 steps, 1.9e-3 with 12; the unguided path is too straight to tell them apart.)
    off_by_one = sample_ode(model.velocity_fn(labels), io["z"].clone(), num_steps=int(io["steps"]),
                            timestep_shift=float(io["shift"]), cfg_scale=float(io["cfg"]),
                            cfg_interval_start=float(io["cfg_start"]))
    assert (off_by_one - io["samples_cfg"]).abs().max().item() > _tolerance(io["samples_cfg"])


def test_num_sampling_steps_counts_grid_points_and_steps_is_a_deprecated_alias():
    assert SamplerSettings().num_sampling_steps == 250 and SamplerSettings().ode_steps == 249
    assert steps_of_grid(250) == 249
    with pytest.raises(ValueError, match="grid points"):
        SamplerSettings(num_sampling_steps=1)
    with pytest.warns(FutureWarning, match="num_sampling_steps=5"):
        assert SamplerSettings(steps=4).num_sampling_steps == 5
    schema = load_config(None, None, []).dit.sample
    # The pipeline's default is UniPC over 26 points (25 evaluations); the release's Euler/250 stays one setting away
    assert schema.num_sampling_steps == 26 and schema.sampler == "unipc" and schema.steps is None
    assert SamplerSettings.from_config(schema).num_sampling_steps == 26
    assert SamplerSettings.from_config(schema).model_evaluations == 25
    release = load_config(None, None, ["dit.sample.sampler=euler", "dit.sample.num_sampling_steps=250"]).dit.sample
    assert SamplerSettings.from_config(release).model_evaluations == 249
    # A config written before the rename (dit.sample.steps = Euler steps) keeps its meaning.
    old = load_config(None, None, ["dit.sample.steps=50"]).dit.sample
    assert SamplerSettings.from_config(old).num_sampling_steps == 51
    assert SamplerSettings.from_config(old, num_sampling_steps=7).num_sampling_steps == 7
    assert SamplerSettings.from_config(schema, steps=3).num_sampling_steps == 4  # sample_dit.py --steps 3
    calls = []
    sample_ode(lambda x, t: calls.append(float(t[0])) or torch.zeros_like(x), torch.zeros(1, 2),
               num_sampling_steps=5)
    assert calls == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="not both"):
        sample_ode(lambda x, t: x, torch.zeros(1, 2), num_steps=3, num_sampling_steps=4)


def test_shift_at_most_zero_means_no_shift_and_cfg_at_most_one_means_no_guidance():
    torch.testing.assert_close(sampling_grid(4, timestep_shift=0.0), torch.linspace(0, 1, 5, dtype=torch.float64))
    torch.testing.assert_close(sampling_grid(4, timestep_shift=-1.0), sampling_grid(4, timestep_shift=1.0))
    calls = {"pair": 0}

    def fn(x, t, with_uncond=False):
        if with_uncond:
            calls["pair"] += 1
            return torch.ones_like(x), torch.zeros_like(x)
        return torch.ones_like(x)

    for scale in (1.0, 0.5, 0.0, -2.0):  # the release guides only for cfg_scale > 1
        out = sample_ode(fn, torch.zeros(1, 3), num_sampling_steps=5, cfg_scale=scale, timestep_shift=0.0)
        torch.testing.assert_close(out, torch.ones(1, 3))
    assert calls["pair"] == 0
    model = tiny_model()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_with_cfg(x, t, [0, 1], [1, 2], cfg_scale=0.5),
                                   model(x, t, [0, 1], [1, 2]))
    # The config and the settings take the release's values as they are.
    s = load_config(None, None, ["dit.sample.shift=0", "dit.sample.cfg_scale=1"]).dit.sample
    settings = SamplerSettings.from_config(s)
    assert settings.shift == 0.0 and settings.cfg_scale == 1.0
    assert settings.describe()["guidance"] is False and settings.describe()["shifted"] is False


def _no_null_row_state(num_classes: int = 6):
    """A released-layout state_dict trained without label dropout: a class table of exactly num_classes rows."""
    model = tiny_model(num_classes=num_classes, num_conditions=0, seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["y_embedder.embedding_table.weight"] = state["y_embedder.embedding_table.weight"][:num_classes].clone()
    return model, state


def test_class_table_without_null_row_is_read_with_the_checkpoints_config(tmp_path, caplog):
    model, state = _no_null_row_state(6)
    official_config = {"model": {"model_type": "LightningDiT-tiny", "use_qknorm": False, "use_swiglu": True,
                                 "use_rope": True, "use_rmsnorm": True, "wo_shift": False, "in_chans": 4},
                       "data": {"image_size": 128, "num_classes": 6}, "vae": {"downsample_ratio": 16}}
    path = tmp_path / "no_label_dropout.pt"
    torch.save({"model": state, "ema": state, "config": official_config}, path)
    with caplog.at_level(logging.WARNING, logger="models.dit"):
        loaded = load_dit(path)
    assert loaded.config.num_classes == 6 and loaded.y_embedder.embedding_table.weight.shape[0] == 7
    assert "no null row" in caplog.text
    assert any("null row added" in reason for reason in loaded.load_report.ignored)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0, 3, 5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y))  # every class prediction is the checkpoint's
    mean_row = state["y_embedder.embedding_table.weight"].mean(0)
    torch.testing.assert_close(loaded.y_embedder.embedding_table.weight[6], mean_row)


def test_class_table_without_config_says_which_assumption_it_made(caplog):
    model, state = _no_null_row_state(6)
    with caplog.at_level(logging.INFO, logger="models.dit"):
        assumed = load_dit_state_dict(state, source="plain state_dict")
    # 6 rows and no config: read as 5 classes + the null row, and the log says so and how to override it.
    assert assumed.config.num_classes == 5
    assert "taken as 5 classes + the null row" in caplog.text and "num_classes=6" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models.dit"):
        told = load_dit_state_dict(state, source="plain state_dict", num_classes=6)
    assert told.config.num_classes == 6 and "no null row" in caplog.text
    assert dit_config_dict(told)["num_classes"] == 6
