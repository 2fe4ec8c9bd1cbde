"""Hooks, the recipe layer: how recipes attach to a model. :mod:`.points` holds the named hook points, :mod:`.method`
the Method base class, the method registry and recipe parsing. It imports only the layers below it (core, data,
models, diffusion)."""
