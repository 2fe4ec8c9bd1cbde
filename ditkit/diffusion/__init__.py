"""Diffusion: the processes (DDPM, flow matching), the samplers, classifier-free and history guidance, per-frame noise
levels and the video masks. It imports only the layers below it: core, data, models."""
