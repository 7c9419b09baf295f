"""Contrastive training under a device mesh: loss, GradCache, optimiser, step, checkpoints, metrics."""
