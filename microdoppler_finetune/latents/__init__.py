"""The VA-VAE's latent space for the DiT: the exported encoder, its latent statistics and the latent cache."""
