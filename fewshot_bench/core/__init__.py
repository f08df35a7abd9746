"""The bottom layer: errors, hashing, config fields, the registry, output files, progress and threads."""
