"""Core, the ground layer: config loading (:mod:`.config`) and every config schema (:mod:`.configs`), checkpoint
files, metrics (PSNR, SSIM, Fréchet distance), pictures and video files. It imports nothing else of ditkit."""
