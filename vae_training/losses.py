"""Loss terms of VA-VAE fine-tuning (DESIGN.md section 3), each a small function, plus their combination.

Generator (autoencoder) objective::

    total = L_nll + kl_weight·L_kl + disc_factor·λ_adv·L_G + λ_vf·L_vf        (L_G only while the GAN is active)

* ``L_nll = Σ_pixels,channels (|x − x̂| + w_p·LPIPS(x, x̂)) / B`` — a sum per sample, mean over the batch.
* ``L_kl`` — the posterior's KL to N(0, I), summed per sample, mean over the batch. :func:`kl_loss` returns it
  UNWEIGHTED; the weight (1e-6 in the release) is applied by :func:`generator_loss` from the config.
* ``L_G = −mean D(x̂)`` (hinge generator loss), ``λ_adv = disc_weight·clamp(‖∇L_nll‖/(‖∇L_G‖+1e-4), 0, 1e4)``
  on the decoder's last conv weight.
* ``L_vf = distmat_weight·L_mdms + cos_weight·L_mcos`` between the projected latents and the frozen foundation
  features; ``λ_vf = vf_weight`` or, with ``adaptive_vf``, ``vf_weight·clamp(‖∇L_nll‖/(‖∇L_vf‖+1e-4), 0, 1e8)``
  on the encoder's last conv weight.

Adaptive weights need a graph. Where there is none (validation under ``torch.no_grad``, frozen layer) they fall
back to fixed values: λ_adv → 0 (no GAN term, as in the released code) and λ_vf → vf_weight (the VF term keeps
its nominal weight, so a validation total stays comparable from epoch to epoch).

Every function returns detached per-sample-normalised numbers for logging next to the loss, so training and
validation report the same quantities.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

ADV_WEIGHT_MAX = 1e4
VF_WEIGHT_MAX = 1e8
ADAPTIVE_EPS = 1e-4
# Averages a gradient over the DDP processes (None: one process); see adaptive_weight.
GradientMean = Optional[Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class GeneratorLossConfig:
    """Weights of the generator objective. The three stage-dependent values have no default on purpose: the
    stage schedule states them (DESIGN.md section 3 table)."""

    vf_weight: float
    distmat_margin: float
    cos_margin: float
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    distmat_weight: float = 1.0
    cos_weight: float = 1.0
    # Gradient-norm-ratio VF weight. Off for fine-tuning: on spectrograms it blew the loss up.
    adaptive_vf: bool = False

    @classmethod
    def from_mappings(cls, *sections: Mapping[str, Any]) -> GeneratorLossConfig:
        """Collect the fields from config sections (e.g. ``cfg.vae_loss`` then the stage); later sections win.

        Keys that are not loss weights (``lpips_net``, ``epochs``, ...) belong to other parts of those sections
        and are skipped; a missing stage value raises.
        """
        values: dict[str, Any] = {}
        for section in sections:
            for f in fields(cls):
                if f.name in section and section[f.name] is not None:
                    values[f.name] = section[f.name]
        missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING]
        if missing:
            raise KeyError(f"Loss config lacks {missing}: every stage must state them (see the stage schedule).")
        return cls(**{name: (bool(v) if name == "adaptive_vf" else float(v)) for name, v in values.items()})


# ------------------------------------------------------------------------------------------- reconstruction


def reconstruction_nll(inputs: torch.Tensor, reconstructions: torch.Tensor,
                       perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       perceptual_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_nll = Σ (|x − x̂| + w_p·LPIPS) / B`` and its parts for logging.

    ``perceptual(x, x̂)`` gives one distance per sample ([B] or [B,1,1,1]); it is broadcast to every pixel and
    channel, so a sample contributes ``C·H·W·w_p·LPIPS``. Without ``perceptual`` there is no LPIPS term
    (whatever ``perceptual_weight`` says). Parts: ``nll`` (the loss), ``rec_l1`` (mean |x − x̂| per element) and,
    with a perceptual network, ``lpips`` (mean per-sample LPIPS) — all detached.
    """
    if inputs.shape != reconstructions.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and reconstructions {tuple(reconstructions.shape)} differ.")
    batch = inputs.shape[0]
    # fp32: under autocast a bf16 sum over every pixel would keep only about three significant digits.
    abs_error = (inputs.float() - reconstructions.float()).abs()  # [B,C,H,W]
    per_pixel = abs_error
    parts: dict[str, torch.Tensor] = {}
    if perceptual is not None:
        lpips_value = per_sample_lpips(perceptual, inputs, reconstructions, with_grad=perceptual_weight != 0)
        per_pixel = per_pixel + perceptual_weight * lpips_value.float().view(batch, 1, 1, 1)
        parts["lpips"] = lpips_value.detach().mean()
    nll = per_pixel.sum() / batch
    parts["nll"] = nll.detach()
    parts["rec_l1"] = abs_error.detach().mean()
    return nll, parts


def per_sample_lpips(perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                     reconstructions: torch.Tensor, *, with_grad: bool = True) -> torch.Tensor:
    """LPIPS distance per sample, shape [B]; inputs in [-1, 1]."""
    with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
        value = perceptual(inputs, reconstructions)
    if value.numel() != inputs.shape[0]:
        raise ValueError(f"The perceptual network returned shape {tuple(value.shape)}; one value per sample is "
                         f"needed (an LPIPS with spatial=False).")
    return value.reshape(inputs.shape[0])


def kl_loss(posterior) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) summed over latent elements, mean over the batch. Unweighted (see module docs)."""
    if getattr(posterior, "deterministic", False):  # diffusers' kl() would give a CPU tensor([0.]) here
        return torch.zeros((), device=posterior.mean.device, dtype=posterior.mean.dtype)
    kl = posterior.kl()  # [B]
    return kl.sum() / kl.shape[0]


# ------------------------------------------------------------------------------------------- adversarial


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ``0.5·(mean ReLU(1 − D(x)) + mean ReLU(1 + D(x̂)))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``−mean D(x̂)``."""
    return -logits_fake.mean()


def discriminator_loss(discriminator: torch.nn.Module, inputs: torch.Tensor, reconstructions: torch.Tensor, *,
                       disc_factor: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The discriminator's update loss on real images and DETACHED reconstructions, with logs.

    The discriminator's mode is the caller's: in train mode its BatchNorm uses batch statistics (the recipe).
    """
    logits_real = discriminator(inputs.detach())  # [B,1,h,w]
    # Same dtype as the real images: a reconstruction made under autocast may be bf16/fp16 while this runs
    # outside it.
    logits_fake = discriminator(reconstructions.detach().to(inputs.dtype))
    loss = disc_factor * hinge_d_loss(logits_real, logits_fake)
    logs = {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean()}
    return loss, logs


def adaptive_weight(loss_a: torch.Tensor, loss_b: torch.Tensor, param: torch.nn.Parameter, max_value: float,
                    eps: float = ADAPTIVE_EPS, *, fallback: float = 0.0, grad_scale: float = 1.0,
                    gradient_mean: GradientMean = None) -> torch.Tensor:
    """``clamp(‖∂loss_a/∂param‖ / (‖∂loss_b/∂param‖ + eps), 0, max_value)``, detached (a 0-d tensor).

    Scales ``loss_b`` so that its gradient at ``param`` is as large as ``loss_a``'s. The graph is kept
    (``retain_graph``) for the backward pass that follows. A loss that does not reach ``param`` has a zero
    gradient there. Returns ``fallback`` when no gradient can be taken: grad mode off (validation),
    ``param`` frozen, or a loss without a graph.

    ``grad_scale`` (fp16 mixed precision): both losses are multiplied by the AMP grad scaler's current scale
    before differentiating, and eps with them, so the ratio is unchanged but the fp16 backward stays in range
    (unscaled, a pixel-sum loss overflows fp16 at the last conv and the ratio becomes inf, then clamped).

    ``gradient_mean`` (DDP): averages each gradient at ``param`` over the processes before its norm is taken, so
    the weight is the one of the whole global batch (as one process computes it), the same on every rank.
    """
    device = param.device
    if not (torch.is_grad_enabled() and param.requires_grad and loss_a.requires_grad and loss_b.requires_grad):
        return torch.tensor(float(fallback), device=device)
    grad_a, grad_b = (torch.autograd.grad(loss * grad_scale, param, retain_graph=True, allow_unused=True)[0]
                      for loss in (loss_a, loss_b))
    norm_a, norm_b = (_gradient_norm(g, gradient_mean, device) for g in (grad_a, grad_b))
    return torch.clamp(norm_a / (norm_b + eps * grad_scale), 0.0, max_value).detach()


# ------------------------------------------------------------------------------------------- VF alignment


def _unit_vectors_per_position(tensor: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,C,h·w] with every position's channel vector scaled to unit length (fp32)."""
    return F.normalize(tensor.float().flatten(2), dim=1)


def vf_cosine_loss(projected: torch.Tensor, features: torch.Tensor, margin: float) -> torch.Tensor:
    """Marginal cosine loss ``mean_i ReLU(1 − margin − cos(z′_i, f_i))``; zero once every cos ≥ 1 − margin."""
    cos = (_unit_vectors_per_position(projected) * _unit_vectors_per_position(features)).sum(dim=1)  # [B,h·w]
    return F.relu(1.0 - margin - cos).mean()


def vf_distmat_loss(projected: torch.Tensor, features: torch.Tensor, margin: float) -> torch.Tensor:
    """Marginal distance-matrix loss ``mean_ij ReLU(|cos(z′_i, z′_j) − cos(f_i, f_j)| − margin)``.

    Compares the two sets of position-to-position cosine similarities (diagonal included, where both are 1).
    """
    z = _unit_vectors_per_position(projected)
    f = _unit_vectors_per_position(features)
    z_sim = torch.einsum("bci,bcj->bij", z, z)  # [B, h·w, h·w]
    f_sim = torch.einsum("bci,bcj->bij", f, f)
    return F.relu((z_sim - f_sim).abs() - margin).mean()


def vf_loss(projected: torch.Tensor, features: torch.Tensor, *, distmat_margin: float, cos_margin: float,
            distmat_weight: float = 1.0, cos_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_vf = distmat_weight·L_mdms + cos_weight·L_mcos`` of z′ = linear_proj(z) against foundation features.

    Both [B,C,h,w] with the same C and grid. The features are a frozen target: detached here.
    """
    if projected.shape != features.shape:
        raise ValueError(
            f"Projected latents {tuple(projected.shape)} and foundation features {tuple(features.shape)} must have "
            f"the same shape: linear_proj must output the foundation's feature dim, and the foundation grid must "
            f"equal the latent grid (foundation input size = latent side × patch size, e.g. 16 × 14 = 224).")
    features = features.detach()
    distmat = vf_distmat_loss(projected, features, distmat_margin)
    cosine = vf_cosine_loss(projected, features, cos_margin)
    loss = distmat_weight * distmat + cos_weight * cosine
    return loss, {"vf": loss.detach(), "vf_distmat": distmat.detach(), "vf_cos": cosine.detach()}


# ------------------------------------------------------------------------------------------- combination


@dataclass
class GeneratorStep:
    """What one training step needs from the generator objective (:func:`generator_loss_for_step`).

    ``total`` is the objective's value (logged, checked for finiteness); ``backward`` is the tensor to call
    backward on: its gradient with respect to every autoencoder parameter equals the gradient of ``total``, but
    its backward pass does not run LPIPS and the discriminator a second time (their image-space gradients were
    already taken for the adaptive weights and are reused). Without adaptive weights ``backward`` is ``total``.
    """

    total: torch.Tensor
    backward: torch.Tensor
    logs: dict[str, torch.Tensor]


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _image_gradient(loss: torch.Tensor, image: torch.Tensor, grad_scale: float) -> torch.Tensor:
    """∂loss/∂image (at least fp32, unscaled), the graph kept. ``grad_scale`` keeps an fp16 backward in range."""
    grad = torch.autograd.grad(loss * grad_scale, image, retain_graph=True, allow_unused=True)[0]
    if grad is None:
        return _at_least_fp32(torch.zeros_like(image))
    return _at_least_fp32(grad) / grad_scale


def _gradient_norm(grad: Optional[torch.Tensor], gradient_mean: GradientMean, device) -> torch.Tensor:
    """‖grad‖ (fp32; 0 for a loss that does not reach the parameter), after ``gradient_mean`` when given."""
    grad = torch.zeros((), device=device) if grad is None else grad.float()
    if gradient_mean is not None:
        grad = gradient_mean(grad)
    return torch.linalg.vector_norm(grad)


def _norm_at(image: torch.Tensor, image_grad: torch.Tensor, param: torch.nn.Parameter,
             grad_scale: float, gradient_mean: GradientMean = None) -> torch.Tensor:
    """‖∂L/∂param‖ given ∂L/∂image: a backward from the image to ``param`` only (the last layers of the path)."""
    grad = torch.autograd.grad(image, param, grad_outputs=(image_grad * grad_scale).to(image.dtype),
                               retain_graph=True, allow_unused=True)[0]
    if grad is None:
        grad = torch.zeros_like(param, dtype=torch.float32)  # every rank must join gradient_mean's all-reduce
    return _gradient_norm(grad, gradient_mean, param.device)


def _clamped_ratio(norm_a: torch.Tensor, norm_b: torch.Tensor, max_value: float, grad_scale: float) -> torch.Tensor:
    """adaptive_weight's formula on norms of scaled gradients: clamp(‖a‖/(‖b‖ + eps), 0, max), detached."""
    return torch.clamp(norm_a / (norm_b + ADAPTIVE_EPS * grad_scale), 0.0, max_value).detach()


def check_generator_inputs(config: GeneratorLossConfig, perceptual, disc_active: bool, discriminator,
                           decoder_last_layer, projected, features) -> None:
    """What both generator objectives need, checked before any work: one message per missing piece."""
    if config.perceptual_weight > 0 and perceptual is None:
        raise ValueError("perceptual_weight > 0 but no perceptual network was given: pass the LPIPS module "
                         "(models.perceptual.create_lpips) or set perceptual_weight to 0.")
    if disc_active and (discriminator is None or decoder_last_layer is None):
        raise ValueError("disc_active=True needs the discriminator and decoder_last_layer (the decoder's "
                         "conv_out weight, for the adaptive GAN weight).")
    if (projected is None) != (features is None):
        raise ValueError("Give both projected latents and foundation features for the VF loss, or neither.")


def generator_loss_for_step(
    inputs: torch.Tensor,
    reconstructions: torch.Tensor,
    posterior,
    *,
    config: GeneratorLossConfig,
    disc_active: bool,
    projected: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    discriminator: torch.nn.Module | None = None,
    decoder_last_layer: torch.nn.Parameter | None = None,
    encoder_last_layer: torch.nn.Parameter | None = None,
    grad_scale: float = 1.0,
    gradient_mean: GradientMean = None,
) -> GeneratorStep:
    """:func:`generator_loss` for a training step: the same value, weights and logs, plus a cheaper tensor for
    the backward pass (see :class:`GeneratorStep`).

    The adaptive weights need ‖∂L_nll/∂w‖, ‖∂L_G/∂w‖ (w: the decoder's last conv) and, with ``adaptive_vf``,
    ‖∂L_nll/∂w_enc‖, ‖∂L_vf/∂w_enc‖. L_nll and L_G reach the autoencoder only through the reconstruction x̂, so
    this takes G_nll = ∂L_nll/∂x̂ (one backward through LPIPS) and G_adv = ∂L_G/∂x̂ (one through the
    discriminator) once, gets the norms at w (and w_enc) by backpropagating those from x̂, and returns
    ``backward = Σ x̂·(G_nll + λ_adv·G_adv) + kl_weight·KL + λ_vf·L_vf`` (the image gradients detached): its
    backward runs the decoder and encoder once and never LPIPS or the discriminator again. The official code
    (and :func:`generator_loss`) backpropagates L_nll and L_G to w, then the total through everything, i.e.
    LPIPS and the discriminator twice. Same gradients up to floating-point summation order.

    Falls back to :func:`generator_loss` (``backward = total``) when there is nothing to reuse: no adaptive
    weight this step, no graph (validation), or a frozen last layer.
    """
    adaptive_adv = disc_active
    adaptive_vf = config.adaptive_vf and projected is not None
    reusable = (torch.is_grad_enabled() and reconstructions.requires_grad and (adaptive_adv or adaptive_vf)
                and (not adaptive_adv or (decoder_last_layer is not None and decoder_last_layer.requires_grad))
                and (not adaptive_vf or (encoder_last_layer is not None and encoder_last_layer.requires_grad)))
    if not reusable:
        total, logs = generator_loss(
            inputs, reconstructions, posterior, config=config, disc_active=disc_active, projected=projected,
            features=features, perceptual=perceptual, discriminator=discriminator,
            decoder_last_layer=decoder_last_layer, encoder_last_layer=encoder_last_layer, grad_scale=grad_scale,
            gradient_mean=gradient_mean)
        return GeneratorStep(total, total, logs)
    check_generator_inputs(config, perceptual, disc_active, discriminator, decoder_last_layer, projected, features)

    nll, logs = reconstruction_nll(inputs, reconstructions, perceptual, config.perceptual_weight)
    kl = kl_loss(posterior)
    logs["kl"] = kl.detach()
    total = nll + config.kl_weight * kl
    grad_nll = _image_gradient(nll, reconstructions, grad_scale)  # [B,3,H,W]: the one LPIPS backward
    image_grad = grad_nll
    rest = config.kl_weight * kl  # the terms that do not go through x̂

    if adaptive_adv:
        g_loss = hinge_g_loss(discriminator(reconstructions))  # D in the caller's mode (train: batch stats)
        grad_adv = _image_gradient(g_loss, reconstructions, grad_scale)  # the one discriminator backward
        weight = _clamped_ratio(_norm_at(reconstructions, grad_nll, decoder_last_layer, grad_scale, gradient_mean),
                                _norm_at(reconstructions, grad_adv, decoder_last_layer, grad_scale, gradient_mean),
                                ADV_WEIGHT_MAX, grad_scale)
        lambda_adv = config.disc_factor * config.disc_weight * weight
        total = total + lambda_adv * g_loss
        image_grad = image_grad + lambda_adv * grad_adv
        logs["g_loss"] = g_loss.detach()
    else:
        lambda_adv = torch.zeros((), device=inputs.device)
        logs["g_loss"] = torch.zeros((), device=inputs.device)
    logs["lambda_adv"] = lambda_adv.detach()

    if projected is not None:
        vf, vf_logs = vf_loss(projected, features, distmat_margin=config.distmat_margin,
                              cos_margin=config.cos_margin, distmat_weight=config.distmat_weight,
                              cos_weight=config.cos_weight)
        if adaptive_vf:
            norm_nll = _norm_at(reconstructions, grad_nll, encoder_last_layer, grad_scale, gradient_mean)
            grad_vf = torch.autograd.grad(vf * grad_scale, encoder_last_layer, retain_graph=True,
                                          allow_unused=True)[0]
            norm_vf = _gradient_norm(grad_vf, gradient_mean, inputs.device)
            lambda_vf = config.vf_weight * _clamped_ratio(norm_nll, norm_vf, VF_WEIGHT_MAX, grad_scale)
        else:
            lambda_vf = torch.tensor(config.vf_weight, device=inputs.device)
        total = total + lambda_vf * vf
        rest = rest + lambda_vf * vf
        logs.update(vf_logs)
        logs["lambda_vf"] = lambda_vf.detach()

    logs["total"] = total.detach()
    backward = (_at_least_fp32(reconstructions) * image_grad.detach()).sum() + rest
    return GeneratorStep(total, backward, logs)


def generator_loss(
    inputs: torch.Tensor,
    reconstructions: torch.Tensor,
    posterior,
    *,
    config: GeneratorLossConfig,
    disc_active: bool,
    projected: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    discriminator: torch.nn.Module | None = None,
    decoder_last_layer: torch.nn.Parameter | None = None,
    encoder_last_layer: torch.nn.Parameter | None = None,
    grad_scale: float = 1.0,
    gradient_mean: GradientMean = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The autoencoder's total loss and a dict of every term (detached) for logging.

    ``disc_active``: whether the GAN term is on (the caller counts autoencoder optimizer steps against
    ``disc_start``). ``projected``/``features``: z′ and the foundation features; both None means no VF term.
    ``decoder_last_layer`` / ``encoder_last_layer``: the conv_out weights for λ_adv / adaptive λ_vf.
    ``grad_scale``: the fp16 AMP grad scaler's current scale, for the adaptive weights (see adaptive_weight).

    Logged keys: nll, rec_l1, lpips (with a perceptual network), kl, g_loss, lambda_adv (the weight applied to
    g_loss, disc_factor included; 0 while inactive), vf, vf_distmat, vf_cos, lambda_vf (when VF is on), total.
    """
    check_generator_inputs(config, perceptual, disc_active, discriminator, decoder_last_layer, projected, features)
    nll, logs = reconstruction_nll(inputs, reconstructions, perceptual, config.perceptual_weight)
    kl = kl_loss(posterior)
    total = nll + config.kl_weight * kl
    logs["kl"] = kl.detach()

    if disc_active:
        g_loss = hinge_g_loss(discriminator(reconstructions))  # D in the caller's mode (train: batch stats)
        lambda_adv = config.disc_factor * config.disc_weight * adaptive_weight(
            nll, g_loss, decoder_last_layer, ADV_WEIGHT_MAX, fallback=0.0, grad_scale=grad_scale,
            gradient_mean=gradient_mean)
        total = total + lambda_adv * g_loss
        logs["g_loss"] = g_loss.detach()
    else:
        lambda_adv = torch.zeros((), device=inputs.device)
        logs["g_loss"] = torch.zeros((), device=inputs.device)
    logs["lambda_adv"] = lambda_adv.detach()

    if projected is not None:
        vf, vf_logs = vf_loss(projected, features, distmat_margin=config.distmat_margin,
                              cos_margin=config.cos_margin, distmat_weight=config.distmat_weight,
                              cos_weight=config.cos_weight)
        if config.adaptive_vf:
            if encoder_last_layer is None:
                raise ValueError("adaptive_vf needs encoder_last_layer (the encoder's conv_out weight).")
            # Fallback 1.0: without a graph the VF term keeps its nominal weight vf_weight.
            lambda_vf = config.vf_weight * adaptive_weight(nll, vf, encoder_last_layer, VF_WEIGHT_MAX, fallback=1.0,
                                                           grad_scale=grad_scale, gradient_mean=gradient_mean)
        else:
            lambda_vf = torch.tensor(config.vf_weight, device=inputs.device)
        total = total + lambda_vf * vf
        logs.update(vf_logs)
        logs["lambda_vf"] = lambda_vf.detach()

    logs["total"] = total.detach()
    return total, logs
