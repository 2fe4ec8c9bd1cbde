"""Attention backends as recipe methods: the base class (:mod:`.base`: layer and head selection, warm-up rules) and
one module per backend (svg, sta, topk, fastattn, linear), computing with the kernels of
:mod:`ditkit.acceleration.kernels`."""
