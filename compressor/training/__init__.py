"""Training-loop pieces: metrics, the epoch loop, checkpoints, determinism, the run directory."""
