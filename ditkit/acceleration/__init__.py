"""Acceleration: the recipe methods and what they need. :mod:`.recipes` (Recipe, the built-in methods), caching
methods (:mod:`.cache`), attention backends (:mod:`.attention`) on pure tensor kernels (:mod:`.kernels`),
quantization (:mod:`.quant`; :mod:`.quantize` writes quantized checkpoints) and exact compute counting
(:mod:`.counting`). It imports only the layers below it (core to hooks); what runs a pipeline (calibration,
quantization) takes the pipeline object, and what to run, as arguments."""
