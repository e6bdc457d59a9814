"""A training run's bookkeeping: options, component look-up, checkpoints on disk, resume, the
run lock and log, precision and tracking."""
