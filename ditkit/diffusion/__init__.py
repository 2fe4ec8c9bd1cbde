"""Diffusion: the processes (DDPM, flow matching), the samplers, classifier-free and context guidance, and the
video masks. It imports only the layers below it: core, data, models."""
