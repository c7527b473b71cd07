"""The released weights (VA-VAE, DINOv2, LightningDiT): find, download, verify and convert them.

registry (which files) -> locate (where they are: --local_dir, the Hugging Face cache, Kaggle inputs) -> verify
(size / sha256) -> hub (metadata, downloads into the Hugging Face cache) -> convert (VA-VAE .pt to safetensors,
discriminator included) -> download (step2's loop) ; index (pretrained_index.json) records what was found.
"""
