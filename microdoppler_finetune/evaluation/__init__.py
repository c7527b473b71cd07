"""Evaluation of the pipeline's models: VA-VAE reconstruction metrics and latent-space analysis (step5)."""
