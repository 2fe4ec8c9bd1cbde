"""Training: the image trainer (:mod:`.trainer`), video training by masking (:mod:`.video`) and LiT distillation into
linear attention (:mod:`.distill_linear`). It imports the layers up to :mod:`ditkit.pipelines`."""
