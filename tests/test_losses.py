"""Loss terms, discriminator and their combination, checked against numbers worked out by hand."""
import math

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from models.discriminator import (
    NLayerDiscriminator,
    create_discriminator,
    extract_discriminator_state,
    load_discriminator_state,
)
from vae_training import losses as L


class FixedPerceptual(torch.nn.Module):
    """Stands in for LPIPS: returns given per-sample distances, shaped [B,1,1,1] like lpips does."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, x, y):
        return self.values.view(-1, 1, 1, 1) + 0 * (x - y).sum()


def _posterior(mean, logvar):
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))


# ------------------------------------------------------------------------------------------- reconstruction


def test_reconstruction_nll_sums_pixels_and_divides_by_batch():
    # B=2, C=1, H=1, W=2: |x - x̂| = [.5, .5] and [0, 1] -> pixel sum 2, divided by batch 2 -> 1.
    x = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    xrec = torch.tensor([[[[0.5, -0.5]]], [[[1.0, 0.0]]]])
    nll, parts = L.reconstruction_nll(x, xrec)
    assert nll.item() == pytest.approx(1.0)
    assert parts["rec_l1"].item() == pytest.approx(0.5)  # mean over the 4 elements
    assert "lpips" not in parts

    # LPIPS 0.1 / 0.3 per sample, weight 2, broadcast over C·H·W = 2 pixels: + 2·0.1·2 + 2·0.3·2 = 1.6 -> /2.
    nll, parts = L.reconstruction_nll(x, xrec, FixedPerceptual([0.1, 0.3]), perceptual_weight=2.0)
    assert nll.item() == pytest.approx((2.0 + 1.6) / 2)
    assert parts["lpips"].item() == pytest.approx(0.2)
    assert parts["nll"].item() == pytest.approx(1.8)


def test_reconstruction_nll_rejects_spatial_perceptual_maps():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one value per sample"):
        L.reconstruction_nll(x, x + 1, lambda a, b: torch.zeros(2, 1, 4, 4))


def test_kl_loss_matches_closed_form():
    # Per sample 0.5·(μ² + σ² − 1 − log σ²): (μ=1, σ²=1) -> 0.5; (μ=0, σ²=2) -> 0.5·(1 − ln 2).
    mean = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    logvar = torch.tensor([0.0, math.log(2.0)]).view(2, 1, 1, 1)
    expected = (0.5 + 0.5 * (1 - math.log(2.0))) / 2
    assert L.kl_loss(_posterior(mean, logvar)).item() == pytest.approx(expected, rel=1e-6)
    deterministic = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1), deterministic=True)
    assert L.kl_loss(deterministic).item() == 0.0


# ------------------------------------------------------------------------------------------- adversarial


def test_hinge_losses():
    real = torch.tensor([2.0, 0.5, -1.0])  # ReLU(1 − real) = [0, .5, 2] -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # ReLU(1 + fake) = [0, 1, 2]  -> mean 1
    assert L.hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert L.hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    # Confident and correct discriminator: no loss.
    assert L.hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_adaptive_weight_on_known_gradients():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    loss_a = 3 * w.sum()  # ∇ = [3, 3], norm 3√2
    loss_b = (w**2).sum()  # ∇ = 2w = [2, 4], norm √20
    weight = L.adaptive_weight(loss_a, loss_b, w, max_value=1e4)
    assert weight.item() == pytest.approx(3 * math.sqrt(2) / (math.sqrt(20) + 1e-4), rel=1e-6)
    assert not weight.requires_grad
    (loss_a + weight * loss_b).backward()  # the graph was retained for the real backward pass
    assert torch.allclose(w.grad, torch.tensor([3.0, 3.0]) + weight * torch.tensor([2.0, 4.0]))

    tiny = 1e-9 * w.sum()  # ratio ≈ 4e4 before the clamp
    assert L.adaptive_weight(3 * w.sum(), tiny, w, max_value=10.0).item() == 10.0
    other = torch.nn.Parameter(torch.ones(1))
    # A loss that does not reach `param` has zero gradient there: ratio = ‖∇a‖ / eps, clamped.
    assert L.adaptive_weight(3 * w.sum(), other * 2, w, max_value=7.0).item() == 7.0
    with torch.no_grad():
        assert L.adaptive_weight(3 * w.sum(), (w**2).sum(), w, 1e4, fallback=0.25).item() == 0.25


# ------------------------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("size, patches", [(64, 6), (256, 30)])
def test_discriminator_patch_logits(size, patches):
    torch.manual_seed(0)
    disc = create_discriminator("patchgan")
    assert dict(disc.config)["ndf"] == 64 and dict(disc.config)["num_layers"] == 3
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules()) == 3
    with torch.no_grad():
        out = disc.eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, patches, patches)


def test_discriminator_init_and_released_layout(tmp_path):
    torch.manual_seed(0)
    disc = create_discriminator("patchgan")
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in disc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    big = convs[3].weight  # 256 -> 512, 2M weights: sample statistics are tight
    assert abs(big.mean().item()) < 1e-3 and big.std().item() == pytest.approx(0.02, rel=0.02)
    scales = torch.cat([n.weight for n in norms])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01) and scales.std().item() < 0.03
    assert all(torch.all(n.bias == 0) for n in norms)
    # Layout of the released checkpoint: its first key is loss.discriminator.main.0.weight [64, 3, 4, 4].
    released = {f"loss.discriminator.{k}": v.clone() + 1 for k, v in disc.state_dict().items()}
    released["loss.logvar"] = torch.zeros(())
    assert tuple(released["loss.discriminator.main.0.weight"].shape) == (64, 3, 4, 4)
    fresh = create_discriminator("patchgan")
    load_discriminator_state(fresh, extract_discriminator_state(released))
    assert torch.equal(fresh.main[0].weight, disc.main[0].weight + 1)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_discriminator_state(create_discriminator("patchgan", num_layers=2), extract_discriminator_state(released))
    with pytest.raises(KeyError, match="No discriminator weights"):
        extract_discriminator_state({"encoder.x": torch.zeros(1)})


def test_discriminator_save_pretrained_round_trip(tmp_path):
    disc = create_discriminator("tiny")
    disc.save_pretrained(tmp_path / "disc")
    loaded = NLayerDiscriminator.from_pretrained(tmp_path / "disc")
    assert dict(loaded.config)["ndf"] == 8
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(disc.eval()(x), loaded.eval()(x))


# ------------------------------------------------------------------------------------------- VF loss


def _two_positions():
    # B=1, C=2, 1×2 grid. z′ positions: (1,0), (0,1).  f positions: (1,0), (1,1)/√2 (scale is irrelevant).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    f = torch.tensor([[1.0, 3.0], [0.0, 3.0]]).view(1, 2, 1, 2)
    return z, f


def test_vf_cosine_loss_and_margin():
    z, f = _two_positions()
    c = 1 / math.sqrt(2)  # cos at the second position; the first is 1
    assert L.vf_cosine_loss(z, f, margin=0.0).item() == pytest.approx((0 + (1 - c)) / 2, rel=1e-6)
    assert L.vf_cosine_loss(5 * z, f, margin=0.0).item() == pytest.approx((1 - c) / 2, rel=1e-6)
    assert L.vf_cosine_loss(z, f, margin=0.2).item() == pytest.approx((1 - 0.2 - c) / 2, rel=1e-6)
    assert L.vf_cosine_loss(z, f, margin=0.5).item() == 0.0  # every cos ≥ 0.5: within the margin


def test_vf_distmat_loss_and_margin():
    z, f = _two_positions()
    c = 1 / math.sqrt(2)
    # Gram matrices [[1,0],[0,1]] vs [[1,c],[c,1]]: |diff| has c twice off the diagonal, mean over 4 entries.
    assert L.vf_distmat_loss(z, f, margin=0.0).item() == pytest.approx(2 * c / 4, rel=1e-6)
    assert L.vf_distmat_loss(z, f, margin=0.25).item() == pytest.approx(2 * (c - 0.25) / 4, rel=1e-6)
    assert L.vf_distmat_loss(z, f, margin=0.75).item() == 0.0


def test_vf_loss_combines_weighted_terms():
    z, f = _two_positions()
    c = 1 / math.sqrt(2)
    loss, parts = L.vf_loss(z, f, distmat_margin=0.0, cos_margin=0.0, distmat_weight=2.0, cos_weight=3.0)
    assert loss.item() == pytest.approx(2 * (2 * c / 4) + 3 * ((1 - c) / 2), rel=1e-6)
    assert parts["vf_distmat"].item() == pytest.approx(2 * c / 4, rel=1e-6)
    assert parts["vf"].item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="same shape"):
        L.vf_loss(z, torch.zeros(1, 2, 2, 2), distmat_margin=0, cos_margin=0)


# ------------------------------------------------------------------------------------------- combination


class ToyAutoencoder(torch.nn.Module):
    """Encoder conv_out -> posterior; linear_proj -> z′; decoder conv_out -> x̂ (1×1 convs on an 8×8 grid)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc_out = torch.nn.Conv2d(3, 4, 1)  # moments: 2 latent channels (mean, logvar)
        self.proj = torch.nn.Conv2d(2, 5, 1, bias=False)
        self.dec_out = torch.nn.Conv2d(2, 3, 1)

    def forward(self, x):
        posterior = DiagonalGaussianDistribution(self.enc_out(x))
        z = posterior.mode()
        return self.dec_out(z), posterior, self.proj(z)


def _config(**kw):
    return L.GeneratorLossConfig(**{"vf_weight": 0.5, "distmat_margin": 0.0, "cos_margin": 0.0, **kw})


def test_generator_loss_sums_the_terms_with_their_weights():
    model = ToyAutoencoder()
    disc = create_discriminator("tiny", num_layers=1)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    features = torch.randn(2, 5, 8, 8)
    perceptual = FixedPerceptual([0.1, 0.2])
    xrec, posterior, proj = model(x)
    cfg = _config(disc_weight=0.5, disc_factor=1.0, kl_weight=1e-3, adaptive_vf=True)

    total, logs = L.generator_loss(x, xrec, posterior, config=cfg, disc_active=True, projected=proj,
                                   features=features, perceptual=perceptual, discriminator=disc,
                                   decoder_last_layer=model.dec_out.weight, encoder_last_layer=model.enc_out.weight)
    nll, _ = L.reconstruction_nll(x, xrec, perceptual, 1.0)
    g = L.hinge_g_loss(disc(xrec))
    vf, _ = L.vf_loss(proj, features, distmat_margin=0.0, cos_margin=0.0)
    lam_adv = 0.5 * L.adaptive_weight(nll, g, model.dec_out.weight, 1e4)
    lam_vf = 0.5 * L.adaptive_weight(nll, vf, model.enc_out.weight, 1e8)
    expected = nll + 1e-3 * L.kl_loss(posterior) + lam_adv * g + lam_vf * vf
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["lambda_adv"].item() == pytest.approx(lam_adv.item(), rel=1e-5) and lam_adv.item() > 0
    assert logs["lambda_vf"].item() == pytest.approx(lam_vf.item(), rel=1e-5)
    for key in ("nll", "rec_l1", "lpips", "kl", "g_loss", "vf", "vf_distmat", "vf_cos", "total"):
        assert torch.isfinite(logs[key]) and not logs[key].requires_grad, key
    total.backward()
    assert model.dec_out.weight.grad is not None and model.enc_out.weight.grad is not None


def test_generator_loss_gating_fallbacks_and_errors():
    model = ToyAutoencoder()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    features = torch.randn(2, 5, 8, 8)
    xrec, posterior, proj = model(x)
    cfg = _config(perceptual_weight=0.0, kl_weight=1e-6)
    # GAN inactive and adaptive VF off: total = nll + kl_weight·kl + vf_weight·vf, λ_adv = 0.
    total, logs = L.generator_loss(x, xrec, posterior, config=cfg, disc_active=False, projected=proj,
                                   features=features)
    vf, _ = L.vf_loss(proj, features, distmat_margin=0.0, cos_margin=0.0)
    expected = L.reconstruction_nll(x, xrec)[0] + 1e-6 * L.kl_loss(posterior) + 0.5 * vf
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["lambda_adv"].item() == 0.0 and logs["lambda_vf"].item() == 0.5 and "lpips" not in logs

    # Validation (no graph): λ_adv falls back to 0 and adaptive λ_vf to vf_weight.
    with torch.no_grad():
        xrec, posterior, proj = model(x)
        _, logs = L.generator_loss(x, xrec, posterior, config=_config(perceptual_weight=0.0, adaptive_vf=True),
                                   disc_active=True, projected=proj, features=features,
                                   discriminator=create_discriminator("tiny", num_layers=1),
                                   decoder_last_layer=model.dec_out.weight, encoder_last_layer=model.enc_out.weight)
    assert logs["lambda_adv"].item() == 0.0 and logs["lambda_vf"].item() == 0.5

    with pytest.raises(ValueError, match="no perceptual network"):
        L.generator_loss(x, xrec, posterior, config=_config(), disc_active=False)
    with pytest.raises(ValueError, match="needs the discriminator"):
        L.generator_loss(x, xrec, posterior, config=cfg, disc_active=True)
    with pytest.raises(ValueError, match="both projected"):
        L.generator_loss(x, xrec, posterior, config=cfg, disc_active=False, projected=proj)


def test_discriminator_loss_uses_detached_images():
    disc = create_discriminator("tiny")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    xrec = (x * 0.9).requires_grad_()
    loss, logs = L.discriminator_loss(disc, x, xrec)
    loss.backward()
    assert xrec.grad is None and disc.main[0].weight.grad is not None
    assert set(logs) == {"disc_loss", "logits_real", "logits_fake"}


def test_loss_config_from_config_sections():
    loss_section = {"kl_weight": 1e-6, "perceptual_weight": 1.0, "lpips_net": "vgg", "disc_weight": 0.5,
                    "distmat_weight": 1.0, "cos_weight": 1.0, "adaptive_vf": False}
    stage = {"name": "stage3", "vf_weight": 0.1, "distmat_margin": 0.25, "cos_margin": 0.5, "disc_start": 1}
    cfg = L.GeneratorLossConfig.from_mappings(loss_section, stage)
    assert (cfg.vf_weight, cfg.distmat_margin, cfg.cos_margin, cfg.kl_weight) == (0.1, 0.25, 0.5, 1e-6)
    with pytest.raises(KeyError, match="cos_margin"):
        L.GeneratorLossConfig.from_mappings(loss_section, {"vf_weight": 0.1, "distmat_margin": 0.0})
