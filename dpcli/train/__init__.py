"""Training: the ERM loop, checkpoints, what it records for later stages, and torchrun."""
