"""Pipelines: loading model files (:mod:`.base`; a bundled name, a file or a results folder) and generating with
them: class-conditional images (:mod:`.image`, with ``load``), videos by masking (:mod:`.video`), models and
processes built from config sections (:mod:`.build`). It imports the layers below it (core to acceleration)."""
