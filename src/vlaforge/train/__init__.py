"""The training loop, full-state checkpoints and logging."""
