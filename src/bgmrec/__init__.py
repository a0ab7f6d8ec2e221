"""bgmrec: background-music recommendation for micro-videos (CMVAE, DecCM and baselines)."""

__version__ = "0.1.0"
