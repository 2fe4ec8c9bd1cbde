"""Feature caching: the shared base (:mod:`.base`: whole-stack and per-module caches), one module per method (fora,
firstblockcache, teacache, magcache, taylorseer, toca, delta_dit) and TeaCache / MagCache calibration
(:mod:`.calibration`)."""
