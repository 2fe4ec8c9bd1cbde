"""Pure tensor functions for efficient attention: token layout transforms and tiles (:mod:`.layout`), block-sparse
and band attention (:mod:`.blocksparse`). No state, no hooks."""
