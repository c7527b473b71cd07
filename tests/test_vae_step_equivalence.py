"""The faster VA-VAE training step computes the released recipe: the adaptive weights' image-gradient reuse gives
the gradients of the plain objective, fused Adam the same updates, the fused gradient norm the same norm."""
from __future__ import annotations

import pytest
import torch

from models.discriminator import create_discriminator
from models.vavae import create_vavae
from vae_training import losses as L
from vae_training.module import _adam, _set_fused, _total_norm_tensor


class ConvPerceptual(torch.nn.Module):
    """A differentiable stand-in for LPIPS: one value per sample from a fixed random conv."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.requires_grad_(False)

    def forward(self, x, y):
        return (self.conv(x) - self.conv(y)).square().mean(dim=(1, 2, 3))


def _step_gradients(fast: bool, *, gan: bool, adaptive_vf: bool):
    torch.manual_seed(0)
    vae = create_vavae("test", foundation_dim=16).double()
    disc = create_discriminator("tiny").double().requires_grad_(False)  # frozen, as in the autoencoder update
    perceptual = ConvPerceptual().double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    features = torch.randn(2, 16, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    config = L.GeneratorLossConfig(vf_weight=0.5, distmat_margin=0.25, cos_margin=0.5, kl_weight=1e-3,
                                   adaptive_vf=adaptive_vf)
    out = vae(x, sample=False)
    kwargs = dict(config=config, disc_active=gan, projected=out.projected, features=features, perceptual=perceptual,
                  discriminator=disc, decoder_last_layer=vae.decoder_conv_out_weight,
                  encoder_last_layer=vae.encoder_conv_out_weight)
    if fast:
        step = L.generator_loss_for_step(x, out.reconstruction, out.posterior, **kwargs)
        total, logs = step.total, step.logs
        step.backward.backward()
    else:
        total, logs = L.generator_loss(x, out.reconstruction, out.posterior, **kwargs)
        total.backward()
    grads = torch.cat([p.grad.flatten() for p in vae.parameters() if p.grad is not None])
    return total.detach(), logs, grads


@pytest.mark.parametrize("gan,adaptive_vf", [(True, False), (True, True), (False, True), (False, False)])
def test_image_gradient_reuse_gives_the_objectives_gradients(gan, adaptive_vf):
    total_a, logs_a, grads_a = _step_gradients(False, gan=gan, adaptive_vf=adaptive_vf)
    total_b, logs_b, grads_b = _step_gradients(True, gan=gan, adaptive_vf=adaptive_vf)
    assert total_b.item() == pytest.approx(total_a.item(), rel=1e-12)
    for key in ("lambda_adv", "lambda_vf", "nll", "g_loss", "vf", "kl"):
        assert logs_b[key].item() == pytest.approx(logs_a[key].item(), rel=1e-10, abs=1e-300), key
    if gan:
        assert logs_b["lambda_adv"].item() > 0
    assert grads_b.shape == grads_a.shape
    assert ((grads_b - grads_a).norm() / grads_a.norm()).item() < 1e-10


def test_step_without_adaptive_weights_backpropagates_the_total_itself():
    torch.manual_seed(0)
    vae = create_vavae("test", foundation_dim=16)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    out = vae(x)
    config = L.GeneratorLossConfig(vf_weight=0.5, distmat_margin=0.0, cos_margin=0.0, perceptual_weight=0.0)
    step = L.generator_loss_for_step(x, out.reconstruction, out.posterior, config=config, disc_active=False,
                                     projected=out.projected, features=torch.randn(1, 16, 16, 16))
    assert step.backward is step.total
    with torch.no_grad():  # validation: no graph, nominal weights, same tensor
        out = vae(x)
        step = L.generator_loss_for_step(x, out.reconstruction, out.posterior, config=config, disc_active=False)
    assert step.backward is step.total and not step.total.requires_grad


def test_fused_adam_takes_the_same_steps_and_resumed_groups_switch():
    torch.manual_seed(0)
    params_a = [torch.nn.Parameter(torch.randn(7, 5, dtype=torch.float64)) for _ in range(3)]
    params_b = [torch.nn.Parameter(p.detach().clone()) for p in params_a]
    plain = torch.optim.Adam(params_a, lr=1e-2, betas=(0.5, 0.9))
    fused = _adam(params_b, lr=1e-2, fused=True)
    assert fused.param_groups[0]["fused"] and fused.param_groups[0]["betas"] == (0.5, 0.9)
    for step in range(5):
        grads = [torch.randn_like(p) for p in params_a]
        for p, q, g in zip(params_a, params_b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        plain.step()
        fused.step()
    for p, q in zip(params_a, params_b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    # A checkpoint of the plain optimizer loaded into a fused run: the groups follow this run's choice.
    plain_state = plain.state_dict()
    resumed = torch.optim.Adam(params_b, lr=1e-2, betas=(0.5, 0.9))
    resumed.load_state_dict(plain_state)
    _set_fused(resumed, True)
    assert resumed.param_groups[0]["fused"] is True
    assert all(s["step"].dtype == torch.float32 for s in resumed.state.values())
    resumed.step()  # runs
    _set_fused(resumed, False)
    assert not resumed.param_groups[0]["fused"]


def test_fused_gradient_norm_equals_the_per_tensor_loop():
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(4)]
    for p in params:
        p.grad = torch.randn_like(p)
    loop = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    torch.testing.assert_close(_total_norm_tensor(params), loop)
    params[1].grad[0, 0] = float("nan")
    assert not torch.isfinite(_total_norm_tensor(params))
