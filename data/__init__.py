"""Video data: decoding, sampling, clip-consistent transforms, the TIME grid, shards, dataset presets."""
