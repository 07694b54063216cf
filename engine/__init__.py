"""The training engine: optimizers and schedules, the adversarial step, evaluation, checkpoints, the loop."""
