"""FlashVSR Tiny: Wan 2.1 DiT, LQ projector, TCDecoder and the streaming pipeline."""
