"""Streaming video I/O: probe, decode, encode, audio, colour, libavfilter stages and comparisons.

Nothing here imports a model package."""
