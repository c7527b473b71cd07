"""The released weights: find, download, verify and convert them (VA-VAE, DINOv2, LightningDiT)."""
