"""Scale-out on Ray: one long video split into segments, upscaled on many GPUs or machines, joined
without re-encoding. Ray is imported only when a run starts (`pip install vsrkit[cluster]`)."""
