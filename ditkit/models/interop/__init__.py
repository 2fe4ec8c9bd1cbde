"""Other formats of the models: official DiT checkpoints (:mod:`.official`), diffusers' ``DiTTransformer2DModel``
(:mod:`.diffusers_format`) and a diffusers autoencoder for latent diffusion (:mod:`.autoencoder`)."""
