"""Real-ESRGAN: RRDBNet and SRVGGNetCompact, ncnn import, tiled inference."""
