"""Benchmarks: the speed x quality harness of ``ditkit bench`` (:mod:`.harness`) on bench tasks (:mod:`.tasks`),
diffusers' caches as peers (:mod:`.peers`), the BENCHMARKS.md report (:mod:`.report`), the attention benchmark
(:mod:`.attention`) and the forward speed of quantization recipes (:mod:`.quant_speed`). It imports every layer up
to :mod:`ditkit.evaluation`, never :mod:`ditkit.cli`."""
