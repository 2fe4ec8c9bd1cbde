"""Evaluation: ditkit's MNIST classifier (its features drive the Fréchet distance on MNIST; not FID), the scoring of
class-conditional image models (:mod:`.evaluate`) and of video models on masked tasks (:mod:`.video`). It imports the
layers up to :mod:`ditkit.training`."""
